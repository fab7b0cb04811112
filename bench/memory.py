"""Peak resident memory of a server while it stores, then streams back, a multi-gigabyte series."""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass
from types import TracebackType

import httpx
import psutil  # type: ignore[import-untyped, unused-ignore]

from bench.dataset import LargeUpload
from bench.measure import get_stream
from bench.servers import Server, check

SAMPLE_INTERVAL = 0.05
WADO_AS_STORED = 'multipart/related; type="application/dicom"; transfer-syntax=*'


def tree_rss(pid: int) -> int:
    """Resident set size of a process and its children, in bytes (0 once it is gone)."""
    try:
        process = psutil.Process(pid)
        return sum(p.memory_info().rss for p in [process, *process.children(recursive=True)])
    except psutil.Error:
        return 0


class RssSampler:
    """Samples :func:`tree_rss` every 50 ms in a thread between ``__enter__`` and ``__exit__``."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.baseline = 0
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"rss-{pid}", daemon=True)

    def __enter__(self) -> RssSampler:
        self.baseline = self.peak = tree_rss(self.pid)
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, tree_rss(self.pid))

    def _loop(self) -> None:
        while not self._stop.wait(SAMPLE_INTERVAL):
            self.peak = max(self.peak, tree_rss(self.pid))


@dataclass(frozen=True)
class Phase:
    """One memory phase: RSS before and at peak (bytes), duration and bytes moved."""

    baseline: int
    peak: int
    seconds: float
    nbytes: int


@dataclass(frozen=True)
class MemoryResult:
    server: str
    slices: int
    idle: int  # RSS right after start-up, before any request
    upload: Phase | None
    stream: Phase | None
    error: str | None = None


def store_large(server: Server, upload: LargeUpload) -> Phase:
    """POST the whole upload as one streamed STOW-RS request while sampling the server's RSS."""
    headers = {
        "Content-Type": upload.content_type,
        "Content-Length": str(upload.content_length),
        "Accept": "application/dicom+json",
    }
    with RssSampler(server.pid) as rss:
        start = time.perf_counter()
        response = server.client.post(server.base + "/studies", content=iter(upload), headers=headers)
        seconds = time.perf_counter() - start
    check(response, server, "STOW-RS (large upload)")
    return Phase(rss.baseline, rss.peak, seconds, upload.content_length)


def stream_large(server: Server, upload: LargeUpload) -> Phase:
    """WADO-RS the stored series back (read and discarded) while sampling the server's RSS."""
    path = f"/studies/{upload.study_uid}/series/{upload.series_uid}"
    with RssSampler(server.pid) as rss:
        sample = get_stream(server, path, WADO_AS_STORED)
    return Phase(rss.baseline, rss.peak, sample.seconds, sample.nbytes)


def measure_memory(server: Server, slices: int, idle: int) -> MemoryResult:
    """Store ``slices`` 512 KB slices in one request, then stream them back; failures are reported."""
    upload = LargeUpload(slices)
    print(f"  {server.name}: storing {upload.content_length / 1e9:.2f} GB in one request", file=sys.stderr)
    try:
        stored = store_large(server, upload)
    except (RuntimeError, OSError, httpx.HTTPError) as exc:
        return MemoryResult(server.name, slices, idle, None, None, f"upload failed: {exc}")
    print(f"  {server.name}: streaming it back", file=sys.stderr)
    try:
        streamed = stream_large(server, upload)
    except (RuntimeError, OSError, httpx.HTTPError) as exc:
        return MemoryResult(server.name, slices, idle, stored, None, f"streaming failed: {exc}")
    return MemoryResult(server.name, slices, idle, stored, streamed)
