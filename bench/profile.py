"""Where the gateway's time goes on the three bulk paths, per instance (issue #14).

    .venv/bin/python bench/profile.py                    # the three paths, ~2 minutes
    .venv/bin/python bench/profile.py --path stow        # stow | wado | pacs (repeatable)
    .venv/bin/python bench/profile.py --raw-dir DIR      # also keep py-spy's raw stacks (flamegraph input)

Each path runs against a gateway process on its embedded defaults (file store, SQLite) while
py-spy samples that process (``--rate`` Hz, ``--nonblocking``: the process is not paused to read
its stacks, so the sampling does not slow it down):

* ``stow``: ``--stow`` requests of one 512x512 CT instance each, one after the other (STOW-RS
  100 x 1 of ``bench/run.py``);
* ``wado``: the 300-slice CT series read back ``--reads`` times, ``transfer-syntax=*``;
* ``pacs``: the same series, held only by Orthanc (a ``[[pacs]]`` node), read once through the
  gateway: C-FIND to locate it, C-GET, streamed response; then, profiled apart, the write-through
  to the cache, which starts when the retrieve ends and which the response does not wait for.

Each sample is charged to the innermost stack frame that one of :data:`STAGES` recognises (a
sample in pydicom called from the STOW parser is "Part 10 parse"; in ``os.fsync`` called by the
file store, "object store"); a thread waiting (a lock, a queue, an idle selector) is not busy and
is left out. The table gives the busy milliseconds per instance by stage, for the event-loop
thread and for the other threads (anyio's workers, the DIMSE threads), beside the wall time per
instance: the difference between busy and wall is time spent waiting (disk, the client, hand-offs).
"""

from __future__ import annotations

import argparse
import collections
import io
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make ``bench`` and ``tests`` importable
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import pydicom  # noqa: E402

from bench.dataset import generate, multipart_body, stow_batch  # noqa: E402
from bench.pacs import GATEWAY_AET, HEADERS, gateway, wait_until_cached  # noqa: E402
from bench.report import load_average  # noqa: E402
from bench.servers import TIMEOUT, gateway_server, load  # noqa: E402
from tests import factory  # noqa: E402
from tests.fixtures_pacs import load_orthanc, node  # noqa: E402
from tests.peers.orthanc import run_orthanc  # noqa: E402
from tests.peers.ports import free_port  # noqa: E402

AS_STORED = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}
PY_SPY = Path(sys.executable).parent / "py-spy"

# (stage, how a frame "function (file:line)" is recognised): the innermost frame of a sample
# that matches decides its stage; the order matters only for a frame two rules would match.
STAGES: list[tuple[str, Callable[[str, str], bool]]] = [
    ("SHA-256 of the instance", lambda fn, path: fn == "_sha256"),
    ("thread hand-off (anyio; GIL handover)", lambda fn, path: fn == "notify" and path.endswith("/threading.py")),
    ("Part 10 parse (pydicom)", lambda fn, path: "/pydicom/" in path or path.endswith("gateway/dicom/parse.py")),
    ("DICOM JSON metadata", lambda fn, path: path.endswith(("dicomjson.py", "orjson"))),
    ("object store (files, fsync, rename)", lambda fn, path: path.endswith("filestore.py")),
    ("index (SQLite)", lambda fn, path: "sqlite" in path or "/adapters/sql_" in path),
    ("multipart request (receive, spool)", lambda fn, path: path.endswith(("multipart.py", "spool.py"))),
    ("DIMSE (pynetdicom)", lambda fn, path: "/pynetdicom/" in path or "/gateway/netdicom/" in path),
    ("PACS bridge (C-FIND, C-GET, cache)", lambda fn, path: "dimse" in path or "pacs_flights" in path),
    ("response body (instances out)", lambda fn, path: "/gateway/services/retrieval" in path),
    # Waking another thread hands it the GIL: a thread that just woke the event loop (anyio's
    # worker reporting its result) or a worker (the loop queueing a call) waits here to get it back.
    ("thread hand-off (anyio; GIL handover)", lambda fn, path: "/anyio/" in path or path.endswith("/threading.py")),
    ("HTTP (uvicorn, h11, httptools)", lambda fn, path: "/uvicorn/" in path or "/h11/" in path),
    ("ASGI app (starlette, middleware)", lambda fn, path: "/starlette/" in path or "/gateway/http/" in path),
    ("other gateway code", lambda fn, path: "/gateway/" in path),
]
# A sample whose innermost frame is one of these is a thread waiting, not working.
WAITING = {"wait", "get", "select", "_recv_into", "accept", "sleep", "run", "serve_forever", "poll"}
WAITING_FILES = ("threading.py", "queue.py", "selectors.py", "runners.py", "socketserver.py")


@dataclass
class Profile:
    """Samples of one path: busy samples by (thread kind, stage), and the wall time it took."""

    name: str
    instances: int
    wall: float
    rate: int
    busy: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)
    waiting: int = 0

    def share(self, samples: int) -> float:
        """``samples`` as a fraction of every busy sample of the path."""
        total = sum(self.busy.values())
        return samples / total if total else 0.0

    def ms_per_instance(self, samples: int) -> float:
        """The wall time per instance that ``samples`` stand for (their share of the busy samples)."""
        return self.share(samples) * self.wall * 1000 / self.instances


def frame_parts(frame: str) -> tuple[str, str]:
    """``"function (path:line)"`` → (function, path)."""
    function, _, rest = frame.partition(" (")
    # py-spy writes paths relative to their sys.path entry ("anyio/to_thread.py"): a leading
    # "/" lets a rule match a package by "/name/".
    return function.split(".")[-1], "/" + rest.rsplit(":", 1)[0].lstrip("/")


def classify(stack: list[str]) -> str | None:
    """The stage of a sample (innermost frame last), or None for a thread waiting."""
    leaf_function, leaf_path = frame_parts(stack[-1])
    if leaf_function in WAITING and leaf_path.endswith(WAITING_FILES):
        return None
    for frame in reversed(stack):
        function, path = frame_parts(frame)
        for stage, matches in STAGES:
            if matches(function, path):
                return stage
    return "other (interpreter, libraries)"


def aggregate(raw: Path, profile: Profile) -> None:
    """py-spy's raw output (``frame;frame;... count`` per line) into ``profile``."""
    for line in raw.read_text().splitlines():
        stack_text, _, count = line.rpartition(" ")
        stack = stack_text.split(";")
        if not stack or not count.isdigit():
            continue
        thread = "event loop" if "runpy" in stack[0] or "__main__" in stack[0] else "other threads"
        stage = classify(stack)
        if stage is None:
            profile.waiting += int(count)
        else:
            profile.busy[(thread, stage)] += int(count)


@contextmanager
def sampled(pid: int, rate: int, raw: Path, *, attach: bool = True) -> Iterator[None]:
    """py-spy samples ``pid`` while the block runs. ``attach``: give py-spy a second to attach
    first (False: start at once, when the block must follow the previous one without a gap;
    the first samples may then be missed)."""
    spy = subprocess.Popen(
        [str(PY_SPY), "record", "--pid", str(pid), "--rate", str(rate), "--nonblocking", "--format", "raw",
         "--output", str(raw)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    if attach:
        time.sleep(1.0)  # py-spy attaches
    try:
        yield
    finally:
        spy.send_signal(subprocess.signal.SIGINT)
        spy.wait(60)


def profile_stow(tmp: Path, count: int, rate: int, raw: Path) -> Profile:
    instances = stow_batch(500, count + 10)
    with gateway_server(tmp / "gw-stow") as server:
        for instance in instances[:10]:  # warm-up
            _stow_one(server.client, server.base, instance)
        with sampled(server.pid, rate, raw):
            started = time.perf_counter()
            for instance in instances[10:]:
                _stow_one(server.client, server.base, instance)
            wall = time.perf_counter() - started
    return Profile(f"STOW-RS {count} requests x 1 instance", count, wall, rate)


def _stow_one(client: httpx.Client, base: str, instance: bytes) -> None:
    body, content_type = multipart_body([instance])
    response = client.post(base + "/studies", content=body, headers={"Content-Type": content_type})
    if response.status_code != 200:
        raise RuntimeError(f"STOW answered {response.status_code}: {response.text[:300]}")


def profile_wado(tmp: Path, slices: int, reads: int, rate: int, raw: Path) -> Profile:
    data = generate(tmp / "data", slices)
    with gateway_server(tmp / "gw-wado") as server:
        load(server, data.files)
        url = f"{server.base}/studies/{data.study_uid}/series/{data.series_uid}"
        _read(server.client, url)  # warm-up
        with sampled(server.pid, rate, raw):
            started = time.perf_counter()
            for _ in range(reads):
                _read(server.client, url)
            wall = time.perf_counter() - started
    return Profile(f"WADO-RS series of {data.slices} instances, transfer-syntax=*, {reads} reads", slices * reads,
                   wall, rate)  # fmt: skip


def _read(client: httpx.Client, url: str) -> int:
    total = 0
    with client.stream("GET", url, headers=AS_STORED) as response:
        if response.status_code != 200:
            raise RuntimeError(f"WADO-RS answered {response.status_code}")
        for chunk in response.iter_raw():
            total += len(chunk)
    return total


def profile_pacs(tmp: Path, slices: int, rate: int, raw: Path) -> list[Profile]:
    """Two profiles: the response (C-FIND, C-GET, stream), sampled until its last byte, and the
    write-through to the cache that follows it, sampled until the entity is marked retrieved.
    (One window for both charged the cache's work to the response, which does not wait for it.)"""
    series_files = factory.ct_series(slices, 512, 512, seed=0, study_description="BENCH PROFILE")
    catalog = factory.study_catalog()
    first = pydicom.dcmread(io.BytesIO(series_files[0]), stop_before_pixels=True)
    warm_up = pydicom.dcmread(io.BytesIO(catalog[0]), stop_before_pixels=True)
    scp_port = free_port()
    cache_raw = raw.with_name(raw.stem + "-cache" + raw.suffix)
    with run_orthanc(tmp / "orthanc", gateway_aet=GATEWAY_AET, gateway_port=scp_port) as orthanc:
        load_orthanc(orthanc, [*series_files, *catalog])
        nodes = [node("orthanc", orthanc.dicom_port, orthanc.aet, retrieve="get")]
        with gateway(tmp / "gw-pacs", nodes, scp_port) as gw, httpx.Client(headers=HEADERS, timeout=TIMEOUT) as client:
            _read(client, f"{gw.url}/studies/{warm_up.StudyInstanceUID}")  # associations and Python warm
            wait_until_cached(gw, 1)
            url = f"{gw.url}/studies/{first.StudyInstanceUID}/series/{first.SeriesInstanceUID}"
            with sampled(gw.process.pid, rate, raw, attach=True):
                started = time.perf_counter()
                _read(client, url)
                ended = time.perf_counter()
            with sampled(gw.process.pid, rate, cache_raw, attach=False):
                gap = time.perf_counter() - ended  # py-spy stopping and starting: not sampled
                wait_until_cached(gw, 2)
                cache_wall = time.perf_counter() - ended
    name = f"uncached series of {slices} instances through the PACS bridge (C-GET from Orthanc)"
    response = Profile(f"{name}: the response", slices, ended - started, rate)
    aggregate(raw, response)
    cache = Profile(
        f"{name}: the write-through to the cache, from the response's end until the series is marked retrieved"
        f" (its first {gap * 1000:.0f} ms not sampled: py-spy restarting)",
        slices,
        cache_wall,
        rate,
    )
    aggregate(cache_raw, cache)
    return [response, cache]


def render(profiles: Sequence[Profile], load: tuple[str, str]) -> str:
    lines = [
        "# Where the gateway's time goes (py-spy)",
        "",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; load average (1 min) at start / end: "
        f"{load[0]} / {load[1]}",
        "- each stage's share of the gateway's busy samples (the innermost recognised frame of each sample), by",
        "  thread, and the wall time per instance it stands for (share x wall time: the requests run one at a",
        "  time, so the stages follow one another; a thread waiting for the GIL after waking another counts",
        "  as hand-off)",
        "",
    ]
    for p in profiles:
        threads = sorted({thread for thread, _ in p.busy})
        busy = sum(p.busy.values())
        lines += [
            f"## {p.name}",
            "",
            f"Wall time: {p.wall * 1000 / p.instances:.2f} ms per instance ({p.wall:.2f} s for {p.instances}); "
            f"{busy} busy samples, {p.waiting} of threads waiting.",
            "",
            "| stage | " + " | ".join(f"{t} (share)" for t in threads) + " | ms per instance |",
            "|---|" + "---:|" * (len(threads) + 1),
        ]
        stages = sorted({stage for _, stage in p.busy}, key=lambda s: -sum(p.busy[(t, s)] for t in threads))
        for stage in stages:
            cells = [f"{100 * p.share(p.busy[(t, stage)]):.0f} %" for t in threads]
            total = sum(p.busy[(t, stage)] for t in threads)
            lines.append(f"| {stage} | " + " | ".join(cells) + f" | {p.ms_per_instance(total):.2f} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--path", action="append", choices=["stow", "wado", "pacs"], help="default: all three")
    parser.add_argument("--stow", type=int, default=200, help="single-instance STOW requests")
    parser.add_argument("--slices", type=int, default=300, help="slices of the CT series (wado, pacs)")
    parser.add_argument("--reads", type=int, default=10, help="reads of the series (wado)")
    parser.add_argument("--rate", type=int, default=1000, help="samples per second")
    parser.add_argument("--raw-dir", type=Path, help="keep py-spy's raw stacks here")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "profile.md")
    args = parser.parse_args(argv)
    if not PY_SPY.exists():
        print(f"py-spy is not installed in this environment ({PY_SPY}): scripts/venv.sh test installs it")
        return 2
    paths = args.path or ["stow", "wado", "pacs"]
    start_load = load_average()
    tmp = Path(tempfile.mkdtemp(prefix="dicomweb-profile-"))
    profiles: list[Profile] = []
    try:
        for path in paths:
            raw = (args.raw_dir or tmp) / f"{path}.txt"
            raw.parent.mkdir(parents=True, exist_ok=True)
            print(f"profiling {path}", file=sys.stderr, flush=True)
            if path == "stow":
                profile = profile_stow(tmp, args.stow, args.rate, raw)
            elif path == "wado":
                profile = profile_wado(tmp, args.slices, args.reads, args.rate, raw)
            else:
                profiles += profile_pacs(tmp, args.slices, args.rate, raw)
                continue
            aggregate(raw, profile)
            profiles.append(profile)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    markdown = render(profiles, (start_load, load_average()))
    print(markdown)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
