"""Benchmark of the PACS bridge: a CT series retrieved through the gateway from Orthanc (by DIMSE),
against raw DIMSE clients pulling the same series, and C-FIND-backed QIDO against Orthanc's own
DICOMweb QIDO.

    .venv/bin/python bench/pacs.py              # 300 slices of 512x512x16 bit (158 MB), 3 repeats
    .venv/bin/python bench/pacs.py --slices 60 --repeats 2 --out bench/out/pacs.md

Rows (medians over the repeats):

* raw pynetdicom C-GET (TCP_NODELAY set on the socket), with pynetdicom's default run loop and
  with its run-loop delay lowered as the gateway does;
* DCMTK ``getscu`` with ``TCP_NODELAY=1`` writing the files to disk;
* the gateway, uncached (a fresh gateway and cache each time: C-FIND to locate, C-GET, write-through,
  streamed multipart response) and by C-MOVE to its storage SCP;
* the gateway, cached (the same series again: no DIMSE), and the core WADO-RS path (the same series
  STOWed to a gateway without PACS);
* QIDO ``/studies``: through the gateway (C-FIND to Orthanc, merged with the empty local index),
  through the ``/pacs/orthanc`` selector, and Orthanc's DICOMweb plugin.

"first byte" is the time from sending the request (or C-GET) to the first byte of the response
(or the first instance); for the uncached gateway, "after 1st instance" is the time from the
first instance reaching the gateway (its log) to the first response byte reaching the client.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make ``tests`` importable
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import pydicom  # noqa: E402
from pynetdicom import AE, StoragePresentationContexts, build_role, evt  # noqa: E402

from tests import factory  # noqa: E402
from tests.fixtures_gateway import RunningGateway, start_gateway, stop_gateway  # noqa: E402
from tests.fixtures_pacs import load_orthanc, node, pacs_toml  # noqa: E402
from tests.http_helpers import stow  # noqa: E402
from tests.peers.orthanc import OrthancPeer, run_orthanc  # noqa: E402
from tests.peers.ports import free_port  # noqa: E402

GET_MODEL = "1.2.840.10008.5.1.4.1.2.2.3"  # Study Root Q/R C-GET (PS3.4 C.6.2)
AS_STORED = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}
HEADERS = {"Accept-Encoding": "identity"}  # no gzip of pixel data (PEERS.md)
GATEWAY_AET = "GATEWAY"
QIDO_REPEATS = 20


@dataclass
class Run:
    total: float
    first: float | None
    nbytes: int
    after_first_instance: float | None = None


@dataclass
class Row:
    name: str
    runs: list[Run] = field(default_factory=list)
    note: str = ""

    def median(self, pick: Callable[[Run], float | None]) -> float | None:
        values = [v for v in map(pick, self.runs) if v is not None]
        return statistics.median(values) if values else None


def log(message: str) -> None:
    print(f"[pacs-bench] {message}", file=sys.stderr, flush=True)


# -- raw DIMSE clients ----------------------------------------------------------------------------


def raw_cget(peer: OrthancPeer, study: str, series: str, *, run_loop_delay: float | None) -> Run:
    ae = AE(ae_title=GATEWAY_AET)
    ae.maximum_pdu_size = 0
    ae.add_requested_context(GET_MODEL)
    roles = []
    for cx in StoragePresentationContexts:
        ae.add_requested_context(str(cx.abstract_syntax))
        roles.append(build_role(str(cx.abstract_syntax), scp_role=True))
    received = [0, 0]
    first: list[float] = []
    started = time.perf_counter()

    def nodelay(event: Any) -> None:
        event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def on_store(event: Any) -> int:
        data = event.encoded_dataset()
        if not first:
            first.append(time.perf_counter() - started)
        received[0] += 1
        received[1] += len(data)
        return 0x0000

    assoc = ae.associate(
        "127.0.0.1",
        peer.dicom_port,
        ae_title=peer.aet,
        ext_neg=roles,
        evt_handlers=[(evt.EVT_CONN_OPEN, nodelay), (evt.EVT_C_STORE, on_store)],
    )
    assert assoc.is_established
    if run_loop_delay is not None:
        assoc.dul._run_loop_delay = run_loop_delay
    identifier = pydicom.Dataset()
    identifier.QueryRetrieveLevel = "SERIES"
    identifier.StudyInstanceUID = study
    identifier.SeriesInstanceUID = series
    for _status, _ in assoc.send_c_get(identifier, GET_MODEL):
        pass
    assoc.release()
    return Run(time.perf_counter() - started, first[0] if first else None, received[1])


def getscu(peer: OrthancPeer, study: str, series: str, out: Path) -> Run:
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    subprocess.run(
        [
            "/usr/bin/getscu",  # pynetdicom installs its own getscu that shadows DCMTK's on PATH
            "-aet",
            GATEWAY_AET,
            "-aec",
            peer.aet,
            "-k",
            "QueryRetrieveLevel=SERIES",
            "-k",
            f"StudyInstanceUID={study}",
            "-k",
            f"SeriesInstanceUID={series}",
            "-od",
            str(out),
            "127.0.0.1",
            str(peer.dicom_port),
        ],
        env={**os.environ, "TCP_NODELAY": "1"},
        check=True,
        capture_output=True,
    )
    total = time.perf_counter() - started
    nbytes = sum(p.stat().st_size for p in out.iterdir())
    for p in out.iterdir():
        p.unlink()
    return Run(total, None, nbytes)


# -- the gateway ----------------------------------------------------------------------------------


@contextmanager
def gateway(tmp: Path, nodes: Sequence[dict[str, Any]], scp_port: int) -> Iterator[RunningGateway]:
    tmp.mkdir(parents=True, exist_ok=True)
    config = tmp / "gateway.toml"
    config.write_text(pacs_toml(nodes, ae_title=GATEWAY_AET, scp_port=scp_port, scp_host="127.0.0.1"))
    gw = start_gateway(tmp, extra_args=("--config", str(config), "--log-level", "info"))
    try:
        yield gw
    finally:
        stop_gateway(gw)


def wado(client: httpx.Client, url: str) -> tuple[Run, float]:
    """One streamed WADO-RS request; also returns the wall-clock time of its first byte."""
    started = time.perf_counter()
    first: float | None = None
    first_wall = 0.0
    nbytes = 0
    with client.stream("GET", url, headers=AS_STORED) as response:
        assert response.status_code == 200, response.read()[:300]
        for chunk in response.iter_raw():
            if first is None:
                first, first_wall = time.perf_counter() - started, time.time()
            nbytes += len(chunk)
    return Run(time.perf_counter() - started, first, nbytes), first_wall


def first_instance_time(gw: RunningGateway, what: str) -> float | None:
    """Wall-clock time at which the gateway logged the first received instance of ``what``."""
    for line in gw.log().splitlines():
        if f"first instance of {what}" not in line:
            continue
        try:
            stamp = json.loads(line)["time"]
            return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
        except (ValueError, KeyError):
            # Plain-text log format: "YYYY-mm-dd HH:MM:SS,mmm LEVEL ..."
            return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
    return None


def wait_until_cached(gw: RunningGateway, flights: int) -> float:
    """Wait until ``flights`` retrieves are cached completely; the wall-clock time it was seen."""
    deadline = time.monotonic() + 300
    while len(re.findall(r"retrieved (?:study|series|instance) ", gw.log())) < flights:
        if time.monotonic() > deadline:
            raise RuntimeError("the retrieve was never cached")
        time.sleep(0.005)
    return time.time()


def qido(client: httpx.Client, url: str) -> Run:
    started = time.perf_counter()
    response = client.get(url, headers={"Accept": "application/dicom+json"})
    assert response.status_code == 200, response.text[:300]
    return Run(time.perf_counter() - started, None, len(response.content))


# -- the run ------------------------------------------------------------------------------------


def benchmark(tmp: Path, slices: int, repeats: int) -> tuple[list[Row], list[Row], int]:
    log(f"generating {slices} CT slices of 512x512")
    series_files = factory.ct_series(slices, 512, 512, seed=0, study_description="BENCH PACS")
    catalog = factory.study_catalog()
    first = pydicom.dcmread(io.BytesIO(series_files[0]), stop_before_pixels=True)
    study, series = str(first.StudyInstanceUID), str(first.SeriesInstanceUID)
    warm_up_study = str(pydicom.dcmread(io.BytesIO(catalog[0]), stop_before_pixels=True).StudyInstanceUID)
    total_bytes = sum(len(d) for d in series_files)
    scp_port = free_port()
    rows: list[Row] = []
    qido_rows: list[Row] = []
    with run_orthanc(tmp / "orthanc", gateway_aet=GATEWAY_AET, gateway_port=scp_port) as orthanc:
        log("loading Orthanc")
        load_orthanc(orthanc, [*series_files, *catalog])

        log("raw pynetdicom C-GET")
        default = Row("raw pynetdicom C-GET (TCP_NODELAY)")
        tuned = Row("raw pynetdicom C-GET (TCP_NODELAY, run-loop delay 0.1 ms)")
        raw_cget(orthanc, study, series, run_loop_delay=None)  # warm-up (Orthanc's caches)
        for _ in range(repeats):
            default.runs.append(raw_cget(orthanc, study, series, run_loop_delay=None))
            tuned.runs.append(raw_cget(orthanc, study, series, run_loop_delay=0.0001))
        dcmtk = Row("DCMTK getscu (TCP_NODELAY=1, files to disk)", note="first byte not observable")
        for _ in range(repeats):
            dcmtk.runs.append(getscu(orthanc, study, series, tmp / "getscu"))
        rows += [default, tuned, dcmtk]

        url_path = f"/studies/{study}/series/{series}"
        for method in ("get", "move"):
            log(f"gateway uncached, C-{method.upper()}")
            uncached = Row(f"gateway uncached, C-{method.upper()} (locate, retrieve, cache, stream)")
            cached = Row("gateway cached (same series again, no DIMSE)")
            cache_complete = Row(
                f"  … C-{method.upper()}: cache complete (write-through done)", note="from the request"
            )
            receives: list[float] = []
            for rep in range(repeats):
                nodes = [node("orthanc", orthanc.dicom_port, orthanc.aet, retrieve=method)]
                with (
                    gateway(tmp / f"gw-{method}-{rep}", nodes, scp_port) as gw,
                    httpx.Client(headers=HEADERS, timeout=600) as client,
                ):
                    # A running gateway has its associations open: warm them (and Python) up with
                    # another, small study first. "Uncached" is about the data, not connections.
                    wado(client, f"{gw.url}/studies/{warm_up_study}")
                    wait_until_cached(gw, 1)
                    requested = time.time()
                    run, first_wall = wado(client, gw.url + url_path)
                    arrived = first_instance_time(gw, f"series {series}")
                    run.after_first_instance = first_wall - arrived if arrived is not None else None
                    uncached.runs.append(run)
                    receive_ms = re.findall(
                        rf"instance\(s\) of series {series} from PACS orthanc in (\d+) ms", gw.log()
                    )
                    receives.append(float(receive_ms[-1]) if receive_ms else float("nan"))
                    # The response ends with the retrieve; the write-through to the cache a bit later.
                    cache_complete.runs.append(Run(wait_until_cached(gw, 2) - requested, None, 0))
                    if method == "get":
                        # Measured like the core path below: one warm-up request first.
                        wado(client, gw.url + url_path)
                        for _ in range(2):
                            cached.runs.append(wado(client, gw.url + url_path)[0])
            uncached.note = f"DIMSE receive {statistics.median(receives):.0f} ms (gateway log)"
            rows.append(uncached)
            rows.append(cache_complete)
            if method == "get":
                rows.append(cached)

        log("gateway core WADO-RS path (series STOWed, no PACS)")
        core = Row("gateway core WADO-RS (series STOWed, no PACS)")
        with gateway(tmp / "gw-core", [], scp_port) as gw, httpx.Client(headers=HEADERS, timeout=600) as client:
            for start in range(0, len(series_files), 50):
                assert stow(gw.url, series_files[start : start + 50]).status_code == 200
            wado(client, gw.url + url_path)  # warm-up
            for _ in range(repeats * 2):
                core.runs.append(wado(client, gw.url + url_path)[0])
        rows.append(core)

        log("QIDO /studies")
        nodes = [node("orthanc", orthanc.dicom_port, orthanc.aet)]
        with gateway(tmp / "gw-qido", nodes, scp_port) as gw, httpx.Client(headers=HEADERS, timeout=60) as client:
            for name, url in (
                ("gateway /studies (index + C-FIND to Orthanc)", gw.url + "/studies"),
                ("gateway /pacs/orthanc/studies (C-FIND only)", gw.url + "/pacs/orthanc/studies"),
                ("Orthanc DICOMweb /studies", orthanc.dicomweb_url + "/studies"),
            ):
                row = Row(name)
                qido(client, url)  # warm-up: associations, connections
                for _ in range(QIDO_REPEATS):
                    row.runs.append(qido(client, url))
                row.note = f"{len(client.get(url, headers={'Accept': 'application/dicom+json'}).json())} rows"
                qido_rows.append(row)
    return rows, qido_rows, total_bytes


def ms(value: float | None) -> str:
    return "–" if value is None else f"{value * 1000:.0f} ms" if value >= 0.01 else f"{value * 1000:.1f} ms"


def render(rows: list[Row], qido_rows: list[Row], total_bytes: int, slices: int, repeats: int) -> str:
    lines = [
        f"## PACS bridge: {slices}-slice CT series ({total_bytes / 1e6:.0f} MB) from Orthanc, medians of {repeats}",
        "",
        "| path | total | first byte | after 1st instance | MB/s | note |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        total = row.median(lambda r: r.total)
        nbytes = row.median(lambda r: r.nbytes) or 0
        rate = f"{nbytes / total / 1e6:.0f}" if total else "–"
        first = row.median(lambda r: r.first)
        after = row.median(lambda r: r.after_first_instance)
        lines.append(f"| {row.name} | {ms(total)} | {ms(first)} | {ms(after)} | {rate} | {row.note} |")
    lines += ["", f"QIDO (medians of {QIDO_REPEATS}):", "", "| query | latency | note |", "|---|---|---|"]
    for row in qido_rows:
        lines.append(f"| {row.name} | {ms(row.median(lambda r: r.total))} | {row.note} |")
    by_name = {row.name.split(" (")[0]: row for row in rows}
    raw = rows[0].median(lambda r: r.total) or 0
    tuned = rows[1].median(lambda r: r.total) or 0
    uncached = by_name["gateway uncached, C-GET"].median(lambda r: r.total) or 0
    after = by_name["gateway uncached, C-GET"].median(lambda r: r.after_first_instance)
    cached = by_name["gateway cached"].median(lambda r: r.total) or 0
    core = by_name["gateway core WADO-RS"].median(lambda r: r.total) or 0
    lines += [
        "",
        "Targets:",
        "",
        f"- uncached total within 1.3x of raw pynetdicom C-GET: {uncached / raw:.2f}x"
        f" — {'met' if uncached <= 1.3 * raw else 'NOT met'}"
        f" ({uncached / tuned:.2f}x of the raw client with its run-loop delay lowered)",
        f"- first byte under 100 ms after the first instance reaches the gateway: {ms(after)}"
        f" — {'met' if after is not None and after < 0.1 else 'NOT met'}",
        f"- cached as fast as the core WADO-RS path: {cached / core:.2f}x of it"
        f" — {'met' if cached <= 1.1 * core else 'NOT met'}",
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, help="also write the markdown report here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="pacs-bench-") as tmp:
        rows, qido_rows, total = benchmark(Path(tmp), args.slices, args.repeats)
    report = render(rows, qido_rows, total, args.slices, args.repeats)
    print(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
