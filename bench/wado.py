"""WADO-RS series only: the series row of ``bench/run.py`` against the gateway and Orthanc, quickly.

    .venv/bin/python bench/wado.py                  # 15 repetitions, ~1 minute
    .venv/bin/python bench/wado.py --baseline ../main   # also the gateway of another checkout

The same case as ``bench/run.py`` (the 300-slice CT series, multipart/related application/dicom,
``transfer-syntax=*``), interleaved between the servers within each repetition so that the
machine's load weighs on all alike, medians reported. For trying a change to the retrieve path
without the rest of the benchmark (issue #14); the README's figures come from ``bench/run.py``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make ``bench`` and ``tests`` importable
    sys.path.insert(0, str(ROOT))

from bench import report  # noqa: E402
from bench.dataset import generate  # noqa: E402
from bench.measure import Case, get_stream, run_case  # noqa: E402
from bench.memory import WADO_AS_STORED  # noqa: E402
from bench.run import reap_children  # noqa: E402
from bench.servers import GATEWAY, gateway_server, load, orthanc_server  # noqa: E402
from bench.stow import BASELINE, baseline_server  # noqa: E402


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=15, help="timed repetitions")
    parser.add_argument("--slices", type=int, default=300, help="slices of the CT series")
    parser.add_argument("--baseline", type=Path, help="a checkout whose gateway runs beside this one")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "wado.md", help="markdown report")
    args = parser.parse_args(argv)
    load_before = report.load_average()
    tmp = Path(tempfile.mkdtemp(prefix="dicomweb-bench-wado-"))
    try:
        data = generate(tmp / "data", args.slices)
        with ExitStack() as stack:
            servers = [
                stack.enter_context(gateway_server(tmp / "gateway")),
                stack.enter_context(orthanc_server(tmp / "orthanc")),
            ]
            if args.baseline is not None:
                servers.append(stack.enter_context(baseline_server(tmp / "baseline", args.baseline)))
            for server in servers:
                load(server, data.files)
            series = f"/studies/{data.study_uid}/series/{data.series_uid}"
            label = "WADO-RS series, multipart, transfer-syntax=*"
            case = Case(label, lambda s, _: get_stream(s, series, WADO_AS_STORED), args.repeat)
            result = run_case(case, servers)
            rows = report.wado_rows(result)
            version = servers[1].version
    finally:
        reap_children()
        shutil.rmtree(tmp, ignore_errors=True)
    lines = report.machine_lines(version, False, load_before)
    markdown = "\n".join(
        [
            "# WADO-RS series: dicomweb-gateway vs Orthanc DICOMweb",
            "",
            *(line for line in lines if not line.startswith("- mode")),
            "",
            *report.table(rows, f"{args.repeat} repetitions after one warm-up, servers interleaved"),
            "",
        ]
        + (
            [
                f"- baseline ({args.baseline}) {result.median(BASELINE) * 1e3:.1f} ms; "
                f"this checkout / baseline {result.median(GATEWAY) / result.median(BASELINE):.2f}×"
            ]
            if args.baseline is not None
            else []
        )
    )
    print(markdown)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(markdown)
    print(f"report written to {args.out} at {time.strftime('%H:%M:%S')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
