"""Peak resident memory of ``dicomweb-gateway serve`` while DCMTK's ``storescu`` pushes one large
multi-frame instance (about 300 MB) to its DIMSE front door.

    .venv/bin/python bench/dimse_memory.py                 # 1200 frames of 512x512, 8 bit
    .venv/bin/python bench/dimse_memory.py --frames 400

The gateway is started as ``python -m gateway serve`` from the current directory, so running
this script from another checkout's root measures that checkout's code (e.g. the one before a
change). Prints the gateway's RSS at rest, its peak during the push, and the growth.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make ``bench`` and ``tests`` importable
    sys.path.insert(0, str(ROOT))

from bench.memory import RssSampler  # noqa: E402
from bench.report import load_average  # noqa: E402
from tests import factory  # noqa: E402
from tests.fixtures_gateway import start_gateway, stop_gateway  # noqa: E402
from tests.peers.ports import free_port  # noqa: E402

GATEWAY_AET, CLIENT_AET = "BENCH_GW", "BENCH_SCU"
DCMTK = Path("/usr/bin")  # pynetdicom installs its own *scu scripts that shadow DCMTK's on PATH
MB = 1 << 20


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=1200, help="frames of 512x512 8-bit pixels (256 KiB each)")
    args = parser.parse_args(argv)
    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="bench-dimse-memory-") as tmp_name:
        tmp = Path(tmp_name)
        instance = factory.write(
            tmp / "large.dcm", factory.multiframe_xa(seed=1, frames=args.frames, rows=512, cols=512)
        )
        size = instance.stat().st_size
        port = free_port()
        (tmp / "gateway.toml").write_text(
            f'ae_title = "{GATEWAY_AET}"\nscp_port = {port}\nscp_host = "127.0.0.1"\n'
            f'[[dimse_clients]]\nname = "bench"\nae_title = "{CLIENT_AET}"\nscopes = ["write"]\n'
        )
        gw = start_gateway(tmp, extra_args=("--config", str(tmp / "gateway.toml"), "--log-level", "warning"))
        try:
            time.sleep(1)  # let start-up allocations settle before the baseline
            argv_ = [str(DCMTK / "storescu"), "-aet", CLIENT_AET, "-aec", GATEWAY_AET, "-to", "600"]
            with RssSampler(gw.process.pid) as rss:
                started = time.perf_counter()
                done = subprocess.run(
                    [*argv_, "127.0.0.1", str(port), str(instance)],
                    capture_output=True,
                    text=True,
                    env={**os.environ, "TCP_NODELAY": "1"},
                    timeout=900,
                    check=False,
                )
                seconds = time.perf_counter() - started
        finally:
            stop_gateway(gw)
    if done.returncode != 0:
        print(f"storescu exited {done.returncode}: {(done.stderr or done.stdout)[-400:]}", file=sys.stderr)
        return 1
    print(f"gateway source: {Path.cwd()}  load average before: {load_before}")
    print(f"instance: {size / MB:.0f} MiB ({args.frames} frames), stored in {seconds:.1f} s")
    growth = (rss.peak - rss.baseline) / MB
    print(f"RSS at rest {rss.baseline / MB:.0f} MiB, peak {rss.peak / MB:.0f} MiB, growth {growth:.0f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
