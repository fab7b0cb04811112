"""Scale benchmark: QIDO study searches over an index of up to 1,000,000 instances.

Run from the repository root with the test extras installed (PostgreSQL running, as
``scripts/test.sh`` leaves it)::

    .venv/bin/python bench/scale.py                          # 10k, 100k, 1M instances; both indexes
    .venv/bin/python bench/scale.py --sizes 10000 --backends sqlite --repeat 50   # smoke test
    .venv/bin/python bench/scale.py --postgres-url postgresql://user@host/db --out FILE.md

For each index (SQLite file in a temporary directory; PostgreSQL in a fresh schema of its own,
dropped afterwards) and each size, synthetic studies of 100 instances each (4 series × 25: CT,
MR, PT, SR; realistic DICOM JSON of ~1.3 KB per instance) are bulk-loaded through the adapter's
own connection (``load``: one transaction of ``executemany`` on SQLite, ``COPY`` on PostgreSQL),
the planner statistics refreshed, and then each query is timed ``--repeat`` times with varying
values, through the QIDO service exactly as the HTTP endpoint calls it (parse, index search,
DICOM JSON rows with RetrieveURLs; no HTTP): p50 and p95 in milliseconds. The markdown table goes
to stdout and ``--out``; ``--explain`` also prints each query's plan.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import orjson

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make ``gateway`` importable from a checkout
    sys.path.insert(0, str(ROOT))

from gateway.adapters.postgres_index import PostgresIndex  # noqa: E402
from gateway.adapters.sqlite_index import SqliteIndex  # noqa: E402
from gateway.dicom.query import parse_qido  # noqa: E402
from gateway.ports import InstanceRecord, PixelDescription  # noqa: E402
from gateway.services import qido  # noqa: E402

UID_ROOT = "1.2.826.0.1.3680043.8.498.77"
INSTANCES_PER_STUDY = 100
SERIES = (("CT", "1.2.840.10008.5.1.4.1.1.2"), ("MR", "1.2.840.10008.5.1.4.1.1.4"),
          ("PT", "1.2.840.10008.5.1.4.1.1.128"), ("SR", "1.2.840.10008.5.1.4.1.1.88.22"))  # fmt: skip
SURNAMES = [
    f"{a}{b}{c}"
    for a in ("Al", "Be", "Ca", "Do", "Er", "Fa", "Go", "Ha", "Iv", "Jo", "Ka", "Lu", "Mo", "Ne", "Or")
    for b in ("ber", "dan", "fel", "gor", "kin", "lam", "mor", "nes", "per", "ros")
    for c in ("", "son", "ski", "ez")
]  # 600 surnames: a 3-letter prefix matches 1/15 of the patients, a 5-letter one 1/150
GIVEN = ["Anna", "Ben", "Chloe", "David", "Eva", "Felix", "Greta", "Hugo", "Ines", "Jonas", "Karl", "Lea"]
DESCRIPTIONS = ["CT CHEST", "CT ABDOMEN", "MR BRAIN", "PET-CT WHOLE BODY", "CT HEAD", "MR SPINE"]
DAYS = 3650  # studies spread over ten years
BASE_URL = "https://gateway.example.org/dicomweb"
FRAMES = (((1000, 524288),),)
PIXEL = PixelDescription(512, 512, 1, 16, 12, 0, "MONOCHROME2", 0, 1)
OHIF_LIST = [("limit", "101"), ("offset", "0"), ("fuzzymatching", "false"), ("includefield", "00081030,00080060")]


def _element(vr: str, *values: Any) -> dict[str, Any]:
    return {"vr": vr, "Value": list(values)}


def _date(day: int) -> str:
    return time.strftime("%Y%m%d", time.gmtime(1420070400 + day * 86400))  # from 2015-01-01


def study_uid(n: int) -> str:
    return f"{UID_ROOT}.{n + 1}"


def study_date(n: int) -> str:
    return _date((n * 7919) % DAYS)


def patient_name(n: int) -> str:
    return f"{SURNAMES[(n * 31) % len(SURNAMES)]}^{GIVEN[n % len(GIVEN)]}"


def synthetic_records(
    studies: int, *, first: int = 0, per_series: int = INSTANCES_PER_STUDY // len(SERIES)
) -> Iterator[InstanceRecord]:
    """``studies`` synthetic studies of 4 series of ``per_series`` instances (deterministic)."""
    for n in range(first, first + studies):
        uid = study_uid(n)
        study = {
            "00080020": _element("DA", study_date(n)),
            "00080030": _element("TM", f"{(n * 37) % 24:02d}{(n * 11) % 60:02d}00"),
            "00080050": _element("SH", f"A{n:09d}"),
            "00080090": _element("PN", {"Alphabetic": "Referring^Doctor"}),
            "00081030": _element("LO", DESCRIPTIONS[n % len(DESCRIPTIONS)]),
            "00100010": _element("PN", {"Alphabetic": patient_name(n)}),
            "00100020": _element("LO", f"P{n // 3:08d}"),
            "00100030": _element("DA", _date(-((n * 13) % 25000) - 1000)),
            "00100040": _element("CS", "FM"[n % 2]),
            "0020000D": _element("UI", uid),
            "00200010": _element("SH", str(n % 10000)),
        }
        for s, (modality, sop_class) in enumerate(SERIES, start=1):
            series_uid = f"{uid}.{s}"
            series = {
                "00080060": _element("CS", modality),
                "0008103E": _element("LO", f"{modality} series {s}"),
                "00180015": _element("CS", "CHEST"),
                "0020000E": _element("UI", series_uid),
                "00200011": _element("IS", s),
            }
            base = {
                **study,
                **series,
                "00080016": _element("UI", sop_class),
                "00080008": _element("CS", "ORIGINAL", "PRIMARY", "AXIAL"),
                "00200037": _element("DS", 1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
                "00280010": _element("US", 512),
                "00280011": _element("US", 512),
                "00280030": _element("DS", 0.7, 0.7),
                "00280100": _element("US", 16),
                "00280101": _element("US", 12),
                "00281050": _element("DS", 40.0),
                "00281051": _element("DS", 400.0),
            }
            for i in range(1, per_series + 1):
                sop = f"{series_uid}.{i}"
                meta = {
                    **base,
                    "00080018": {"vr": "UI", "Value": [sop]},
                    "00200013": {"vr": "IS", "Value": [i]},
                    "00200032": {"vr": "DS", "Value": [-250.0, -250.0, float(i)]},
                    "7FE00010": {"vr": "OW", "BulkDataURI": f"studies/{uid}/series/{series_uid}/instances/{sop}"},
                }
                yield InstanceRecord(
                    study_uid=uid,
                    series_uid=series_uid,
                    sop_uid=sop,
                    sop_class_uid=sop_class,
                    transfer_syntax="1.2.840.10008.1.2.1",
                    size=525_000,
                    sha256=hashlib.sha256(sop.encode()).hexdigest(),
                    origin="stow",
                    metadata=orjson.dumps(meta, option=orjson.OPT_SORT_KEYS),
                    frames=FRAMES,
                    pixel=PIXEL,
                    stored_at=1_700_000_000.0 + n,
                )


# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Query:
    name: str
    params: Callable[[random.Random, int], list[tuple[str, str]]]  # (rng, number of studies) -> params


QUERIES = [
    Query(
        "PatientName prefix (5 letters + `*`)",
        lambda rng, n: [("PatientName", patient_name(rng.randrange(n))[:5] + "*")],
    ),
    Query(
        "StudyDate range (one month)",
        lambda rng, n: [("StudyDate", f"{(d := study_date(rng.randrange(n)))[:6]}01-{d[:6]}31")],
    ),
    Query("StudyInstanceUID", lambda rng, n: [("StudyInstanceUID", study_uid(rng.randrange(n)))]),
    Query("OHIF study list (101 rows)", lambda rng, n: list(OHIF_LIST)),
    Query("OHIF list, page 5 (offset 404)", lambda rng, n: [*OHIF_LIST[:1], ("offset", "404"), *OHIF_LIST[2:]]),
]


@dataclass(frozen=True)
class Measured:
    backend: str
    instances: int
    load_seconds: float
    query: str
    p50_ms: float
    p95_ms: float
    rows: float  # mean rows per answer


async def measure_backend(
    backend: str, index: Any, instances: int, *, repeat: int, explain: bool, out: Callable[[str], None]
) -> list[Measured]:
    studies = instances // INSTANCES_PER_STUDY
    started = time.perf_counter()
    loaded = await index.load(synthetic_records(studies))
    await index.analyze()
    load_seconds = time.perf_counter() - started
    assert loaded == studies * INSTANCES_PER_STUDY, loaded
    out(f"# {backend}: {loaded} instances loaded in {load_seconds:.1f} s")
    results: list[Measured] = []
    rng = random.Random(1)
    for q in QUERIES:
        if explain:
            plan = await index.explain(parse_qido("study", q.params(rng, studies)))
            out(f"## {backend} {instances} {q.name}\n{plan}")
        timings: list[float] = []
        rows = 0
        for i in range(repeat + repeat // 10):
            query = parse_qido("study", q.params(rng, studies))
            t0 = time.perf_counter()
            result = await qido.search(index, query, base_url=BASE_URL)
            elapsed = time.perf_counter() - t0
            if i >= repeat // 10:  # the first tenth warms caches up
                timings.append(elapsed * 1000)
                rows += len(result.rows)
        q50, q95 = _percentiles(timings)
        results.append(Measured(backend, instances, load_seconds, q.name, q50, q95, rows / len(timings)))
        mean_rows = rows / len(timings)
        out(f"{backend:8} {instances:>9} {q.name:34} p50 {q50:7.2f} ms  p95 {q95:7.2f} ms  rows {mean_rows:.0f}")
    return results


def _percentiles(values: list[float]) -> tuple[float, float]:
    cuts = statistics.quantiles(values, n=20, method="inclusive")
    return statistics.median(values), cuts[18]


async def run(args: argparse.Namespace, out: Callable[[str], None]) -> list[Measured]:
    results: list[Measured] = []
    for size in args.sizes:
        for backend in args.backends:
            with tempfile.TemporaryDirectory(prefix="gateway-scale-") as tmp:
                index, cleanup = _open(backend, args, Path(tmp), size)
                try:
                    results += await measure_backend(
                        backend, index, size, repeat=args.repeat, explain=args.explain, out=out
                    )
                finally:
                    await index.aclose()
                    await cleanup()
    return results


def _open(backend: str, args: argparse.Namespace, tmp: Path, size: int) -> tuple[Any, Callable[[], Awaitable[None]]]:
    if backend == "sqlite":

        async def nothing() -> None:
            return None

        return SqliteIndex(tmp / "index.sqlite3"), nothing
    import psycopg

    schema = f"bench_scale_{size}_{uuid.uuid4().hex[:8]}"

    async def drop() -> None:
        async with await psycopg.AsyncConnection.connect(args.postgres_url, autocommit=True) as conn:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')  # type: ignore[arg-type]

    sep = "&" if "?" in args.postgres_url else "?"
    return PostgresIndex(f"{args.postgres_url}{sep}schema={schema}"), drop


def table(results: Sequence[Measured]) -> str:
    """The docs/benchmarks.md table: one row per query and size, p50 / p95 (rows answered) per backend."""
    sizes = sorted({r.instances for r in results})
    backends = sorted({r.backend for r in results}, key=["sqlite", "postgres"].index)
    names = {"sqlite": "SQLite", "postgres": "PostgreSQL"}
    head = ["query", "instances"] + [f"{names[b]} p50 / p95 ms (rows)" for b in backends]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    by_key = {(r.query, r.backend, r.instances): r for r in results}
    for q in QUERIES:
        for s in sizes:
            cells = [q.name, _size(s)]
            for b in backends:
                r = by_key.get((q.name, b, s))
                cells.append("–" if r is None else f"{r.p50_ms:.1f} / {r.p95_ms:.1f} ({r.rows:.0f})")
            lines.append("| " + " | ".join(cells) + " |")
    loads = [
        f"{names[b]} {_size(s)}: {by_key[(QUERIES[0].name, b, s)].load_seconds:.0f} s" for b in backends for s in sizes
    ]
    lines.append("")
    lines.append("Bulk load (incl. ANALYZE): " + ", ".join(loads) + ".")
    return "\n".join(lines)


def _size(n: int) -> str:
    return f"{n // 1_000_000}M" if n >= 1_000_000 and n % 1_000_000 == 0 else f"{n // 1000}k"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000,1000000", help="instances per run, comma-separated")
    parser.add_argument("--backends", default="sqlite,postgres", help="sqlite and/or postgres")
    parser.add_argument("--repeat", type=int, default=200, help="timed repetitions per query")
    parser.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--explain", action="store_true", help="print each query's plan")
    parser.add_argument("--out", type=Path, help="also write the markdown table here")
    args = parser.parse_args(argv)
    args.sizes = [int(s) for s in args.sizes.split(",")]
    args.backends = [b.strip() for b in args.backends.split(",")]
    if any(s % INSTANCES_PER_STUDY for s in args.sizes) or not set(args.backends) <= {"sqlite", "postgres"}:
        parser.error("sizes must be multiples of 100; backends sqlite and/or postgres")

    def out(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    results = anyio.run(run, args, out)
    markdown = table(results)
    print(markdown)
    if args.out:
        args.out.write_text(markdown + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
