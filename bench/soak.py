"""Soak test: mixed QIDO/WADO/STOW load at a fixed rate against a real gateway for a long time.

Run from the repository root with the test extras installed::

    .venv/bin/python bench/soak.py                            # 30 minutes at 40 requests/s
    .venv/bin/python bench/soak.py --minutes 2 --rate 15      # the short version (tests/test_soak.py)
    .venv/bin/python bench/soak.py --store file --index postgres --out soak.md --samples-csv soak.csv

One run starts the gateway (``dicomweb-gateway serve``) on a private SeaweedFS S3 and SQLite (or
the embedded file store; or a fresh database on the PostgreSQL server at ``--postgres-server``,
dropped afterwards), seeds small studies by STOW and primes it with ``--prime-seconds`` of the
same load (its pools fill before the idle sample that the one after the run is compared with).
Then the load generator (``bench/soak_load.py``) runs in a second process, open loop at
``--rate`` requests per second: ~50 % QIDO (studies, series, instances; filters, includefield,
paging), ~35 % WADO (instance, series, metadata, frames, rendered, thumbnail), ~15 % STOW (one or
several new instances, identical duplicates, and conflicting ones, which must be refused with
409). Meanwhile this process samples the gateway's RSS, open file descriptors and threads. At
the end every acknowledged instance is read back and compared byte for byte. The markdown report
goes to stdout (and ``--out``); the exit status is 1 when a criterion fails
(``bench/soak_report.py`` explains them), 2 on a set-up error.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
import orjson
import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make ``bench`` and ``tests`` importable
    sys.path.insert(0, str(ROOT))

from bench.dataset import multipart_body  # noqa: E402
from bench.soak_data import Acknowledged, by_series, multipart_parts, new_run_root, seed_data, series_mismatch  # noqa: E402
from bench.soak_load import AS_STORED, Plan  # noqa: E402
from bench.soak_report import (  # noqa: E402
    Criteria,
    Figures,
    ProcessSample,
    Sampler,
    evaluate,
    load_average,
    render,
    sample_tree,
    samples_csv,
)
from tests.fixtures_gateway import RunningGateway, start_gateway, stop_gateway  # noqa: E402
from tests.fixtures_s3 import S3Bucket  # noqa: E402
from tests.peers.seaweed import run_seaweed, s3_client  # noqa: E402

DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"
SEED_BATCH = 10
SETTLE_SECONDS = 3.0  # for closed connections to be closed on the server side too
VERIFY_THREADS = 4
EXTRA_WAIT = 180.0  # beyond the planned duration, for answers still owed (request timeout 60 s)


@dataclass(frozen=True)
class Options:
    minutes: float = 30.0
    rate: float = 40.0
    store: str = "s3"  # or "file"
    index: str = "sqlite"  # or "postgres"
    postgres_server: str = DEFAULT_POSTGRES
    sample_seconds: float = 2.0
    prime_seconds: float = 20.0
    connections: int = 64
    seed: int = 7
    criteria: Criteria = field(default_factory=Criteria)
    workdir: Path | None = None  # default: a temporary directory, removed afterwards
    gateway_env: tuple[tuple[str, str], ...] = ()  # extra environment of the gateway process


@dataclass(frozen=True)
class SoakResult:
    figures: Figures
    markdown: str
    samples_csv: str

    @property
    def ok(self) -> bool:
        return self.figures.ok


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextmanager
def fresh_database(server: str) -> Iterator[str]:
    """A new database on ``server`` for this run's index; dropped afterwards."""
    name = f"soak_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(server, autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield str(httpx.URL(server).copy_with(path="/" + name))
    finally:
        with psycopg.connect(server, autocommit=True, connect_timeout=5) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def start(stack: ExitStack, tmp: Path, options: Options) -> RunningGateway:
    """The peers the options ask for, then the gateway on them; all stopped by ``stack``."""
    extra: list[str] = []
    s3 = None
    if options.store == "s3":
        peer = stack.enter_context(run_seaweed(tmp / "seaweed"))
        bucket = f"soak-{uuid.uuid4().hex[:16]}"
        client = s3_client(peer)
        client.create_bucket(Bucket=bucket)
        client.close()
        s3 = S3Bucket(
            endpoint_url=peer.endpoint_url,
            access_key=peer.access_key,
            secret_key=peer.secret_key,
            region=peer.region,
            bucket=bucket,
        )
    if options.index == "postgres":
        extra += ["--index-url", stack.enter_context(fresh_database(options.postgres_server))]
    (tmp / "gateway").mkdir(parents=True, exist_ok=True)
    env = dict(options.gateway_env)
    gw = start_gateway(tmp / "gateway", store_kind=options.store, s3=s3, extra_args=tuple(extra), env=env)
    stack.callback(stop_gateway, gw)
    return gw


def seed(gw: RunningGateway, files: Sequence[bytes]) -> None:
    with httpx.Client(timeout=120) as client:
        for i in range(0, len(files), SEED_BATCH):
            body, content_type = multipart_body(files[i : i + SEED_BATCH])
            response = client.post(
                gw.url + "/studies",
                content=body,
                headers={"Content-Type": content_type, "Accept": "application/dicom+json"},
            )
            if response.status_code != 200:
                raise RuntimeError(f"seeding: STOW answered {response.status_code}: {response.text[:300]}")


def idle_sample(gw: RunningGateway) -> ProcessSample:
    """The gateway with no client connected (after the server side closed their connections too)."""
    time.sleep(SETTLE_SECONDS)
    port = httpx.URL(gw.url).port
    assert port is not None
    sample = sample_tree(gw.process.pid, idle_port=port)
    if sample is None:
        raise RuntimeError("the gateway process is gone")
    return sample


def run_load(
    tmp: Path, name: str, plan: Plan, gw: RunningGateway, interval: float
) -> tuple[dict[str, Any], list[ProcessSample]]:
    """The load generator in a second process, with this process sampling the gateway meanwhile."""
    plan_path, result_path = tmp / f"{name}-plan.json", tmp / f"{name}-result.json"
    plan.dump(plan_path)
    sampler = Sampler(gw.process.pid, interval, metrics_url=str(httpx.URL(gw.url).copy_with(path="/metrics")))
    sampler.start()
    try:
        command = [sys.executable, "-m", "bench.soak_load", str(plan_path), str(result_path)]
        process = subprocess.Popen(command, cwd=ROOT)
        try:
            returncode = process.wait(timeout=plan.seconds + EXTRA_WAIT)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"the load process did not finish within {plan.seconds + EXTRA_WAIT:.0f} s") from None
        finally:
            if process.poll() is None:  # timed out, or this process is being stopped
                process.kill()
                process.wait()
    finally:
        sampler.stop()
    if returncode != 0:
        raise RuntimeError(f"the load process exited with {returncode}")
    return orjson.loads(result_path.read_bytes()), sampler.samples


def verify(gw: RunningGateway, acknowledged: list[Acknowledged]) -> tuple[int, list[str]]:
    """Read every acknowledged instance back, one series retrieve each, and compare the bytes."""
    expected = by_series(acknowledged)

    def check(client: httpx.Client, key: tuple[str, str], sops: dict[str, str]) -> tuple[int, str | None]:
        study, series = key
        url = f"{gw.url}/studies/{study}/series/{series}"
        try:
            response = client.get(url, headers={"Accept": AS_STORED, "Accept-Encoding": "identity"})
        except httpx.HTTPError as exc:
            return 0, f"series {series}: {type(exc).__name__}: {exc}"
        if response.status_code != 200:
            return 0, f"series {series}: {response.status_code}"
        problem = series_mismatch(sops, multipart_parts(response.content, response.headers["content-type"]))
        return (0, f"series {series}: {problem}") if problem else (len(sops), None)

    with httpx.Client(timeout=60) as client, ThreadPoolExecutor(VERIFY_THREADS) as pool:
        results = list(pool.map(lambda item: check(client, *item), expected.items()))
    return sum(n for n, _ in results), [p for _, p in results if p]


def spool_leftovers(gw: RunningGateway) -> int:
    spool = gw.data_dir / "spool"
    return sum(1 for p in spool.rglob("*") if p.is_file()) if spool.exists() else 0


def describe(options: Options) -> str:
    store = "SeaweedFS S3" if options.store == "s3" else "embedded file store"
    index = "PostgreSQL (fresh database)" if options.index == "postgres" else "SQLite"
    command = f"bench/soak.py --minutes {options.minutes:g} --rate {options.rate:g} --store {options.store} "
    command += f"--index {options.index}"
    return (
        f"Gateway on {store} + {index}; load from a second process on loopback. "
        f"Command: `.venv/bin/python {command}`; {time.strftime('%Y-%m-%d %H:%M %Z')}."
    )


def run_soak(options: Options) -> SoakResult:
    """One soak run (see the module docstring); raises RuntimeError on a set-up failure."""
    tmp = options.workdir or Path(tempfile.mkdtemp(prefix="dicomweb-soak-"))
    tmp.mkdir(parents=True, exist_ok=True)
    load_before = load_average()
    try:
        with ExitStack() as stack:
            gw = start(stack, tmp, options)
            pid = gw.process.pid
            data = seed_data()
            seed(gw, data.files)
            log(f"gateway {gw.url} (pid {pid}) seeded with {len(data.files)} instances")
            # Priming: the pools (SQLite readers, S3 connections, threads) fill before the idle
            # sample that the one after the run is compared with.
            primer = Plan(
                base=gw.url,
                rate=options.rate,
                seconds=options.prime_seconds,
                run_root=new_run_root(),
                targets=data.targets,
                seed=options.seed + 1,
                connections=options.connections,
            )
            log(f"priming: {primer.rate:g} requests/s for {primer.seconds:.0f} s")
            prime, _ = run_load(tmp, "prime", primer, gw, options.sample_seconds)
            before = idle_sample(gw)
            plan = Plan(
                base=gw.url,
                rate=options.rate,
                seconds=options.minutes * 60,
                run_root=new_run_root(),
                targets=data.targets,
                seed=options.seed,
                connections=options.connections,
            )
            log(f"load: {plan.rate:g} requests/s for {plan.seconds:.0f} s")
            load, samples = run_load(tmp, "load", plan, gw, options.sample_seconds)
            after = idle_sample(gw)
            acknowledged = [Acknowledged(**a) for a in [*prime["acknowledged"], *load["acknowledged"]]]
            log(f"reading back {len(acknowledged)} acknowledged instances")
            verified, problems = verify(gw, acknowledged)
            tracebacks = gw.log().count("Traceback")
            figures = evaluate(
                load,
                samples,
                before,
                after,
                verified=verified,
                verify_problems=problems,
                spool_leftovers=spool_leftovers(gw),
                log_tracebacks=tracebacks,
                criteria=options.criteria,
                prime=prime,
            )
            if tracebacks:
                log(gw.log()[-5000:])
    finally:
        if options.workdir is None:
            shutil.rmtree(tmp, ignore_errors=True)
    markdown = render(
        figures,
        title=f"Soak: {options.minutes:g} min at {options.rate:g} requests/s",
        setup=describe(options),
        load_average=(load_before, load_average()),
    )
    return SoakResult(figures, markdown, samples_csv(samples, float(load["started"])))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="duration of the load (default 30)")
    parser.add_argument("--rate", type=float, default=40.0, help="requests per second, open loop (default 40)")
    parser.add_argument("--store", choices=["s3", "file"], default="s3", help="object store (default: SeaweedFS S3)")
    parser.add_argument("--index", choices=["sqlite", "postgres"], default="sqlite", help="index (default sqlite)")
    parser.add_argument("--postgres-server", default=DEFAULT_POSTGRES, help="server for --index postgres")
    parser.add_argument("--warmup", type=float, default=0.10, help="fraction of the run before RSS is compared")
    parser.add_argument("--max-rss-growth", type=float, default=0.05, help="allowed RSS growth (default 0.05)")
    parser.add_argument("--fd-allowance", type=int, default=4, help="FDs above the earlier maximum still 'flat'")
    parser.add_argument("--prime-seconds", type=float, default=20.0, help="priming load before the run (20)")
    parser.add_argument("--sample-seconds", type=float, default=2.0, help="how often the gateway is sampled")
    parser.add_argument("--seed", type=int, default=7, help="random seed of the request mix")
    parser.add_argument(
        "--gateway-env", action="append", default=[], metavar="NAME=VALUE", help="environment of the gateway"
    )
    parser.add_argument("--out", type=Path, help="also write the markdown report here")
    parser.add_argument("--samples-csv", type=Path, help="write the RSS/FD/thread samples here")
    return parser.parse_args(argv)


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through the clean-up: load process, gateway, peers


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    options = Options(
        minutes=args.minutes,
        rate=args.rate,
        store=args.store,
        index=args.index,
        postgres_server=args.postgres_server,
        sample_seconds=args.sample_seconds,
        prime_seconds=args.prime_seconds,
        seed=args.seed,
        criteria=Criteria(args.warmup, args.max_rss_growth, args.fd_allowance),
        gateway_env=tuple((name, value) for name, _, value in (item.partition("=") for item in args.gateway_env)),
    )
    try:
        result = run_soak(options)
    except (RuntimeError, OSError, httpx.HTTPError, psycopg.Error) as exc:
        log(f"soak: {exc}")
        return 2
    print(result.markdown)
    if args.out:
        args.out.write_text(result.markdown)
    if args.samples_csv:
        args.samples_csv.write_text(result.samples_csv)
    return 0 if result.ok else 1


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
    sys.exit(130)
