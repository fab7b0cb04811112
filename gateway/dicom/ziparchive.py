"""ZIP archives of DICOM files for STOW-RS: checked as a whole, then members streamed to the spool.

What uploads look like: a flat archive of one or many instances, a series whose files are
numbered, or the folder tree that OsiriX / Horos exports (patient / study / series folders,
any file names, with or without a DICOMDIR). Every member is looked at by content, never by
name: a Part 10 file (``DICM`` at offset 128) is an instance; the DICOMDIR (Media Storage
Directory) is skipped; anything else is reported as skipped, not fatal.

What is refused, for the whole archive, before anything is stored (:func:`check_archive`):

* path tricks: absolute names, ``..`` components, drive letters, NUL bytes, symbolic links;
* nested archives (``.zip``, ``.gz``, ... by name; and by content when extracted);
* encrypted members, and compression methods other than stored and deflate;
* zip bombs: more than ``max_entries`` members, a member larger than ``max_entry_bytes`` or
  expanding more than ``max_ratio`` times, or more than ``max_total_bytes`` in all.

The sizes in the central directory are the archive's claims: :func:`extract_member` counts the
bytes actually inflated and stops at the claimed size (a lying header is a refused archive), so
no member can write more than the caps allow. Member names never become file names: members are
spooled under random names in ``spool_dir``.

Blocking (``zipfile``): run in worker threads.
"""

from __future__ import annotations

import stat
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from gateway.errors import BadRequest, PayloadTooLarge

APPLICATION_ZIP = "application/zip"
ZIP_MEDIA_TYPES = frozenset({APPLICATION_ZIP, "application/x-zip-compressed", "application/x-zip"})
MEDIA_STORAGE_DIRECTORY = b"1.2.840.10008.1.3.10"  # the DICOMDIR's SOP Class (PS3.10 8.6)
_ARCHIVE_SUFFIXES = (".zip", ".gz", ".tgz", ".tar", ".bz2", ".xz", ".7z", ".rar", ".zst", ".jar")
_ARCHIVE_MAGIC = (b"PK\x03\x04", b"PK\x05\x06", b"\x1f\x8b", b"7z\xbc\xaf\x27\x1c", b"Rar!", b"BZh", b"\xfd7zXZ")
_CHUNK = 1 << 20
HEAD_BYTES = 132 + 4096  # preamble, "DICM" and enough of the File Meta Information to see the SOP Class


@dataclass(frozen=True)
class ZipLimits:
    max_entries: int = 10_000
    max_entry_bytes: int = 2 << 30
    max_total_bytes: int = 4 << 30
    max_ratio: int = 200  # uncompressed / compressed, for members over ratio_floor bytes
    ratio_floor: int = 1 << 20


@dataclass(frozen=True)
class Member:
    """A DICOM file taken from the archive: its name there and where it was spooled."""

    name: str
    path: Path


@dataclass(frozen=True)
class Skipped:
    """A member that is not an instance to store (reported to the client, not fatal)."""

    name: str
    reason: str


def is_zip_media_type(media_type: str) -> bool:
    return media_type.strip().lower() in ZIP_MEDIA_TYPES


def _unsafe_name(name: str) -> str | None:
    if "\x00" in name:
        return "a NUL byte in the name"
    normalized = name.replace("\\", "/")
    if normalized.startswith("/") or (len(normalized) > 1 and normalized[1] == ":"):
        return "an absolute path"
    if ".." in PurePosixPath(normalized).parts:
        return "a '..' path component"
    return None


def check_archive(archive: zipfile.ZipFile, limits: ZipLimits) -> list[zipfile.ZipInfo]:
    """The file members of ``archive`` (directories left out), or an error refusing it all."""
    infos = archive.infolist()
    if len(infos) > limits.max_entries:
        raise PayloadTooLarge(f"ZIP archive has {len(infos)} members, more than the limit of {limits.max_entries}")
    total = 0
    files: list[zipfile.ZipInfo] = []
    for info in infos:
        shown = info.filename[:200]
        problem = _unsafe_name(info.filename)
        if problem is not None:
            raise BadRequest(f"ZIP member {shown!r} has {problem}: archive refused")
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise BadRequest(f"ZIP member {shown!r} is a symbolic link: archive refused")
        if info.is_dir():
            continue
        if info.flag_bits & 0x1:
            raise BadRequest(f"ZIP member {shown!r} is encrypted: archive refused")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise BadRequest(f"ZIP member {shown!r} uses compression method {info.compress_type}: archive refused")
        if info.filename.lower().endswith(_ARCHIVE_SUFFIXES):
            raise BadRequest(f"ZIP member {shown!r} is an archive itself: nested archives are refused")
        if info.file_size > limits.max_entry_bytes:
            raise PayloadTooLarge(f"ZIP member {shown!r} expands to {info.file_size} bytes, over the limit")
        if info.file_size > limits.ratio_floor and info.file_size > limits.max_ratio * max(1, info.compress_size):
            raise BadRequest(
                f"ZIP member {shown!r} expands {info.file_size // max(1, info.compress_size)} times:"
                " refused as a zip bomb"
            )
        total += info.file_size
        if total > limits.max_total_bytes:
            raise PayloadTooLarge(f"ZIP archive expands to more than {limits.max_total_bytes} bytes: refused")
        files.append(info)
    return files


def extract_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, spool_dir: Path) -> Member | Skipped:
    """Spool one member (checked by :func:`check_archive`) and say what it is."""
    path = spool_dir / f".zip-{uuid.uuid4().hex}"
    spool_member(archive, info, path)
    try:
        with path.open("rb") as f:
            head = f.read(HEAD_BYTES)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    kind = content_kind(head)
    if kind == "dicom":
        return Member(info.filename, path)
    path.unlink(missing_ok=True)
    if kind == "archive":
        raise BadRequest(f"ZIP member {info.filename[:200]!r} is an archive itself: nested archives are refused")
    if kind == "dicomdir":
        return Skipped(info.filename, "DICOMDIR (a directory of the files, not an instance)")
    return Skipped(info.filename, "not a DICOM Part 10 file")


def spool_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path) -> None:
    """Inflate one member (checked by :func:`check_archive`) into the new file ``path``, never
    more bytes than its header claims; nothing is left at ``path`` when it fails."""
    written = 0
    try:
        with archive.open(info) as src, path.open("xb") as dst:
            while chunk := src.read(_CHUNK):
                written += len(chunk)
                if written > info.file_size:
                    # zipfile checks the CRC only at the end: the claimed size is the cap.
                    raise BadRequest(f"ZIP member {info.filename[:200]!r} holds more than its header says: refused")
                dst.write(chunk)
    except zipfile.BadZipFile as exc:
        path.unlink(missing_ok=True)
        raise BadRequest(f"ZIP member {info.filename[:200]!r} is damaged: {exc}") from None
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def content_kind(head: bytes) -> str:
    """What the first :data:`HEAD_BYTES` of a file say it is: ``dicom`` (a Part 10 instance),
    ``dicomdir`` (a Media Storage Directory, PS3.10 8.6), ``archive`` or ``other``."""
    if head[128:132] == b"DICM":
        return "dicomdir" if MEDIA_STORAGE_DIRECTORY in head[132:] else "dicom"
    if head.startswith(_ARCHIVE_MAGIC):
        return "archive"
    return "other"


def open_archive(path: Path) -> zipfile.ZipFile:
    """Open a spooled upload as a ZIP archive (BadRequest when it is not one)."""
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise BadRequest(f"the upload is not a readable ZIP archive: {exc}") from None
