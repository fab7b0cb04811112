"""Benchmark: the same DICOMweb requests against the gateway and Orthanc's DICOMweb plugin.

Run from the repository root with the test extras installed (``make bench`` does both)::

    .venv/bin/python bench/run.py                 # full run, ~10 minutes, writes bench/out/results.md
    .venv/bin/python bench/run.py --quick         # smoke test: 30 slices, ~200 MB memory test
    .venv/bin/python bench/run.py --out FILE.md
    .venv/bin/python bench/run.py --webhook       # the gateway with one webhook on (issue #16's bound)
    .venv/bin/python bench/run.py --webhook --stow-only   # only its STOW cases, ~1 minute

One run generates the data set in a temporary directory (a 512×512×16-bit CT series of 300
slices, the factory's small study catalog, a 30-frame XA and JPEG/RLE instances), starts the
gateway (embedded file store + SQLite) and Orthanc on free ports, STOWs the same data into both,
then times each operation against both servers in turn (warm-up first, medians reported), and
samples the gateway's resident memory while it stores and then streams back a ~2 GB series sent
as one streamed STOW request. The markdown report (stdout and ``--out``) ends with the project's
performance targets, each marked met or not met. Both servers are stopped and the temporary data
removed on exit, Ctrl-C or error.

With ``--webhook`` the gateway delivers its change feed to one webhook, a receiver on loopback in
a process of its own (``bench/webhooks.py``) that acknowledges every entry; the report then ends
with the delivery latency (commit to receipt) of the entries of the run, and a second gateway
without the webhook ("gateway, no webhook", on its own data directory, loaded with the same data)
takes its turn in every repetition beside the two: the STOW rows of the two gateways, measured
interleaved in one run, give the webhook's cost with the machine's drifting load shared by both.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from types import FrameType

import psutil  # type: ignore[import-untyped, unused-ignore]

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make ``bench`` and ``tests`` importable
    sys.path.insert(0, str(ROOT))

from bench import report  # noqa: E402
from bench.dataset import BenchData, generate, stow_batch  # noqa: E402
from bench.measure import Case, Result, get_json, get_stream, post_stow, run_case  # noqa: E402
from bench.memory import WADO_AS_STORED, MemoryResult, measure_memory, tree_rss  # noqa: E402
from bench.servers import GATEWAY, Server, gateway_server, load, orthanc_server  # noqa: E402
from bench.webhooks import Receiver, percentile, webhook_args  # noqa: E402

FRAME_AS_STORED = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
STOW_COUNT = 100
NO_WEBHOOK = "gateway, no webhook"
WEBHOOK_STOW_REPEATS = 15
RECEIVER = "receiver"
DELIVERY_SETTLE = 1.0  # seconds: well past the delivery latency's p95 on a caught-up webhook


@dataclass(frozen=True)
class Plan:
    """Sizes and repetitions: ``reads`` for small requests, ``heavy`` for whole-series ones."""

    slices: int
    memory_slices: int
    reads: int
    heavy: int
    stow: int


FULL = Plan(slices=300, memory_slices=4000, reads=30, heavy=15, stow=7)
QUICK = Plan(slices=30, memory_slices=400, reads=5, heavy=3, stow=2)

RowMaker = Callable[[Result], list[report.Row]]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="30 slices and a ~200 MB memory test (smoke test)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "results.md", help="markdown report")
    parser.add_argument("--webhook", action="store_true", help="the gateway delivers its change feed to one webhook")
    parser.add_argument("--stow-only", action="store_true", help="with --webhook: only the STOW cases, no memory test")
    return parser.parse_args(argv)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def cases(data: BenchData, plan: Plan) -> list[tuple[Case, RowMaker]]:
    """The operations, in order, each with how its result becomes table rows."""
    series = f"/studies/{data.study_uid}/series/{data.series_uid}"
    frame = f"{series}/instances/{data.first_sop_uid}/frames/1"

    def qido(label: str, path: str, key: str = "qido") -> tuple[Case, RowMaker]:
        case = Case(label, lambda server, _: get_json(server, path), plan.reads)
        return case, lambda result: [report.time_row(result, key, report.rows_note)]

    def stow(label: str, per_request: int, first_rep: int) -> tuple[Case, RowMaker]:
        case = Case(
            label,
            lambda server, batch: post_stow(server, batch, per_request),
            plan.stow,
            warmup=1,
            prepare=lambda rep: stow_batch(first_rep + rep, STOW_COUNT),
        )
        return case, lambda result: [report.stow_row(result)]

    wado = Case(
        "WADO-RS series, multipart, transfer-syntax=*", lambda s, _: get_stream(s, series, WADO_AS_STORED), plan.heavy
    )
    metadata = Case(
        f"WADO-RS series /metadata ({data.slices} instances)",
        lambda s, _: get_json(s, series + "/metadata"),
        plan.heavy,
    )
    one_frame = Case(
        "WADO-RS one frame (/frames/1, as stored)", lambda s, _: get_stream(s, frame, FRAME_AS_STORED), plan.reads
    )
    return [
        qido("QIDO /studies", "/studies"),
        qido("QIDO /studies?PatientName=DOE*", "/studies?PatientName=DOE*"),
        qido("QIDO /studies/{s}/series", f"/studies/{data.study_uid}/series"),
        qido(
            f"QIDO /studies/{{s}}/series/{{se}}/instances?includefield=all ({data.slices} rows)",
            f"{series}/instances?includefield=all",
        ),
        (wado, report.wado_rows),
        (metadata, lambda result: [report.time_row(result, "metadata", report.rows_note)]),
        (one_frame, lambda result: [report.time_row(result, "frame", report.bytes_note)]),
        stow(f"STOW-RS 1 request × {STOW_COUNT} instances", STOW_COUNT, first_rep=0),
        stow(f"STOW-RS {STOW_COUNT} requests × 1 instance", 1, first_rep=100),
    ]


def describe(data: BenchData) -> str:
    return (
        f"{len(data.files)} instances: a CT series of {data.slices} slices 512×512×16 bit "
        f"({report.mb(data.total_bytes)}), the factory's study catalog (6 small studies), "
        "a 30-frame 512×512 XA, a JPEG baseline and an RLE 512×512 instance"
    )


def benchmark(
    stack: ExitStack, tmp: Path, plan: Plan, quick: bool, webhook: bool = False, stow_only: bool = False
) -> str:
    load_before = report.load_average()
    log(f"generating the data set in {tmp}")
    data = generate(tmp / "data", plan.slices)
    receiver: Receiver | None = None
    gateway_args: tuple[str, ...] = ()
    if webhook:
        receiver = Receiver(tmp)
        stack.callback(receiver.stop)
        gateway_args = webhook_args(tmp, receiver)
    servers: list[Server] = [
        stack.enter_context(gateway_server(tmp / "gateway", gateway_args)),
        stack.enter_context(orthanc_server(tmp / "orthanc")),
    ]
    idle = {s.name: tree_rss(s.pid) for s in servers}
    timed = list(servers)
    if webhook:
        no_webhook = stack.enter_context(gateway_server(tmp / "gateway-no-webhook"))
        no_webhook.name = NO_WEBHOOK
        timed.append(no_webhook)
    for server in timed:
        start = time.perf_counter()
        load(server, data.files)
        log(f"loaded {len(data.files)} instances into {server.name} in {time.perf_counter() - start:.1f} s")
    rows: list[report.Row] = []
    stows: list[StowCost] = []
    for case, to_rows in cases(data, plan):
        stow_case = case.label.startswith("STOW")
        if stow_only and not stow_case:
            continue
        if receiver is not None and stow_case:
            before = cpu_now(timed, receiver)
        result = run_case(case, timed)
        rows += to_rows(result)
        if receiver is not None and stow_case:
            time.sleep(DELIVERY_SETTLE)  # the run's last entries reach the receiver
            stored = (case.warmup + case.repeat) * STOW_COUNT
            after = cpu_now(timed, receiver)
            stows.append(StowCost(result, {k: (after[k] - before[k]) / stored * 1e3 for k in after}))
    if stow_only and receiver is not None:
        lines = report.machine_lines(servers[1].version, quick, load_before)
        return "# STOW with one webhook on and off\n\n" + "\n".join(lines) + "\n" + webhook_section(receiver, stows)
    log(f"memory: {plan.memory_slices} slices")
    memory: list[MemoryResult] = [measure_memory(s, plan.memory_slices, idle[s.name]) for s in servers]
    markdown = report.render(
        rows,
        memory,
        orthanc_version=servers[1].version,
        quick=quick,
        repeats=f"{plan.reads} repetitions of small requests, {plan.heavy} of whole-series reads, "
        f"{plan.stow} of STOW, after warm-up",
        dataset=describe(data),
        load_before=load_before,
    )
    return markdown if receiver is None else markdown + webhook_section(receiver, stows)


@dataclass(frozen=True)
class StowCost:
    """A STOW case timed with the webhook on and off, and the CPU time per instance stored (ms)
    of each process over the whole case (warm-up included): the gateways' process trees and the
    receiver's."""

    result: Result
    cpu_ms: dict[str, float]


def cpu_now(servers: Sequence[Server], receiver: Receiver) -> dict[str, float]:
    """User + system CPU seconds so far of each server's process tree and of the receiver."""
    seconds = {s.name: tree_cpu(s.pid) for s in servers}
    seconds[RECEIVER] = tree_cpu(receiver.process.pid or 0)
    return seconds


def tree_cpu(pid: int) -> float:
    try:
        process = psutil.Process(pid)
        return sum(sum(p.cpu_times()[:2]) for p in [process, *process.children(recursive=True)])
    except psutil.Error:
        return 0.0


def webhook_section(receiver: Receiver, stows: Sequence[StowCost]) -> str:
    """STOW with the webhook on against off (wall time, and CPU time per instance: steadier on a
    shared machine), and the delivery latency of every entry the webhook received during the run."""
    lines = [
        "",
        "## Webhook",
        "",
        "| operation | webhook on | no webhook | on against off | CPU per instance: on (+ receiver) / off |",
        "|---|---:|---:|---:|---:|",
    ]
    for stow in stows:
        result, cpu = stow.result, stow.cpu_ms
        on, off = result.median(GATEWAY), result.median(NO_WEBHOOK)
        n = result.last(GATEWAY).items
        extra = (cpu[GATEWAY] + cpu[RECEIVER] - cpu[NO_WEBHOOK]) / cpu[NO_WEBHOOK] * 100
        lines.append(
            f"| {result.case.label} | {on * 1e3:.0f} ms ({n / on:.0f} inst/s) "
            f"| {off * 1e3:.0f} ms ({n / off:.0f} inst/s) | {(on - off) / off * 100:+.1f} % "
            f"| {cpu[GATEWAY]:.2f} (+ {cpu[RECEIVER]:.2f}) / {cpu[NO_WEBHOOK]:.2f} ms ({extra:+.1f} %) |"
        )
    lines.append("")
    delays = [d * 1000 for d in receiver.delays]
    if not delays:
        lines.append("No entry was delivered.")
    else:
        lines.append(
            f"The gateway delivered its change feed to one webhook (a receiver on loopback): {len(delays)} entries, "
            f"commit to receipt p50 {percentile(delays, 50):.0f} ms, p95 {percentile(delays, 95):.0f} ms, "
            f"max {max(delays):.0f} ms."
        )
    return "\n".join(lines) + "\n"


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through the clean-up below


def reap_children() -> None:
    """Stop any server this process started that is still running (e.g. interrupted during its
    start-up, before its own clean-up was registered): only our own children, by process id."""
    for child in psutil.Process().children():
        with contextlib.suppress(psutil.Error):
            child.terminate()
            try:
                child.wait(5)
            except psutil.TimeoutExpired:
                child.kill()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    tmp = Path(tempfile.mkdtemp(prefix="dicomweb-bench-"))
    started = time.monotonic()
    try:
        with ExitStack() as stack:
            plan = QUICK if args.quick else FULL
            if args.webhook:  # the on/off difference sought is small against run-to-run noise
                plan = replace(plan, stow=max(plan.stow, WEBHOOK_STOW_REPEATS))
            markdown = benchmark(stack, tmp, plan, args.quick, args.webhook, args.stow_only and args.webhook)
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        reap_children()
        shutil.rmtree(tmp, ignore_errors=True)
    print(markdown)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(markdown)
    log(f"done in {time.monotonic() - started:.0f} s; report written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
