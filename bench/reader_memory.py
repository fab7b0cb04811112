"""One reader against the gateway's memory: concurrent reads of one large instance.

Stores one native multi-frame instance of about ``--megabytes`` MB in a real
``python -m gateway serve`` (file store, SQLite), then runs three phases of ``--concurrency``
simultaneous requests and reports the server's resident memory (RSS, process tree) before each
phase, at its peak and once it is over:

1. ``bulkdata/{path}`` for paths the metadata never handed out (each answered 404): the attack
   of the security review (issue #12, finding 4);
2. ``bulkdata/7FE00010``, the whole pixel data, read by every client (streamed ranged reads);
3. the instance transcoded to Implicit VR Little Endian (whole-object work, under
   ``limits.whole_object_bytes``: past it, 503 with Retry-After).

``--source DIR`` runs the server from another checkout (e.g. the code before the change) with
the same client, for a before/after comparison. Run it from outside both checkouts (``python -m``
puts the working directory first on the server's path)::

    cd /tmp && PYTHONPATH=/path/to/this/checkout python -m bench.reader_memory
    cd /tmp && PYTHONPATH=/path/to/this/checkout python -m bench.reader_memory --source /path/to/other
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pydicom

from bench.memory import RssSampler, tree_rss
from bench.servers import HEADERS, TIMEOUT
from tests import factory
from tests.fixtures_gateway import start_gateway, stop_gateway

MB = 1_000_000
SETTLE = 1.0  # seconds after a phase before "after" is sampled
IMPLICIT = 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2'


def fetch(url: str, accept: str) -> tuple[int, int]:
    """GET ``url`` and read its body to the end, keeping none of it: (status, body bytes)."""
    with (
        httpx.Client(headers=HEADERS, timeout=TIMEOUT) as client,
        client.stream("GET", url, headers={"Accept": accept}) as response,
    ):
        size = sum(len(chunk) for chunk in response.iter_bytes())
        return response.status_code, size


def phase(name: str, pid: int, concurrency: int, request: Callable[[int], tuple[int, int]]) -> None:
    before = tree_rss(pid)
    started = time.monotonic()
    with RssSampler(pid) as rss, ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(request, range(concurrency)))
    seconds = time.monotonic() - started
    time.sleep(SETTLE)
    after = tree_rss(pid)
    statuses = ", ".join(f"{n} x {status}" for status, n in sorted(Counter(s for s, _ in results).items()))
    moved = sum(size for _, size in results)
    print(
        f"{name:<34} RSS before {before / MB:7.0f} MB  peak {rss.peak / MB:7.0f} MB (+{(rss.peak - before) / MB:5.0f})"
        f"  after {after / MB:7.0f} MB (+{(after - before) / MB:5.0f})  {seconds:5.1f} s  {statuses}"
        f"  {moved / MB:.0f} MB sent"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--megabytes", type=int, default=50, help="size of the instance (default 50)")
    parser.add_argument("--concurrency", type=int, default=32, help="simultaneous requests (default 32)")
    parser.add_argument("--source", type=Path, help="run the server from this checkout (PYTHONPATH)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="reader-memory-") as tmp:
        path = factory.write_multiframe_mb(Path(tmp) / "large.dcm", args.megabytes)
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        env = {"PYTHONPATH": str(args.source.resolve())} if args.source else None
        (Path(tmp) / "gw").mkdir()
        gw = start_gateway(Path(tmp) / "gw", env=env)
        try:
            data = path.read_bytes()
            boundary = "reader-memory"
            body = (
                f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
                + data
                + f"\r\n--{boundary}--\r\n".encode()
            )
            del data
            content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
            stored = httpx.post(gw.url + "/studies", content=body, headers={"Content-Type": content_type}, timeout=600)
            stored.raise_for_status()
            del body
            instance = (
                f"{gw.url}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
            )
            pid = gw.process.pid
            size = path.stat().st_size
            print(
                f"server {'from ' + str(args.source) if args.source else 'from this checkout'}; one instance of"
                f" {size / MB:.0f} MB; {args.concurrency} concurrent requests per phase"
            )
            time.sleep(SETTLE)
            unknown = ["00091010", "00100010", "00280010", "7FE00010/0/00100010"]
            phase(
                "bulkdata, unknown paths (404)",
                pid,
                args.concurrency,
                lambda i: fetch(f"{instance}/bulkdata/{unknown[i % len(unknown)]}", "application/octet-stream"),
            )
            phase(
                "bulkdata 7FE00010 (pixel data)",
                pid,
                args.concurrency,
                lambda i: fetch(f"{instance}/bulkdata/7FE00010", "application/octet-stream"),
            )
            phase("transcode to Implicit VR LE", pid, args.concurrency, lambda i: fetch(instance, IMPLICIT))
        finally:
            stop_gateway(gw)


if __name__ == "__main__":
    main()
