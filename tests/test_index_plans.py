"""QIDO searches use real indexes, in both databases: the plans of the queries viewers send most,
over a few thousand synthetic studies with fresh planner statistics (bench/scale.py has the
same data at up to 1,000,000 instances, with timings)."""

from __future__ import annotations

import sqlite3

import psycopg
import pytest

from bench.scale import OHIF_LIST, patient_name, study_date, study_uid, synthetic_records
from gateway.adapters import postgres_index, sql_retention, sqlite_index
from gateway.adapters.postgres_index import parse_url
from gateway.dicom.query import parse_qido
from gateway.ports import RetentionMatch
from tests.fixtures_index import Backend

STUDIES = 3000

NAME = patient_name(7)
MONTH = study_date(5)[:6]
STUDY, SERIES = study_uid(5), study_uid(5) + ".2"
PRIMARY_KEY = {"sqlite": "sqlite_autoindex_studies_1", "postgres": "studies_pkey"}

# name -> (level, params, path UIDs, the index each database must use)
CASES = {
    "patient-name-prefix": ("study", [("PatientName", NAME[:4] + "*")], {}, "studies_by_patient_name"),
    "ohif-patient-name": ("study", [*OHIF_LIST, ("PatientName", NAME[:5] + "*")], {}, "studies_by_patient_name"),
    "patient-id": ("study", [("PatientID", "P00000123")], {}, "studies_by_patient_id"),
    "accession": ("study", [("AccessionNumber", "A000000042")], {}, "studies_by_accession"),
    "date-range": ("study", [("StudyDate", f"{MONTH}01-{MONTH}31")], {}, "studies_by_date"),
    "study-uid": ("study", [("StudyInstanceUID", study_uid(99))], {}, PRIMARY_KEY),
    "ohif-list": ("study", OHIF_LIST, {}, "studies_by_date"),
    "ohif-page-3": ("study", [*OHIF_LIST[:1], ("offset", "202"), *OHIF_LIST[2:]], {}, "studies_by_date"),
    "series-of-study": ("series", [], {"study": STUDY}, "series_by_number"),
    "instances-of-series": ("instance", [], {"study": STUDY, "series": SERIES}, "instances_by_series"),
}


@pytest.mark.anyio
async def test_qido_queries_use_indexes(backend: Backend) -> None:
    index = backend.open()
    try:
        assert await index.load(synthetic_records(STUDIES, per_series=1)) == STUDIES * 4  # type: ignore[attr-defined]
        await index.analyze()  # type: ignore[attr-defined]
        wrong = {}
        for name, (level, params, path, expected) in CASES.items():
            wanted = expected if isinstance(expected, str) else expected[backend.name]
            plan = await index.explain(parse_qido(level, params, **path))  # type: ignore[attr-defined]
            scans_all = "Seq Scan on studies" in plan or "SCAN st\n" in plan + "\n"
            if wanted not in plan or scans_all:
                wrong[name] = plan
        assert wrong == {}
        # The PACS cache's retention rule (swept every minute at most) walks its partial index,
        # not every row.
        plan = _explain_expired(backend)
        assert "instances_expiry" in plan, plan
    finally:
        await index.aclose()


def _explain_expired(backend: Backend) -> str:
    cached = RetentionMatch(origin="pacs:")  # the rule pacs_cache_max_age stands for
    if backend.name == "sqlite":
        sql, params = sql_retention.candidates_sql("?", cached, 1e12, 500, cached_copies=sqlite_index.CACHED_COPIES)
        assert backend.path is not None
        with sqlite3.connect(backend.path) as conn:
            rows = conn.execute("EXPLAIN QUERY PLAN " + sql, params).fetchall()
        conn.close()
        return "\n".join(str(row[-1]) for row in rows)
    assert backend.url is not None
    conninfo, schema = parse_url(backend.url)[:2]
    sql, params = sql_retention.candidates_sql("%s", cached, 1e12, 500, cached_copies=postgres_index.CACHED_COPIES)
    with psycopg.connect(conninfo, autocommit=True, options=f"-c search_path={schema}") as conn:
        rows = conn.execute("EXPLAIN " + sql, params).fetchall()
    return "\n".join(str(row[0]) for row in rows)
