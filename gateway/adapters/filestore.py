"""BlobStore on a local (or network) filesystem: one regular file per key under a root directory."""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import io
import os
import re
import stat
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import ParamSpec, TypeVar

import anyio.to_thread

from gateway.errors import AlreadyExists, MetadataNotWritten, NotFound, StorageError
from gateway.ports import ListedObject, ObjectInfo, UnfinishedWrite

P = ParamSpec("P")
T = TypeVar("T")

_COPY_CHUNK = 8 << 20
# os.link errors that only mean "cannot hardlink here" (another mount, a filesystem without
# hardlinks, fs.protected_hardlinks): fall back to copying.
_NO_LINK = frozenset({errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK})
# The name of a temp file :func:`_new_temp` makes for the object ``name`` beside it.
_TEMP_NAME = re.compile(r"\.(?P<name>[^/]+)\.[0-9a-f]{32}\.tmp")


def validate_key(key: str) -> str:
    """Return ``key`` unchanged, or raise ValueError for a key that could escape the store.

    Keys are relative '/'-separated paths. Callers build them from validated UIDs, so this is
    defence in depth: no absolute paths, backslashes, NULs or empty components, and no component
    starting with '.' (which excludes '.' and '..' and reserves hidden names for temp files).
    """
    if not key or key.startswith("/") or "\\" in key or "\x00" in key:
        raise ValueError(f"invalid object key {key!r}")
    if any(not part or part.startswith(".") for part in key.split("/")):
        raise ValueError(f"invalid object key {key!r}")
    return key


def validate_prefix(prefix: str) -> str:
    """Like :func:`validate_key`, but ``""`` and a trailing '/' are allowed (list_keys prefixes)."""
    if prefix:
        validate_key(prefix.removesuffix("/"))
    return prefix


class FileBlobStore:
    """:class:`gateway.ports.BlobStore` on a directory tree.

    Writes go to a hidden temp file in the destination directory (same filesystem), are fsynced,
    and then appear atomically under their final name: ``os.link`` for create-only writes (it
    fails when the name is taken, which makes the check-and-create one atomic step even across
    processes), ``os.replace`` for overwrites. A source file already on the store's filesystem
    is fsynced and hardlinked in place instead of copied. Readers never see a partial object. Empty
    directories left by :meth:`delete` are kept: removing them would race with concurrent writes.
    Digests are not stored; :meth:`stat` computes them by reading the file.
    """

    def __init__(self, root: Path) -> None:
        self._root = Path(root)

    @property
    def root(self) -> Path:
        return self._root

    # -- writes ---------------------------------------------------------------------------------

    async def put_file(self, key: str, path: Path, *, sha256: str, content_type: str) -> None:
        # sha256 and content_type are not kept: the digest is recomputed on demand and the type
        # follows from the key's suffix.
        final = self._path(key)
        await self._run(self._put_file, key, final, Path(path))

    async def put_bytes(self, key: str, data: bytes, *, content_type: str) -> None:
        final = self._path(key)
        await self._run(self._put_bytes, final, data)

    async def put_instance(self, key: str, path: Path, *, sha256: str, metadata_key: str, metadata: bytes) -> None:
        final, metadata_final = self._path(key), self._path(metadata_key)
        await self._run(self._put_instance, key, final, Path(path), metadata_final, metadata)

    async def delete(self, key: str) -> None:
        final = self._path(key)
        await self._run(_unlink_if_present, final)

    # -- reads ----------------------------------------------------------------------------------

    async def stat(self, key: str) -> ObjectInfo | None:
        final = self._path(key)
        return await self._run(_stat, key, final)

    async def stream(self, key: str, *, chunk_size: int = 4 << 20) -> AsyncIterator[bytes]:
        final = self._path(key)
        # Open and first read in one thread hop: most instances fit in one chunk, and each hop
        # costs the event loop a wake-up and a GIL hand-off (WADO series speed is bound by them).
        f, chunk = await self._run(_open_and_read, key, final, chunk_size)
        try:
            while chunk:
                yield chunk
                if len(chunk) < chunk_size:
                    break  # a short read of a regular file is its end: no extra hop to learn it
                chunk = await self._run(f.read, chunk_size)
        finally:
            f.close()

    async def read_range(self, key: str, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0:
            raise ValueError(f"invalid range offset={offset} length={length}")
        final = self._path(key)
        if length == 0:
            return b""
        return await self._run(_read_range, key, final, offset, length)

    async def read_all(self, key: str) -> bytes:
        final = self._path(key)
        return await self._run(_read_all, key, final)

    async def download(self, key: str, path: Path) -> None:
        final = self._path(key)
        await self._run(_download, key, final, Path(path))

    async def list_keys(self, prefix: str = "") -> AsyncIterator[str]:
        validate_prefix(prefix)
        # Walk only the subtree that can hold matches; one thread hop per directory keeps memory
        # bounded by the largest directory rather than the whole store.
        pending = [prefix.rpartition("/")[0]]
        while pending:
            rel = pending.pop()
            for name, is_dir in await self._run(_scan, self._root / rel if rel else self._root):
                child = f"{rel}/{name}" if rel else name
                if name.startswith("."):
                    continue  # temp files (and nothing a valid key can name)
                if is_dir:
                    if child.startswith(prefix) or prefix.startswith(child + "/"):
                        pending.append(child)
                elif child.startswith(prefix):
                    yield child

    async def list_objects(self, prefix: str = "") -> AsyncIterator[ListedObject]:
        validate_prefix(prefix)
        async for rel, size, modified in self._walk(prefix, temp_files=False):
            yield ListedObject(rel, size, modified)

    # -- crash recovery (reindex --repair) --------------------------------------------------------

    async def list_unfinished(self, started_before: float) -> AsyncIterator[UnfinishedWrite]:
        # A process killed between creating a temp file and linking or renaming it leaves the
        # temp file. Its mtime is its last write: a temp file still being written stays young.
        async for rel, _, modified in self._walk("", temp_files=True):
            directory, _, name = rel.rpartition("/")
            match = _TEMP_NAME.fullmatch(name)
            if match is not None and modified < started_before:
                key = f"{directory}/{match['name']}" if directory else match["name"]
                yield UnfinishedWrite(key, modified, rel)

    async def discard_unfinished(self, write: UnfinishedWrite) -> None:
        directory, _, name = write.handle.rpartition("/")
        if _TEMP_NAME.fullmatch(name) is None:
            raise ValueError(f"not a temp file of this store: {write.handle!r}")
        if directory:
            validate_key(directory)  # the handle must not lead out of the store
        await self._run(_unlink_if_present, self._root / write.handle)

    async def _walk(self, prefix: str, *, temp_files: bool) -> AsyncIterator[tuple[str, int, float]]:
        """(key, size, mtime) of the objects under ``prefix``, or (path, size, mtime) of the temp
        files with ``temp_files``; one thread hop per directory."""
        pending = [prefix.rpartition("/")[0]]
        while pending:
            rel = pending.pop()
            for name, is_dir, size, modified in await self._run(_scan_stat, self._root / rel if rel else self._root):
                child = f"{rel}/{name}" if rel else name
                if is_dir:
                    if not name.startswith(".") and (child.startswith(prefix) or prefix.startswith(child + "/")):
                        pending.append(child)
                elif name.startswith(".") == temp_files and child.startswith(prefix):
                    yield child, size, modified

    # -- lifecycle ------------------------------------------------------------------------------

    async def ping(self) -> None:
        await self._run(self._ping)

    async def aclose(self) -> None:
        return None

    # -- internals (run in worker threads) ------------------------------------------------------

    def _path(self, key: str) -> Path:
        return self._root / validate_key(key)

    @staticmethod
    async def _run(fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run blocking filesystem code in a worker thread; OS failures become StorageError."""
        try:
            return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))
        except OSError as exc:
            raise StorageError(f"file store: {exc}") from exc

    def _put_file(self, key: str, final: Path, source: Path) -> None:
        self._publish(key, final, source)
        _fsync_dir(final.parent)

    def _publish(self, key: str, final: Path, source: Path) -> None:
        """Make ``final`` a durable copy of ``source``, create-only; its directory entry is made
        durable by the caller's fsync of the directory."""
        parent = final.parent
        self._ensure_dir(parent)
        if os.path.lexists(final):
            # Cheap early answer for the common duplicate; the link below is the real guard.
            raise AlreadyExists(f"object {key} already exists")
        if not self._link_source(key, source, final):
            tmp = _copy_to_temp(source, parent, final.name)
            try:
                _link_create_only(key, tmp, final)
            finally:
                _unlink_if_present(tmp)

    def _put_instance(self, key: str, final: Path, source: Path, metadata_final: Path, metadata: bytes) -> None:
        """:meth:`_put_file` and :meth:`_put_bytes` with one fsync of the directory for both
        (the object's link and the metadata's rename), when they share it."""
        if metadata_final.parent != final.parent:
            self._put_file(key, final, source)
            self._put_metadata(metadata_final, metadata)
            return
        self._publish(key, final, source)
        self._put_metadata(metadata_final, metadata)

    def _put_metadata(self, final: Path, data: bytes) -> None:
        """:meth:`_put_bytes` for the metadata of an object just created: an OSError now leaves
        that object behind, which the caller must be told (MetadataNotWritten)."""
        try:
            self._put_bytes(final, data)
        except OSError as exc:
            raise MetadataNotWritten(f"file store: {exc}") from exc

    def _link_source(self, key: str, source: Path, final: Path) -> bool:
        """Publish ``source`` itself under ``final`` when both share a filesystem (no copy).

        The caller's name keeps working until it deletes it, as the port requires. Returns False
        when a hardlink is impossible here and the caller must copy instead.
        """
        if os.stat(source).st_dev != os.stat(final.parent).st_dev:
            return False
        fd = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(fd)  # the caller may not have: the bytes must be durable before they appear
        finally:
            os.close(fd)
        try:
            _link_create_only(key, source, final)
        except OSError as exc:
            if exc.errno in _NO_LINK:
                return False
            raise
        return True

    def _put_bytes(self, final: Path, data: bytes) -> None:
        parent = final.parent
        self._ensure_dir(parent)
        tmp, fd = _new_temp(parent, final.name)
        try:
            try:
                _write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, final)
        except BaseException:
            _unlink_if_present(tmp)
            raise
        _fsync_dir(parent)

    def _ensure_dir(self, directory: Path) -> None:
        """Create ``directory`` and missing ancestors, fsyncing each new entry's parent so the
        path survives a crash along with the object written into it."""
        if directory.is_dir():
            return
        missing: list[Path] = []
        current = directory
        while not current.exists():
            missing.append(current)
            if current.parent == current:
                break
            current = current.parent
        for new in reversed(missing):
            # A concurrent writer may have created it; a non-directory fails on first use below.
            with contextlib.suppress(FileExistsError):
                new.mkdir()
            _fsync_dir(new.parent)

    def _ping(self) -> None:
        if not self._root.is_dir():
            raise StorageError(f"file store root {self._root} is not a directory")
        if not os.access(self._root, os.W_OK | os.X_OK):
            raise StorageError(f"file store root {self._root} is not writable")


# -- blocking helpers ---------------------------------------------------------------------------


def _new_temp(directory: Path, name: str) -> tuple[Path, int]:
    """An exclusively created hidden temp file beside ``name`` (same filesystem as the target)."""
    tmp = directory / f".{name}.{uuid.uuid4().hex}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    return tmp, fd


def _copy_to_temp(source: Path, directory: Path, name: str) -> Path:
    """Copy ``source`` into a new fsynced temp file in ``directory``; nothing is left on error."""
    tmp, fd = _new_temp(directory, name)
    try:
        try:
            src_fd = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
            try:
                _copy_fd(src_fd, fd)
            finally:
                os.close(src_fd)
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        _unlink_if_present(tmp)
        raise
    return tmp


def _link_create_only(key: str, existing: Path, final: Path) -> None:
    try:
        os.link(existing, final)
    except FileExistsError as exc:
        raise AlreadyExists(f"object {key} already exists") from exc


def _copy_fd(src: int, dst: int) -> None:
    offset = 0
    try:
        # sendfile copies in the kernel; regular file to regular file works on Linux >= 2.6.33.
        while sent := os.sendfile(dst, src, offset, _COPY_CHUNK):
            offset += sent
        return
    except OSError as exc:
        if offset or exc.errno not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
            raise
    while chunk := os.read(src, _COPY_CHUNK):
        _write_all(dst, chunk)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink_if_present(path: Path) -> None:
    # A directory or a file in place of a directory component is "no such object" too.
    with contextlib.suppress(FileNotFoundError, NotADirectoryError, IsADirectoryError):
        os.unlink(path)


def _open_object(key: str, path: Path) -> io.FileIO:
    try:
        f = open(path, "rb", buffering=0)  # noqa: SIM115 - closed by the caller
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
        raise NotFound(f"object {key} not found") from exc
    if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
        f.close()
        raise NotFound(f"object {key} not found")
    return f


def _open_and_read(key: str, path: Path, size: int) -> tuple[io.FileIO, bytes]:
    f = _open_object(key, path)
    try:
        # Read the object's own size, not ``size``: FileIO.read(n) allocates n bytes before it
        # reads, and a 4 MiB allocation for a 0.5 MiB instance costs more than the read.
        return f, f.read(min(size, os.fstat(f.fileno()).st_size)) or b""
    except BaseException:
        f.close()
        raise


def _stat(key: str, path: Path) -> ObjectInfo | None:
    try:
        f = _open_object(key, path)
    except NotFound:
        return None
    with f:
        size = os.fstat(f.fileno()).st_size
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    return ObjectInfo(key=key, size=size, sha256=digest)


def _read_range(key: str, path: Path, offset: int, length: int) -> bytes:
    with _open_object(key, path) as f:
        parts: list[bytes] = []
        got = 0
        while got < length:
            chunk = os.pread(f.fileno(), length - got, offset + got)
            if not chunk:
                break
            parts.append(chunk)
            got += len(chunk)
        size = os.fstat(f.fileno()).st_size
    if got != length:
        # The caller's spans come from the index: an object shorter than that is damaged.
        raise StorageError(f"object {key}: range {offset}+{length} lies beyond its end ({size} bytes)")
    return b"".join(parts)


def _read_all(key: str, path: Path) -> bytes:
    with _open_object(key, path) as f:
        return f.readall()


def _download(key: str, path: Path, dest: Path) -> None:
    with _open_object(key, path) as f:
        try:
            fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            try:
                _copy_fd(f.fileno(), fd)
            finally:
                os.close(fd)
        except BaseException:
            _unlink_if_present(dest)  # a partial copy is worse than none
            raise


def _scan(directory: Path) -> list[tuple[str, bool]]:
    """Names in ``directory`` as (name, is_dir); regular files and directories only."""
    try:
        with os.scandir(directory) as entries:
            return [
                (e.name, e.is_dir(follow_symlinks=False))
                for e in entries
                if e.is_dir(follow_symlinks=False) or e.is_file(follow_symlinks=False)
            ]
    except (FileNotFoundError, NotADirectoryError):
        return []


def _scan_stat(directory: Path) -> list[tuple[str, bool, int, float]]:
    """Like :func:`_scan`, with each file's size and mtime (0 for directories)."""
    found: list[tuple[str, bool, int, float]] = []
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                try:
                    if entry.is_dir(follow_symlinks=False):
                        found.append((entry.name, True, 0, 0.0))
                    elif entry.is_file(follow_symlinks=False):
                        info = entry.stat(follow_symlinks=False)
                        found.append((entry.name, False, info.st_size, info.st_mtime))
                except FileNotFoundError:
                    continue  # removed while listed (a temp file linked and unlinked)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return found
