"""Benchmark of the DIMSE front door against Orthanc's own DIMSE server, on the same data, in
one run, with DCMTK's tools as the clients (the peers a hospital uses):

* C-STORE ingest: ``storescu`` of a CT series into the gateway, into Orthanc, and into DCMTK's
  ``storescp`` writing files (the limit of the link and the disk);
* C-FIND: ``findscu`` at STUDY level (Study Root), the same query against both;
* C-MOVE: ``movescu`` of the series from the gateway and from Orthanc to the same ``storescp``.

    .venv/bin/python bench/dimse.py                       # 300 slices of 512x512x16 bit, 3 rounds
    .venv/bin/python bench/dimse.py --slices 60 --repeats 2 --out /tmp/dimse.md

Rounds are interleaved (gateway, Orthanc, storescp in turn) and each round stores a new series
(new UIDs), so neither server answers a re-send of what it already holds. Figures are medians;
"ratio" is Orthanc's time over the gateway's (above 1: the gateway is faster).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make ``tests`` importable
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import pydicom  # noqa: E402

from bench.report import load_average, machine_lines  # noqa: E402
from tests import factory  # noqa: E402
from tests.fixtures_gateway import RunningGateway, start_gateway, stop_gateway  # noqa: E402
from tests.peers.orthanc import OrthancPeer, run_orthanc  # noqa: E402
from tests.peers.ports import free_port  # noqa: E402

GATEWAY_AET, CLIENT_AET, STORESCP_AET = "BENCH_GW", "BENCH_SCU", "BENCH_STORE"
ROWS = COLS = 512
DCMTK = Path("/usr/bin")  # pynetdicom installs its own *scu scripts that shadow DCMTK's on PATH
# DCMTK reads TCP_NODELAY from the environment; without it small PDUs wait for delayed ACKs.
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}


@dataclass
class Row:
    """One operation against the three targets: seconds per round, or why it failed."""

    name: str
    seconds: dict[str, list[float]] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)

    def add(self, target: str, seconds: float) -> None:
        self.seconds.setdefault(target, []).append(seconds)

    def median(self, target: str) -> float | None:
        runs = self.seconds.get(target)
        return statistics.median(runs) if runs else None


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def timed(args: Sequence[str]) -> float:
    """Seconds ``args`` took; raises with its output when it fails."""
    started = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True, env=DCMTK_ENV, timeout=900)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{Path(args[0]).name} exited {done.returncode}: {(done.stderr or done.stdout)[-400:]}")
    return elapsed


# -- the targets -------------------------------------------------------------------------------


@contextmanager
def storescp(folder: Path) -> Iterator[int]:
    """DCMTK's storescp writing every instance it receives into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    process = subprocess.Popen(
        [str(DCMTK / "storescp"), "-aet", STORESCP_AET, "--output-directory", str(folder), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=DCMTK_ENV,
    )
    try:
        time.sleep(0.5)
        yield port
    finally:
        process.terminate()
        process.wait(10)


@contextmanager
def orthanc(tmp: Path, storescp_port: int) -> Iterator[OrthancPeer]:
    modalities = {
        "bench": {"AET": CLIENT_AET, "Host": "127.0.0.1", "Port": free_port()},
        "storescp": {"AET": STORESCP_AET, "Host": "127.0.0.1", "Port": storescp_port},
    }
    with run_orthanc(tmp, extra_config={"DicomModalities": modalities}) as peer:
        yield peer


@contextmanager
def gateway(tmp: Path, storescp_port: int, running: list[RunningGateway] | None = None) -> Iterator[int]:
    """The gateway serving DIMSE on the port yielded (its process appended to ``running``)."""
    tmp.mkdir(parents=True, exist_ok=True)
    port = free_port()
    (tmp / "gateway.toml").write_text(
        f'ae_title = "{GATEWAY_AET}"\nscp_port = {port}\nscp_host = "127.0.0.1"\n'
        f'[[dimse_clients]]\nname = "bench"\nae_title = "{CLIENT_AET}"\nscopes = ["read", "write"]\n'
        f'[[dimse_clients]]\nname = "storescp"\nae_title = "{STORESCP_AET}"\nport = {storescp_port}\n'
        f'host = "127.0.0.1"\n'
    )
    gw = start_gateway(tmp, extra_args=("--config", str(tmp / "gateway.toml"), "--log-level", "warning"))
    if running is not None:
        running.append(gw)
    try:
        yield port
    finally:
        stop_gateway(gw)


# -- the operations ----------------------------------------------------------------------------


def store(files: Sequence[Path], aet: str, port: int) -> float:
    return timed([str(DCMTK / "storescu"), "-aet", CLIENT_AET, "-aec", aet, "127.0.0.1", str(port), *map(str, files)])


def find_studies(aet: str, port: int) -> float:
    return timed(
        [
            str(DCMTK / "findscu"),
            "-S",
            "-aet",
            CLIENT_AET,
            "-aec",
            aet,
            *("-k", "QueryRetrieveLevel=STUDY", "-k", "PatientName=*", "-k", "StudyInstanceUID"),
            *("-k", "StudyDate", "-k", "PatientID", "-k", "ModalitiesInStudy", "-k", "NumberOfStudyRelatedInstances"),
            "127.0.0.1",
            str(port),
        ]
    )


def move_series(aet: str, port: int, study: str, series: str) -> float:
    return timed(
        [
            str(DCMTK / "movescu"),
            "-S",
            "-aet",
            CLIENT_AET,
            "-aec",
            aet,
            "-aem",
            STORESCP_AET,
            *(
                "-k",
                "QueryRetrieveLevel=SERIES",
                "-k",
                f"StudyInstanceUID={study}",
                "-k",
                f"SeriesInstanceUID={series}",
            ),
            "127.0.0.1",
            str(port),
        ]
    )


def received(folder: Path) -> int:
    count = sum(1 for _ in folder.iterdir())
    shutil.rmtree(folder)
    folder.mkdir()
    return count


def benchmark(tmp: Path, slices: int, repeats: int, finds: int) -> tuple[list[Row], str]:
    ingest = Row(f"C-STORE ingest, storescu of {slices} CT slices")
    find = Row(f"C-FIND STUDY level (findscu, median of {finds} per round)")
    move = Row(f"C-MOVE of the series to storescp (movescu, {slices} instances)")
    arrived = tmp / "storescp"
    with (
        storescp(arrived) as scp_port,
        orthanc(tmp / "orthanc", scp_port) as pacs,
        gateway(tmp / "gw", scp_port) as gw_port,
    ):
        version = httpx.get(pacs.http_url + "/system", timeout=10).json()["Version"]
        targets = {"gateway": (GATEWAY_AET, gw_port), "Orthanc": (pacs.aet, pacs.dicom_port)}
        for round_number in range(repeats):
            folder = tmp / f"round{round_number}"
            folder.mkdir()
            series = factory.ct_series(slices, ROWS, COLS, seed=5000 + round_number, study_description="BENCH DIMSE")
            files = [factory.write(folder / f"{i:05d}.dcm", data) for i, data in enumerate(series)]
            first = pydicom.dcmread(files[0], stop_before_pixels=True)
            study, series_uid = str(first.StudyInstanceUID), str(first.SeriesInstanceUID)
            log(f"round {round_number + 1}/{repeats}: {slices} slices, {sum(len(d) for d in series) >> 20} MB")
            del series
            ingest.add("storescp", store(files, STORESCP_AET, scp_port))
            if received(arrived) != slices:
                raise RuntimeError("storescp did not receive every instance")
            for name, (aet, port) in targets.items():
                try:
                    ingest.add(name, store(files, aet, port))
                except RuntimeError as exc:
                    ingest.failures[name] = str(exc)
            for name, (aet, port) in targets.items():
                try:
                    find.add(name, statistics.median(find_studies(aet, port) for _ in range(finds)))
                except RuntimeError as exc:
                    find.failures[name] = str(exc)
            for name, (aet, port) in targets.items():
                try:
                    seconds = move_series(aet, port, study, series_uid)
                    count = received(arrived)
                    if count != slices:
                        raise RuntimeError(f"storescp received {count} of {slices} instances")
                    move.add(name, seconds)
                except RuntimeError as exc:
                    move.failures[name] = str(exc)
            shutil.rmtree(folder)
    return [ingest, find, move], version


def ms(value: float | None) -> str:
    return "–" if value is None else f"{value * 1000:.0f} ms"


def render(rows: Sequence[Row], version: str, load_before: str, slices: int, repeats: int) -> str:
    lines = [
        f"# DIMSE front door: gateway vs Orthanc ({slices} CT slices of 512x512, {repeats} rounds, medians)",
        "",
        *machine_lines(version, False, load_before),
        "",
        "| operation | gateway | Orthanc | storescp (limit) | ratio Orthanc / gateway |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        gateway_s, orthanc_s = row.median("gateway"), row.median("Orthanc")
        ratio = f"{orthanc_s / gateway_s:.2f}" if gateway_s and orthanc_s else "–"
        lines.append(f"| {row.name} | {ms(gateway_s)} | {ms(orthanc_s)} | {ms(row.median('storescp'))} | {ratio} |")
    failures = [f"- {row.name}, {target}: {why}" for row in rows for target, why in row.failures.items()]
    if failures:
        lines += ["", "Failed:", *failures]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--finds", type=int, default=10, help="C-FIND queries per round and target")
    parser.add_argument("--out", type=Path, help="also write the table here")
    args = parser.parse_args(argv)
    for tool in ("storescu", "storescp", "findscu", "movescu"):
        if not (DCMTK / tool).exists():
            parser.error(f"DCMTK's {tool} is not installed (apt install dcmtk)")
    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="bench-dimse-") as tmp:
        rows, version = benchmark(Path(tmp), args.slices, args.repeats, args.finds)
    report = render(rows, version, load_before, args.slices, args.repeats)
    print(report)
    if args.out:
        args.out.write_text(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
