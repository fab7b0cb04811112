"""STOW-RS only: the two STOW rows of ``bench/run.py`` against the gateway and Orthanc, quickly.

    .venv/bin/python bench/stow.py                  # 7 repetitions of each, ~1 minute
    .venv/bin/python bench/stow.py --repeat 15 --out FILE.md
    .venv/bin/python bench/stow.py --baseline ../main   # also the gateway of another checkout

The same cases as ``bench/run.py`` (100 CT instances of 512x512x16 bit in one request, and in
100 requests of one), interleaved between the two servers within each repetition so that the
machine's load weighs on both alike, medians reported. Both servers keep their storage under one
temporary directory, so on the same filesystem. For trying a change to the ingest path without
the rest of the benchmark; the README's figures come from ``bench/run.py``. With ``--baseline``
a third server runs the gateway's code from another checkout (``PYTHONPATH``), interleaved with
the two others, so that a change is measured against what it changes under the same load.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make ``bench`` and ``tests`` importable
    sys.path.insert(0, str(ROOT))

from bench import report  # noqa: E402
from bench.dataset import stow_batch  # noqa: E402
from bench.measure import Case, post_stow, run_case  # noqa: E402
from bench.run import STOW_COUNT, reap_children  # noqa: E402
from bench.servers import GATEWAY, Server, gateway_server, new_client, orthanc_server  # noqa: E402
from tests.fixtures_gateway import start_gateway, stop_gateway  # noqa: E402

BASELINE = "baseline"


@contextmanager
def baseline_server(tmp: Path, code: Path) -> Iterator[Server]:
    """The gateway of the checkout at ``code`` on its embedded defaults under ``tmp``."""
    tmp.mkdir(parents=True, exist_ok=True)
    gw = start_gateway(tmp, env={"PYTHONPATH": str(code.resolve())})
    try:
        with new_client() as client:
            yield Server(BASELINE, gw.url, gw.process.pid, client)
    finally:
        stop_gateway(gw)


def stow_case(label: str, per_request: int, first_rep: int, repeat: int) -> Case:
    return Case(
        label,
        lambda server, batch: post_stow(server, batch, per_request),
        repeat,
        warmup=1,
        prepare=lambda rep: stow_batch(first_rep + rep, STOW_COUNT),
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=7, help="timed repetitions of each case")
    parser.add_argument("--baseline", type=Path, help="a checkout whose gateway runs beside this one")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "stow.md", help="markdown report")
    args = parser.parse_args(argv)
    load_before = report.load_average()
    tmp = Path(tempfile.mkdtemp(prefix="dicomweb-bench-stow-"))
    try:
        with ExitStack() as stack:
            servers = [
                stack.enter_context(gateway_server(tmp / "gateway")),
                stack.enter_context(orthanc_server(tmp / "orthanc")),
            ]
            if args.baseline is not None:
                servers.append(stack.enter_context(baseline_server(tmp / "baseline", args.baseline)))
            cases = [
                stow_case(f"STOW-RS 1 request × {STOW_COUNT} instances", STOW_COUNT, 0, args.repeat),
                stow_case(f"STOW-RS {STOW_COUNT} requests × 1 instance", 1, 100, args.repeat),
            ]
            results = [run_case(case, servers) for case in cases]
            rows = [report.stow_row(result) for result in results]
            version = servers[1].version
    finally:
        reap_children()
        shutil.rmtree(tmp, ignore_errors=True)
    markdown = "\n".join(
        [
            "# STOW-RS: dicomweb-gateway vs Orthanc DICOMweb",
            "",
            *(line for line in report.machine_lines(version, False, load_before) if not line.startswith("- mode")),
            "",
            *report.table(rows, f"{args.repeat} repetitions after one warm-up, servers interleaved"),
            "",
        ]
        + [
            f"- {r.case.label}: baseline ({args.baseline}) {r.median(BASELINE) * 1e3:.1f} ms; "
            f"this checkout / baseline {r.median(GATEWAY) / r.median(BASELINE):.2f}×"
            for r in results
            if args.baseline is not None
        ]
    )
    print(markdown)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(markdown)
    print(f"report written to {args.out} at {time.strftime('%H:%M:%S')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
