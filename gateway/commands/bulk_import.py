"""``dicomweb-gateway import SOURCE...``: store what a folder tree, a ZIP, a DICOMDIR medium or
an S3 prefix holds, through the store service (gateway.services.bulk_import), with the same
settings as ``serve``.

Exit status: 0 when nothing failed, 1 when some file failed (the report says which and why),
2 for a usage error (a source that does not exist, a state file in use), 130 when interrupted
(SIGINT or SIGTERM: the files in flight finish, the state is saved, and the same command
resumes).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

import anyio
import orjson

from gateway.adapters.import_files import FolderSource, ZipSource, is_dicomdir, is_zip_file
from gateway.adapters.import_s3 import S3Source
from gateway.app import build_index, build_store
from gateway.commands.import_progress import end_progress, show_progress, summary_line
from gateway.dicom.ziparchive import ZipLimits
from gateway.errors import GatewayError
from gateway.ports import ImportSource
from gateway.services.bulk_import import FAILED, BulkImport, ImportResult
from gateway.services.bundle import build_gateway
from gateway.services.import_state import ImportState, StateInUse
from gateway.settings import Settings
from gateway.spool import process_spool_dir

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
# What one ZIP given to the import may hold: an operator's archive, not a request, so far more
# members and bytes than a ZIP STOW; the zip-bomb ratio and the one-instance size still hold.
ZIP_MAX_ENTRIES = 1_000_000
ZIP_MAX_TOTAL_BYTES = 1 << 40


class UsageError(Exception):
    pass


def default_state_file(settings: Settings) -> Path:
    """``{data}/import/state-HASH.jsonl``, one per store and index: what was imported into one
    store is not taken as done for another."""
    target = f"{settings.effective_storage_url}\n{settings.effective_index_url}".encode()
    return settings.data_dir / "import" / f"state-{hashlib.sha256(target).hexdigest()[:16]}.jsonl"


def open_sources(settings: Settings, names: Sequence[str]) -> list[ImportSource]:
    """The sources the operator named; UsageError for one that does not exist."""
    limits = ZipLimits(
        max_entries=ZIP_MAX_ENTRIES,
        max_entry_bytes=settings.limits.max_part_bytes,
        max_total_bytes=ZIP_MAX_TOTAL_BYTES,
    )
    sources: list[ImportSource] = []
    for name in names:
        if name.startswith("s3://"):
            s3 = settings.s3
            try:
                sources.append(
                    S3Source(
                        name,
                        endpoint_url=s3.endpoint_url,
                        region=s3.region,
                        access_key=s3.access_key,
                        secret_key=s3.secret_key,
                        max_threads=s3.max_threads,
                        connect_timeout=s3.connect_timeout,
                    )
                )
            except GatewayError as exc:
                raise UsageError(exc.reason) from None
            continue
        path = Path(name)
        if is_zip_file(path):
            sources.append(ZipSource(path, limits))
        elif is_dicomdir(path):
            # A medium named by its DICOMDIR: the files it references are in its folder tree.
            sources.append(FolderSource(path.parent))
        elif path.is_dir() or path.is_file():
            sources.append(FolderSource(path))
        else:
            raise UsageError(f"{name}: no such file or directory (nor an s3://bucket/prefix URL)")
    return sources


@contextmanager
def _report_stream(report: Path | None) -> Iterator[TextIO]:
    if report is None:
        yield sys.stdout
        return
    report.parent.mkdir(parents=True, exist_ok=True)
    # Line-buffered: a killed import leaves a report complete up to its last finished file.
    with report.open("w", encoding="utf-8", buffering=1) as f:
        yield f


def run_import(
    settings: Settings,
    sources: Sequence[str],
    *,
    report: Path | None,
    state_file: Path | None,
    jobs: int | None,
    progress: bool,
    progress_interval: float,
) -> int:
    jobs = jobs if jobs is not None else (os.cpu_count() or 1)
    try:
        if jobs < 1:
            raise UsageError("--jobs must be at least 1")
        opened = open_sources(settings, sources)
        state = ImportState(state_file or default_state_file(settings))
    except (UsageError, StateInUse) as exc:
        print(f"dicomweb-gateway: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        with _report_stream(report) as out:
            return anyio.run(_main, settings, opened, state, out, jobs, progress, progress_interval)
    finally:
        state.close()


async def _main(
    settings: Settings,
    sources: list[ImportSource],
    state: ImportState,
    out: TextIO,
    jobs: int,
    progress: bool,
    progress_interval: float,
) -> int:
    spool = process_spool_dir(settings.effective_spool_dir) / "import"
    try:
        spool.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"dicomweb-gateway: cannot create the spool directory {spool}: {exc.strerror}", file=sys.stderr)
        return EXIT_FAILED
    store = build_store(settings)
    index = build_index(settings)
    gateway = build_gateway(settings, store, index)

    def write(result: ImportResult) -> None:
        row = {
            "file": result.file,
            "sop_instance_uid": result.sop_instance_uid,
            "outcome": result.outcome,
            "reason": result.reason,
        }
        out.write(orjson.dumps(row).decode() + "\n")

    importer = BulkImport(
        gateway.stow, state, spool, jobs=jobs, max_file_bytes=settings.limits.max_part_bytes, on_result=write
    )
    stop = anyio.Event()
    began = time.monotonic()
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_watch_signals, stop, tg.cancel_scope)
            if progress:
                tg.start_soon(lambda: show_progress(importer.progress, sys.stderr, interval=progress_interval))
            await importer.run(sources, stop)
            tg.cancel_scope.cancel()
    finally:
        end_progress(sys.stderr)
        out.flush()
        for source in sources:
            await source.aclose()
        await index.aclose()
        await store.aclose()
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(_remove_dir, spool)
    counts = importer.progress
    print(summary_line(counts, time.monotonic() - began, interrupted=stop.is_set()), file=sys.stderr)
    if stop.is_set():
        return EXIT_INTERRUPTED
    return EXIT_FAILED if counts.counts[FAILED] else EXIT_OK


async def _watch_signals(stop: anyio.Event, scope: anyio.CancelScope) -> None:
    """The first SIGINT / SIGTERM stops the import cleanly (files in flight finish); a second
    one cancels the run (instances being written still finish: the import shields them)."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            if stop.is_set():
                scope.cancel()
                return
            print(
                f"\ndicomweb-gateway: {signal.Signals(signum).name}: finishing the files in flight"
                " (again to stop at once)",
                file=sys.stderr,
            )
            stop.set()


def _remove_dir(path: Path) -> None:
    if path.is_dir():
        for child in path.iterdir():
            child.unlink(missing_ok=True)
        path.rmdir()
    with contextlib.suppress(OSError):
        path.parent.rmdir()  # this process's spool, unless something else of it is there
