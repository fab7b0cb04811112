"""Import sources on the local file system: a folder tree (a DICOMDIR medium is one too) and a
ZIP archive, for ``dicomweb-gateway import`` (:class:`gateway.ports.ImportSource`).

Files are listed, never judged by name: what each is (an instance, a DICOMDIR, anything else) is
decided from its content by the import service. A folder is walked without following symbolic
links, so a link cannot make a file be imported twice or lead out of the tree. ZIP archives are
checked as a whole first, as ZIP STOW checks them (gateway.dicom.ziparchive: path tricks,
encrypted members, zip bombs), with limits sized for an operator's archive instead of a request.

Blocking (``os.scandir``, ``zipfile``, copies): run in worker threads.
"""

from __future__ import annotations

import os
import shutil
import stat
import threading
import zipfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio

from gateway.dicom import ziparchive
from gateway.dicom.ziparchive import ZipLimits
from gateway.errors import BadRequest, Conflict, StorageError
from gateway.ports import SourceEntry

_LISTING_BATCH = 512  # entries handed over per thread hop while a tree is walked
ZIP_MEMBER_SEPARATOR = "!"  # ARCHIVE!MEMBER, as Java's jar: URLs name a member


class SourceChanged(Conflict):
    """A file changed, or went, between its listing and its import."""


class FolderSource:
    """Every regular file under ``root`` (or ``root`` itself when it is a file)."""

    def __init__(self, root: Path) -> None:
        self._root = root.absolute()

    @property
    def label(self) -> str:
        return str(self._root)

    async def entries(self) -> AsyncIterator[SourceEntry]:
        walk = _walk(self._root)
        while batch := await anyio.to_thread.run_sync(_take, walk, _LISTING_BATCH):
            for entry in batch:
                yield entry

    async def fetch(self, entry: SourceEntry, target: Path) -> None:
        await anyio.to_thread.run_sync(_copy_file, Path(entry.name), entry, target)

    async def aclose(self) -> None:
        return None


def _walk(root: Path) -> Iterator[SourceEntry]:
    """Depth first, names sorted: the same tree lists in the same order on every run."""
    try:
        info = os.stat(root)  # the root as the operator named it, a symbolic link or not
    except OSError as exc:
        raise StorageError(f"cannot read {root}: {exc.strerror}") from exc
    if stat.S_ISREG(info.st_mode):
        yield SourceEntry(str(root), info.st_size, str(info.st_mtime_ns))
        return
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as it:
                children = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            raise StorageError(f"cannot list {folder}: {exc.strerror}") from exc
        for child in reversed(children):
            if child.is_dir(follow_symlinks=False):
                stack.append(Path(child.path))
        for child in children:
            if child.is_file(follow_symlinks=False):
                st = child.stat(follow_symlinks=False)
                yield SourceEntry(child.path, st.st_size, str(st.st_mtime_ns))


def _take(walk: Iterator[SourceEntry], count: int) -> list[SourceEntry]:
    batch: list[SourceEntry] = []
    for entry in walk:
        batch.append(entry)
        if len(batch) == count:
            break
    return batch


def _copy_file(source: Path, entry: SourceEntry, target: Path) -> None:
    """Copy ``source`` to ``target`` if it is still the file the listing saw."""
    try:
        with source.open("rb") as src:
            st = os.fstat(src.fileno())
            if (st.st_size, str(st.st_mtime_ns)) != (entry.size, entry.version):
                raise SourceChanged(f"{source} changed since it was listed; run the import again")
            with target.open("xb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
    except FileNotFoundError:
        target.unlink(missing_ok=True)
        raise SourceChanged(f"{source} was removed since it was listed") from None
    except OSError as exc:
        target.unlink(missing_ok=True)
        raise StorageError(f"cannot copy {source} into the spool: {exc.strerror}") from exc


class ZipSource:
    """The file members of a ZIP archive: a flat one, a numbered series, an OsiriX / Horos tree."""

    def __init__(self, path: Path, limits: ZipLimits) -> None:
        self._path = path.absolute()
        self._limits = limits
        self._archive: zipfile.ZipFile | None = None
        self._members: dict[str, zipfile.ZipInfo] = {}
        # zipfile shares one file handle between the members it opens: one reader at a time.
        self._lock = threading.Lock()

    @property
    def label(self) -> str:
        return str(self._path)

    async def entries(self) -> AsyncIterator[SourceEntry]:
        listed = await anyio.to_thread.run_sync(self._open)
        for entry in listed:
            yield entry

    def _open(self) -> list[SourceEntry]:
        try:
            mtime = os.stat(self._path).st_mtime_ns
        except OSError as exc:
            raise StorageError(f"cannot read {self._path}: {exc.strerror}") from exc
        archive = ziparchive.open_archive(self._path)
        try:
            infos = ziparchive.check_archive(archive, self._limits)
        except BaseException:
            archive.close()
            raise
        self._archive = archive
        entries = []
        for info in infos:
            name = f"{self._path}{ZIP_MEMBER_SEPARATOR}{info.filename}"
            self._members[name] = info
            entries.append(SourceEntry(name, info.file_size, f"{mtime}:{info.CRC:08x}"))
        return entries

    async def fetch(self, entry: SourceEntry, target: Path) -> None:
        info = self._members.get(entry.name)
        if self._archive is None or info is None:
            raise BadRequest(f"{entry.name} is not a member of {self._path}")
        archive = self._archive

        def spool() -> None:
            with self._lock:
                ziparchive.spool_member(archive, info, target)

        await anyio.to_thread.run_sync(spool)

    async def aclose(self) -> None:
        if self._archive is not None:
            self._archive.close()
            self._archive = None


def is_zip_file(path: Path) -> bool:
    """Whether ``path`` is a ZIP archive, by content (its end of central directory record)."""
    return path.is_file() and zipfile.is_zipfile(path)


def is_dicomdir(path: Path) -> bool:
    """Whether ``path`` is a DICOMDIR (a Media Storage Directory, PS3.10 8.6), by content."""
    try:
        with path.open("rb") as f:
            return ziparchive.content_kind(f.read(ziparchive.HEAD_BYTES)) == "dicomdir"
    except OSError:  # not a readable file: the caller says what it is
        return False
