"""Bulk import (``dicomweb-gateway import``): every file of some sources (folder trees, ZIPs,
DICOMDIR media, S3 prefixes: gateway.ports.ImportSource) stored through the store service.

Each file is copied into this process's spool first and stored from there by
:meth:`gateway.services.stow.StowService.store_one`, exactly as a STOW part or a C-STORE is:
the same parsing and limits, compression, the one instance writer (durability, duplicate and
patient rules, change-feed entries), with origin ``import``. The copy is what is parsed and
stored, so a file the operator changes meanwhile cannot differ between the two, and the file
store, which publishes a spooled file by hard link, never links the operator's own file.
Being only another writer of the store and index, an import is safe beside running gateways.

Files are recognised by content, never by name (gateway.dicom.ziparchive.content_kind): a
Part 10 file (``DICM`` at offset 128, PS3.10 7.1) is an instance; a DICOMDIR (Media Storage
Directory, PS3.10 8.6) is skipped, since the files it references are in the same tree and
imported as they are found; anything else is skipped as not DICOM. A bare data set without
the Part 10 header is not imported: without its File Meta Information the transfer syntax
would be a guess.

``jobs`` files are in flight at once (copy, parse, durable write overlap). Finished files go
into the state (gateway.services.import_state) so a second run skips them; setting ``stop``
ends the run cleanly: no new file is started and those in flight finish.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from gateway.dicom import ziparchive
from gateway.errors import GatewayError
from gateway.ports import ImportSource, SourceEntry
from gateway.services.import_state import DoneFile, ImportState
from gateway.services.outcomes import FailedInstance, StoredInstance
from gateway.services.stow import StowService

log = logging.getLogger(__name__)

IMPORT_ORIGIN = "import"  # the index rows' origin (beside stow, dimse:<name>, pacs:<name>)

STORED = "stored"
DUPLICATE = "duplicate"  # an identical copy was stored already
FAILED = "failed"
SKIPPED = "skipped"
OUTCOMES = (STORED, DUPLICATE, FAILED, SKIPPED)


@dataclass(frozen=True)
class ImportResult:
    """One line of the report."""

    file: str
    sop_instance_uid: str | None
    outcome: str
    reason: str | None
    size: int = 0


@dataclass
class ImportProgress:
    """Counters a progress display reads while the import runs (files to do, not skipped ones)."""

    files_total: int = 0
    bytes_total: int = 0
    files_done: int = 0
    bytes_done: int = 0
    listing: bool = True  # still listing the sources (totals growing)
    started: float = field(default_factory=time.monotonic)
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))


@dataclass(frozen=True)
class _Work:
    source: ImportSource
    entry: SourceEntry


class BulkImport:
    def __init__(
        self,
        stow: StowService,
        state: ImportState,
        spool_dir: Path,
        *,
        jobs: int,
        max_file_bytes: int,
        on_result: Callable[[ImportResult], None],
    ) -> None:
        if jobs < 1:
            raise ValueError("jobs must be at least 1")
        self._stow = stow
        # limits.max_part_bytes, the one-instance limit of STOW and C-STORE: checked on the
        # listed size, before anything is copied.
        self._max_file_bytes = max_file_bytes
        self._state = state
        self._spool_dir = spool_dir
        self._jobs = jobs
        self._on_result = on_result
        self.progress = ImportProgress()

    async def run(self, sources: Sequence[ImportSource], stop: anyio.Event) -> ImportProgress:
        """Import every file of ``sources`` not finished by an earlier run; returns the counts."""
        self._spool_dir.mkdir(parents=True, exist_ok=True)
        # Listed in full first: the totals give the progress display its ETA, and the listing of
        # a whole source (a ZIP's directory, S3 pages) is cheap beside reading the files.
        todo: list[_Work] = []
        for source in sources:
            if stop.is_set():
                break
            try:
                async for entry in source.entries():
                    if stop.is_set():
                        break  # a long listing (millions of S3 keys) stops at Ctrl-C too
                    done = self._state.done(entry)
                    if done is None:
                        todo.append(_Work(source, entry))
                        self.progress.files_total += 1
                        self.progress.bytes_total += entry.size
                    else:
                        self._report(ImportResult(entry.name, done.sop_instance_uid, SKIPPED, _earlier(done)))
            except GatewayError as exc:
                self._report(ImportResult(source.label, None, FAILED, f"cannot list the source: {exc.reason}"))
        self.progress.listing = False
        self.progress.started = time.monotonic()
        queue = iter(todo)

        async def worker() -> None:
            for work in queue:
                if stop.is_set():
                    return
                result = await self._import_one(work)
                self.progress.files_done += 1
                self.progress.bytes_done += work.entry.size
                self._report(result)

        async with anyio.create_task_group() as tg:
            for _ in range(min(self._jobs, max(1, len(todo)))):
                tg.start_soon(worker)
        return self.progress

    def _report(self, result: ImportResult) -> None:
        self.progress.counts[result.outcome] += 1
        self._on_result(result)

    async def _import_one(self, work: _Work) -> ImportResult:
        entry = work.entry
        if entry.size > self._max_file_bytes:
            # Not recorded as done: a run with a higher limit imports it.
            reason = f"{entry.size} bytes, over the one-instance limit limits.max_part_bytes ({self._max_file_bytes})"
            return ImportResult(entry.name, None, FAILED, reason, entry.size)
        spooled = self._spool_dir / f"import-{uuid.uuid4().hex}"
        try:
            try:
                await work.source.fetch(entry, spooled)
                head = await anyio.to_thread.run_sync(_head, spooled)
            except GatewayError as exc:
                return ImportResult(entry.name, None, FAILED, exc.reason, entry.size)
            except OSError as exc:  # the spool's side: a full or read-only data volume
                reason = f"cannot copy into the spool {self._spool_dir}: {exc.strerror or exc}"
                return ImportResult(entry.name, None, FAILED, reason, entry.size)
            kind = ziparchive.content_kind(head)
            if kind != "dicom":
                reason = _NOT_INSTANCE[kind]
                self._state.record(entry, DoneFile(SKIPPED, None, reason))
                return ImportResult(entry.name, None, SKIPPED, reason, entry.size)
            # Shielded: an instance being written is finished even when a second Ctrl-C cancels
            # the run, so that what the report and the state say matches the store.
            with anyio.CancelScope(shield=True):
                written = await self._stow.store_one(_SpooledFile(spooled), study_uid=None, origin=IMPORT_ORIGIN)
                result = self._finish(entry, written)
            return result
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(spooled)

    def _finish(self, entry: SourceEntry, written: StoredInstance | FailedInstance) -> ImportResult:
        if isinstance(written, FailedInstance):
            failure = f"{written.detail} (failure reason 0x{written.failure_reason:04X})"
            return ImportResult(entry.name, written.sop_instance_uid, FAILED, failure, entry.size)
        outcome = STORED if written.inserted else DUPLICATE
        reason = None if written.inserted else "an identical instance is stored already"
        self._state.record(entry, DoneFile(outcome, written.sop_instance_uid, reason))
        return ImportResult(entry.name, written.sop_instance_uid, outcome, reason, entry.size)


@dataclass(frozen=True)
class _SpooledFile:
    """A spooled copy as the store service takes an upload part (gateway.services.stow.UploadedPart)."""

    path: Path
    content_type: str | None = "application/dicom"


_NOT_INSTANCE = {
    "dicomdir": "DICOMDIR (a directory of the medium's files, which are imported as found)",
    "archive": "an archive: name it as a source of its own to import it",
    "other": "not a DICOM Part 10 file (no DICM prefix at offset 128)",
}


def _head(path: Path) -> bytes:
    with path.open("rb") as f:
        return f.read(ziparchive.HEAD_BYTES)


def _earlier(done: DoneFile) -> str:
    what = f"{done.outcome} by an earlier run"
    return f"{what}: {done.reason}" if done.outcome == SKIPPED and done.reason else what
