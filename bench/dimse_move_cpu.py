"""CPU time of the gateway process per instance of a C-MOVE (``movescu`` of a CT series to DCMTK's
``storescp``), read from ``/proc/PID/stat`` before and after each move.

On a shared machine the wall time of a move follows the load; the CPU time the gateway spends
on it moves much less, so a change to the sub-operation path shows there first.

    .venv/bin/python bench/dimse_move_cpu.py                  # 100 slices, 15 moves
    .venv/bin/python bench/dimse_move_cpu.py --slices 1       # the fixed cost of a move

The clock is the kernel's tick (10 ms), so a figure per instance is only as fine as 10 ms over
the number of slices; the median of the moves smooths it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make ``bench`` and ``tests`` importable
    sys.path.insert(0, str(ROOT))

import pydicom  # noqa: E402

from bench.dimse import GATEWAY_AET, gateway, move_series, received, store, storescp  # noqa: E402
from bench.report import load_average  # noqa: E402
from tests import factory  # noqa: E402
from tests.fixtures_gateway import RunningGateway  # noqa: E402


def cpu_ticks(pid: int) -> tuple[int, int]:
    """User and system time of process ``pid``, in clock ticks (proc(5): fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=100)
    parser.add_argument("--moves", type=int, default=15)
    args = parser.parse_args(argv)
    tick_ms = 1000 / os.sysconf("SC_CLK_TCK")
    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="bench-move-cpu-") as tmp:
        arrived = Path(tmp) / "storescp"
        running: list[RunningGateway] = []
        with storescp(arrived) as scp_port, gateway(Path(tmp) / "gw", scp_port, running) as port:
            pid = running[0].process.pid
            folder = Path(tmp) / "series"
            folder.mkdir()
            series = factory.ct_series(args.slices, 512, 512, seed=7700, study_description="BENCH MOVE CPU")
            files = [factory.write(folder / f"{i:05d}.dcm", data) for i, data in enumerate(series)]
            first = pydicom.dcmread(files[0], stop_before_pixels=True)
            study, series_uid = str(first.StudyInstanceUID), str(first.SeriesInstanceUID)
            store(files, GATEWAY_AET, port)
            move_series(GATEWAY_AET, port, study, series_uid)  # warm up
            received(arrived)
            per_instance: list[float] = []
            user = system = 0
            walls: list[float] = []
            for _ in range(args.moves):
                before = cpu_ticks(pid)
                walls.append(move_series(GATEWAY_AET, port, study, series_uid))
                after = cpu_ticks(pid)
                count = received(arrived)
                if count != args.slices:
                    raise RuntimeError(f"storescp received {count} of {args.slices} instances")
                user += after[0] - before[0]
                system += after[1] - before[1]
                per_instance.append((sum(after) - sum(before)) * tick_ms / args.slices)
    instances = args.slices * args.moves
    print(
        f"movescu of {args.slices} CT slices, {args.moves} moves; load average (1 min) {load_before} / {load_average()}"
    )
    print(f"gateway CPU per instance: median {statistics.median(per_instance):.2f} ms", end="")
    print(f" (user {user * tick_ms / instances:.2f}, system {system * tick_ms / instances:.2f})")
    print(f"wall per move: median {statistics.median(walls) * 1000:.0f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
