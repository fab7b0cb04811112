"""A data set received by C-STORE (PS3.4 B.2), written as a Part 10 file without decoding it.

Used for every C-STORE the gateway receives: C-GET and C-MOVE sub-operations from a PACS, and
pushes of DIMSE clients to the front door.

With :func:`receive_into_files` (called once by the composition root), pynetdicom writes each
C-STORE data set to a temporary file as its P-DATA fragments arrive, instead of gathering it in
memory: a 2 GiB instance then costs disk, not 2 GiB of RAM per association. That file starts
with the File Meta Information this module would write (pynetdicom is told to write ours), so
it becomes the spool file by a rename, not a copy.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import struct
import tempfile
import uuid
from collections.abc import Callable
from io import BytesIO
from pathlib import Path
from typing import Any

from pydicom.uid import UID
from pynetdicom import _config, dimse_messages

from gateway.dicom.received_meta import IMPLEMENTATION_VERSION, ReceivedMeta, file_meta, write_meta
from gateway.dicom.records import ReceivedInstance

__all__ = [
    "IMPLEMENTATION_VERSION",
    "discard_unfinished",
    "receive_into_files",
    "received_size",
    "spool_received",
]

COPY_CHUNK = 1 << 20
# What pynetdicom's receiving code (dimse_messages, 3.0) calls for the meta of a received file.
META_FACTORY = "create_file_meta"
META_WRITER = "write_file_meta_info"
PREAMBLE = 128 + 4  # PS3.10 7.1: preamble and "DICM"


def receive_into_files(directory: Path) -> Callable[[], None]:
    """Have pynetdicom receive every C-STORE data set of this process into a file under
    ``directory``; returns what undoes it (for the end of the app's lifespan).

    A module-level switch of pynetdicom (``_config.STORE_RECV_CHUNKED_DATASET``): it applies to
    every association of the process, the listener's and the DIMSE adapter's C-GETs alike, all
    of which go through :func:`spool_received`. The File Meta Information pynetdicom writes at
    the head of each file is made the one :func:`spool_received` writes (its Implementation
    Version Name is ours, not pynetdicom's), so the file is renamed into the spool. pynetdicom creates its file with
    ``NamedTemporaryFile()`` and no directory, so the process's temporary directory
    (``tempfile.tempdir``) is pointed at ``directory``: in the process's spool, on the data
    volume rather than a small ``/tmp``, and swept with the spool if the process dies in the
    middle. :func:`spool_received` deletes the file once the spool holds its data set; each association binds
    :func:`discard_unfinished` for the one it would leave behind when cut off."""
    directory.mkdir(parents=True, exist_ok=True)
    if not _installed:
        _original.extend(
            [
                _config.STORE_RECV_CHUNKED_DATASET,
                tempfile.tempdir,
                getattr(dimse_messages, META_FACTORY),
                getattr(dimse_messages, META_WRITER),
            ]
        )
    mine = str(directory)
    _installed.append(mine)
    _config.STORE_RECV_CHUNKED_DATASET = True
    tempfile.tempdir = mine
    # The meta is kept as its three values and written by gateway.dicom.received_meta: the same
    # bytes as pydicom's, without a pydicom data set per instance.
    setattr(dimse_messages, META_FACTORY, ReceivedMeta.create)
    setattr(dimse_messages, META_WRITER, write_meta)

    def restore() -> None:
        # Several apps in one process (the tests' replicas) may stop in any order: the others
        # keep receiving into the newest remaining directory, and the last one out restores
        # what was there before the first (never a stopped app's directory, which may be gone).
        _installed.remove(mine)
        if _installed:
            tempfile.tempdir = _installed[-1]
            return
        _config.STORE_RECV_CHUNKED_DATASET, tempfile.tempdir, factory, writer = _original
        _original.clear()
        setattr(dimse_messages, META_FACTORY, factory)
        setattr(dimse_messages, META_WRITER, writer)

    return restore


# The directories of the installations not yet undone, oldest first, and what the first replaced.
_installed: list[str] = []
_original: list[Any] = []


def discard_unfinished(event: Any) -> None:
    """``EVT_CONN_CLOSE``: delete the file of a data set whose association ended in the middle of
    it (a peer killed or cut off mid C-STORE). pynetdicom deletes the file of a complete message
    once its handler returns, but an unfinished one it just drops, file and all, on disk."""
    message: Any = getattr(getattr(event.assoc, "dimse", None), "message", None)
    unfinished = getattr(message, "_data_set_file", None)
    if message is None or unfinished is None:
        return
    message._data_set_file = None
    with contextlib.suppress(OSError):
        unfinished.close()
    Path(unfinished.name).unlink(missing_ok=True)


def received_size(event: Any) -> int:
    """Bytes of the data set of an ``EVT_C_STORE`` event (without any File Meta Information)."""
    received = _received_file(event)
    if received is not None:
        path, offset = received
        return path.stat().st_size - offset
    data = event.request.DataSet
    return data.getbuffer().nbytes if data is not None else 0


def spool_received(event: Any, spool_dir: Path) -> ReceivedInstance:
    """Write a pynetdicom ``EVT_C_STORE`` event's data set as a Part 10 file (PS3.10 7.1), as sent.

    The File Meta Information is written here, deterministically (no Source AE title, no time):
    the same data set from any peer becomes the same bytes, so storing it twice is idempotent
    (an identical re-send finds an identical object). A file pynetdicom received starts with
    that same meta (see :func:`receive_into_files`) and is renamed into the spool; one that
    does not (another meta, another file system) has its data set copied after ours.
    """
    request = event.request
    syntax = UID(str(event.context.transfer_syntax))
    sop_uid = str(request.AffectedSOPInstanceUID)
    header = file_meta(str(request.AffectedSOPClassUID), sop_uid, str(syntax))
    spool_dir.mkdir(parents=True, exist_ok=True)
    path = spool_dir / f"recv-{uuid.uuid4().hex}.dcm"
    try:
        received = _received_file(event)
        if received is not None and _adopt(request, received, header, path):
            return ReceivedInstance(path=path, sop_uid=sop_uid, transfer_syntax=str(syntax))
        with path.open("wb") as f:
            f.write(header)
            if received is None:
                data: BytesIO = request.DataSet
                f.write(data.getbuffer())
            else:
                with received[0].open("rb") as source:
                    source.seek(received[1])
                    shutil.copyfileobj(source, f, COPY_CHUNK)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    finally:
        _discard_received(request)
    return ReceivedInstance(path=path, sop_uid=sop_uid, transfer_syntax=str(syntax))


def _adopt(request: Any, received: tuple[Path, int], header: bytes, path: Path) -> bool:
    """Rename pynetdicom's file of the data set to ``path`` if it starts with ``header`` (the
    whole File Meta Information) and lies on the same file system; whether it did."""
    source, offset = received
    if offset != len(header):
        return False
    handle = getattr(request, "_dataset_file", None)
    if handle is not None:
        handle.close()  # flushed: pynetdicom writes each fragment through its buffer
    with source.open("rb") as f:
        if f.read(offset) != header:
            return False
    try:
        os.replace(source, path)
    except OSError as exc:
        if exc.errno == errno.EXDEV:
            return False
        raise
    return True


def _discard_received(request: Any) -> None:
    """Close and delete pynetdicom's file of a data set once the spool holds it (or could not).

    pynetdicom deletes that file after a Storage SCP handler returns, but not after the C-STORE
    sub-operations of a C-GET it requested (``Association._c_store_scp`` neither closes nor
    deletes it): without this every instance a C-GET brought would stay on disk and keep a file
    descriptor open. Where pynetdicom deletes it too, its unlink finds nothing, which it ignores."""
    path = getattr(request, "_dataset_path", None)
    handle = getattr(request, "_dataset_file", None)
    if handle is not None:
        with contextlib.suppress(OSError):
            handle.close()
    if isinstance(path, Path):
        path.unlink(missing_ok=True)


def _received_file(event: Any) -> tuple[Path, int] | None:
    """pynetdicom's file of the data set and where the data set starts in it (after the File
    Meta Information group, whose length its first element gives: PS3.10 7.1), or ``None`` when
    the data set was received into memory."""
    path = getattr(event.request, "_dataset_path", None)
    if not isinstance(path, Path):
        return None
    with path.open("rb") as f:
        f.seek(PREAMBLE)
        element = f.read(12)  # (0002,0000) UL 4: File Meta Information Group Length
    if len(element) != 12 or element[:6] != b"\x02\x00\x00\x00UL":
        raise ValueError(f"{path} does not start with a File Meta Information Group Length")
    (group_length,) = struct.unpack("<I", element[8:])
    return path, PREAMBLE + 12 + group_length
