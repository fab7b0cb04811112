"""OHIF over a throttled link (issue #17, Benchmark): time to first image and to every slice.

    .venv/bin/python bench/viewer.py --link           # ~10 minutes; writes bench/out/viewer-link.md
    .venv/bin/python bench/viewer.py --link --quick   # smoke test (40 slices)

A CT series of 300 slices, 512×512×16 bit, on four servers, each reached over an emulated link
of 50 Mbit/s and 20 ms round trip (bench/throttle.py: ``tc`` needs privileges):

* the gateway storing it uncompressed; OHIF's own data source settings (frames as stored);
* the gateway storing it as JPEG-LS (``storage_compression = "jpeg-ls"``), same settings;
* the gateway storing it as HTJ2K RPCL (``storage_compression = "htj2k"``) with the progressive
  byte-range stages docs/dicomweb.md documents (the first 4 KiB of each frame drawn at an
  eighth of its size, then the rest);
* Orthanc with its DICOMweb plugin, the series uncompressed, OHIF's own settings.

**First image**: the real OHIF viewer (headless Chromium, tests/peers/ohif.py) behind a
same-origin proxy whose DICOMweb traffic crosses the link, from the start of the page load to
the first rendered pixels (read back from the canvas); one opening of a one-slice study first
loads the viewer and its codecs into the browser. **Every slice**: OHIF 3.13's stack viewport
fetches only the slices shown (the rest as the user scrolls), so the whole series is fetched
over a fresh link as its loader asks for frames (the same Accept header or ``accept`` and Range
stages), on six keep-alive connections (a browser's limit per host), and timed to the last byte.
"""

from __future__ import annotations

import queue
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pydicom

from bench import report
from bench.servers import GATEWAY, ORTHANC, Server, load, new_client, orthanc_server
from bench.throttle import ThrottledLink
from tests import factory
from tests.fixtures_gateway import start_gateway, stop_gateway
from tests.peers import ohif

ROOT = Path(__file__).resolve().parent.parent
DRIVER = ROOT / "tests" / "ohif_driver.js"
MBIT, RTT_MS = 50, 20
CHUNK = 4096
TIMEOUT_MS = 120_000  # for one opening
BROWSER_CONNECTIONS = 6  # what a browser opens to one host (HTTP/1.1)
AS_STORED = "multipart/related; type=application/octet-stream; transfer-syntax=*"  # OHIF's frame Accept
ACCEPT = "accept=image/jphc;transfer-syntax=1.2.840.10008.1.2.4.202"
PROGRESSIVE = {
    "$set": {
        "stages": [
            {"id": "lossySequential", "retrieveType": "singleFast"},
            {"id": "finalSequential", "retrieveType": "singleFinal"},
        ],
        "retrieveOptions": {
            "singleFast": {"rangeIndex": 0, "chunkSize": CHUNK, "urlArguments": ACCEPT},
            "singleFinal": {"rangeIndex": -1, "urlArguments": ACCEPT},
        },
    }
}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Setup:
    label: str
    storage: str  # the gateway's storage_compression ("" as received; unused for Orthanc)
    progressive: bool = False
    orthanc: bool = False


SETUPS = (
    Setup("gateway, stored uncompressed", ""),
    Setup("gateway, stored JPEG-LS", "jpeg-ls"),
    Setup("gateway, stored HTJ2K, progressive byte ranges", "htj2k", progressive=True),
    Setup("Orthanc DICOMweb, stored uncompressed", "", orthanc=True),
)


@dataclass
class Result:
    setup: Setup
    first: list[float]  # seconds to the first image, per opening
    everything: float | None  # seconds to every frame's last byte
    megabytes: float
    problem: str = ""


@contextmanager
def _gateway(tmp: Path, storage: str) -> Iterator[Server]:
    tmp.mkdir(parents=True, exist_ok=True)
    args: tuple[str, ...] = ()
    if storage:
        config = tmp / "gateway.toml"
        config.write_text(f'storage_compression = "{storage}"\n')
        args = ("--config", str(config))
    gw = start_gateway(tmp, extra_args=args)
    try:
        with new_client() as client:
            yield Server(GATEWAY, gw.url, gw.process.pid, client)
    finally:
        stop_gateway(gw)


def _open(server: Server, setup: Setup, studies: Sequence[str], dist: Path) -> dict[str, Any]:
    """Open ``studies`` in OHIF through the throttled link to ``server``; the driver's report."""
    url = urlsplit(server.base)
    with ThrottledLink(url.hostname or "127.0.0.1", url.port or 80, mbit=MBIT, rtt_ms=RTT_MS) as link:
        viewer = ohif.ViewerServer(dist, "", proxy=(url.path, f"http://127.0.0.1:{link.port}"))
        try:
            # Orthanc's DICOMweb plugin has no thumbnail resource: OHIF then renders thumbnails itself.
            thumbnails = "wadors" if setup.orthanc else "thumbnail"
            options = PROGRESSIVE if setup.progressive else None
            config = ohif.app_config(viewer.url + url.path, thumbnails=thumbnails, stack_retrieve_options=options)
            viewer.config_js = config.encode()
            payload = {
                "viewer": viewer.url,
                "chromium": ohif.CHROMIUM,
                "flags": list(ohif.CHROMIUM_FLAGS),
                "open": list(studies),
                "list": False,
                "timeoutMs": TIMEOUT_MS,
            }
            return ohif.run_driver(DRIVER, payload, timeout=1800)
        finally:
            viewer.close()


def _frame_requests(setup: Setup, frame_urls: Sequence[str]) -> list[list[tuple[str, dict[str, str]]]]:
    """The frame requests of the series, in the order OHIF's loader makes them: stage by stage."""
    if not setup.progressive:
        return [[(url, {"Accept": AS_STORED}) for url in frame_urls]]
    first = [(f"{url}?{ACCEPT}", {"Range": f"bytes=0-{CHUNK - 1}"}) for url in frame_urls]
    rest = [(f"{url}?{ACCEPT}", {"Range": f"bytes={CHUNK}-"}) for url in frame_urls]
    return [first, rest]


def _every_slice(server: Server, setup: Setup, frame_urls: Sequence[str]) -> tuple[float, int]:
    """Seconds to fetch every frame over a fresh link on BROWSER_CONNECTIONS keep-alive
    connections, and the bytes received."""
    url = urlsplit(server.base)
    with ThrottledLink(url.hostname or "127.0.0.1", url.port or 80, mbit=MBIT, rtt_ms=RTT_MS) as link:
        base = f"http://127.0.0.1:{link.port}"
        clients = queue.SimpleQueue[httpx.Client]()
        for _ in range(BROWSER_CONNECTIONS):
            clients.put(new_client())

        def fetch(request: tuple[str, dict[str, str]]) -> int:
            client = clients.get()
            try:
                response = client.get(base + request[0], headers=request[1])
                if response.status_code not in (200, 206):
                    raise RuntimeError(f"{request[0]} answered {response.status_code}")
                return len(response.content)
            finally:
                clients.put(client)

        received = 0
        start = time.perf_counter()
        with ThreadPoolExecutor(BROWSER_CONNECTIONS) as pool:
            for stage in _frame_requests(setup, frame_urls):
                received += sum(pool.map(fetch, stage))
        seconds = time.perf_counter() - start
        while not clients.empty():
            clients.get().close()
    return seconds, received


def run(quick: bool) -> str:
    slices, openings = (40, 1) if quick else (300, 2)
    dist = ohif.ensure_ohif_dist()
    ohif.ensure_playwright()
    ohif.ensure_chromium()
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="dicomweb-link-bench-") as name:
        tmp = Path(name)
        series = factory.ct_series(slices, 512, 512, seed=4343, study_description="BENCH LINK")
        warmup = factory.ct_series(1, 512, 512, seed=4344, study_description="WARM UP")
        files = [factory.write(tmp / f"{i:04d}.dcm", d) for i, d in enumerate(series + warmup)]
        heads = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
        study, warm = str(heads[0].StudyInstanceUID), str(heads[-1].StudyInstanceUID)
        frame_paths = [
            f"studies/{h.StudyInstanceUID}/series/{h.SeriesInstanceUID}/instances/{h.SOPInstanceUID}/frames/1"
            for h in heads[:-1]
        ]
        for i, setup in enumerate(SETUPS):
            place = tmp / f"server-{i}"
            context = orthanc_server(place) if setup.orthanc else _gateway(place, setup.storage)
            with context as server:
                load(server, files)
                log(f"  {setup.label}: loaded {slices} slices; opening in OHIF over {MBIT} Mbit/s, {RTT_MS} ms")
                got = _open(server, setup, [warm] + [study] * openings, dist)
                prefix = urlsplit(server.base).path + "/"
                seconds, received = _every_slice(server, setup, [prefix + p.lstrip("/") for p in frame_paths])
            opened = got.get("opened", [])[1:]
            problem = str(got.get("error") or "").splitlines()[0][:160] if got.get("error") else ""
            if got.get("bad"):
                problem += f" {len(got['bad'])} error response(s)"
            first = [o["firstImageMs"] / 1000 for o in opened]
            result = Result(setup, first, seconds, received / 1e6, problem.strip())
            log(f"    first image {first} s, every slice {seconds:.2f} s ({received / 1e6:.1f} MB) {problem}")
            results.append(result)
    return _table(results, slices, openings)


def _seconds(values: Sequence[float | None]) -> str:
    kept = [v for v in values if v is not None]
    return f"{statistics.median(kept):.2f} s" if kept else "n/a"


def _table(results: Sequence[Result], slices: int, openings: int) -> str:
    orthanc = next((r for r in results if r.setup.orthanc), None)
    base = statistics.median(orthanc.first) if orthanc and orthanc.first else None
    lines = [
        "| server and storage | OHIF: first image | vs Orthanc | every slice loaded | frame bytes | note |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        ratio = f"{statistics.median(r.first) / base:.2f}×" if base and r.first else ""
        lines.append(
            f"| {r.setup.label} | {_seconds(r.first)} | {ratio} | {_seconds([r.everything])} | {r.megabytes:.1f} MB "
            f"| {r.problem} |"
        )
    return (
        f"OHIF {ohif.OHIF_VERSION} in headless Chromium; a CT series of {slices} slices 512×512×16 bit; "
        f"the DICOMweb traffic over an emulated {MBIT} Mbit/s, {RTT_MS} ms round-trip link (bench/throttle.py). "
        f"First image: median of {openings} OHIF opening(s) after a warm-up opening of a one-slice study. "
        f"Every slice: all {slices} frames as OHIF's loader asks for them, {BROWSER_CONNECTIONS} connections. "
        f"{ORTHANC}: its DICOMweb plugin. Load average before: {report.load_average()}.\n\n" + "\n".join(lines) + "\n"
    )
