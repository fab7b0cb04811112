"""The rate of ``dicomweb-gateway import`` against STOW-RS of the same files (issue #18).

    .venv/bin/python bench/import_rate.py                 # 200 CT slices of 512x512
    .venv/bin/python bench/import_rate.py --slices 500 --jobs 4 --s3

Each way stores the same files into a fresh embedded store and index (file store + SQLite):

* ``import`` from a folder (the command, timed as a whole: start-up, listing, storing);
* ``import`` from an S3 prefix on a local SeaweedFS (``--s3``);
* STOW-RS to a running gateway, 50 instances per request (as ``bench/run.py`` loads data), one
  request after the other.

Prints instances/s and MB/s for each. The gateway and the command run from the current
directory's code.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make ``bench`` and ``tests`` importable
    sys.path.insert(0, str(ROOT))

from bench.report import load_average  # noqa: E402
from bench.servers import LOAD_BATCH, Server, new_client, stow  # noqa: E402
from tests import factory  # noqa: E402
from tests.fixtures_gateway import start_gateway, stop_gateway  # noqa: E402
from tests.peers.seaweed import run_seaweed, s3_client  # noqa: E402


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("DICOMWEB_GATEWAY_", "AWS_"))}


def timed_import(source: str, data: Path, jobs: int | None, env: dict[str, str], *extra: str) -> tuple[float, float]:
    """(the whole command's time, the storing time its summary line reports: without the
    interpreter's start-up, which STOW to a running server does not pay either)."""
    argv = [sys.executable, "-m", "gateway", "import", source, "--data", str(data), "--quiet"]
    argv += ["--report", str(data.parent / f"{data.name}-report.jsonl"), *extra]
    if jobs is not None:
        argv += ["--jobs", str(jobs)]
    began = time.perf_counter()
    done = subprocess.run(argv, env=env, check=True, capture_output=True, text=True)
    whole = time.perf_counter() - began
    match = re.search(r"read in ([0-9.]+) s", done.stderr)
    if match is None:
        raise RuntimeError(f"no summary line from the import: {done.stderr}")
    return whole, float(match.group(1))


def timed_stow(files: list[Path], tmp: Path) -> float:
    tmp.mkdir(parents=True, exist_ok=True)
    gw = start_gateway(tmp)
    try:
        with new_client() as client:
            server = Server("gateway", gw.url, gw.process.pid, client)
            began = time.perf_counter()
            for start in range(0, len(files), LOAD_BATCH):
                stow(server, [f.read_bytes() for f in files[start : start + LOAD_BATCH]])
            return time.perf_counter() - began
    finally:
        stop_gateway(gw)


def line(what: str, seconds: float, count: int, size: int) -> str:
    return f"| {what} | {seconds:.2f} s | {count / seconds:.0f} inst/s | {size / seconds / 1e6:.1f} MB/s |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--jobs", type=int, help="import --jobs (default: the command's, the number of CPUs)")
    parser.add_argument("--s3", action="store_true", help="also import the files from a SeaweedFS bucket")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-import-") as t:
        tmp = Path(t)
        folder = tmp / "share"
        folder.mkdir()
        series = factory.ct_series(args.slices, 512, 512, seed=4242, study_description="BENCH IMPORT")
        files = [factory.write(folder / f"IM{i:05d}", d) for i, d in enumerate(series)]
        size = sum(len(d) for d in series)
        print(f"{args.slices} CT slices, {size / 1e6:.0f} MB; load average {load_average()}")
        print("| way in | time | instances/s | MB/s |")
        print("|---|---:|---:|---:|")
        whole, took = timed_import(str(folder), tmp / "import-folder", args.jobs, clean_env())
        jobs = args.jobs or os.cpu_count()
        print(line(f"import from a folder (--jobs {jobs}), command as a whole", whole, len(files), size))
        print(line(f"import from a folder (--jobs {jobs}), its own summary", took, len(files), size))
        if args.s3:
            with run_seaweed(tmp / "seaweed") as peer:
                client = s3_client(peer)
                client.create_bucket(Bucket="bench")
                for f in files:
                    client.put_object(Bucket="bench", Key=f"share/{f.name}", Body=f.read_bytes())
                env = clean_env() | {
                    "AWS_ACCESS_KEY_ID": peer.access_key,
                    "AWS_SECRET_ACCESS_KEY": peer.secret_key,
                    "AWS_REGION": peer.region,
                }
                whole, took = timed_import(
                    "s3://bench/share/", tmp / "import-s3", args.jobs, env, "--s3-endpoint-url", peer.endpoint_url
                )
                print(line("import from S3 (SeaweedFS), command as a whole", whole, len(files), size))
                print(line("import from S3 (SeaweedFS), its own summary", took, len(files), size))
        took = timed_stow(files, tmp / "stow")
        print(line(f"STOW-RS to a running gateway, {LOAD_BATCH} instances per request", took, len(files), size))


if __name__ == "__main__":
    main()
