"""Crash consistency (issue #7): SIGKILL the gateway 10 times during 1,000 STOWs, then repair.

A real gateway process on a real S3 (SeaweedFS, a fresh bucket) with multipart uploads from
5 MiB, over SQLite and over PostgreSQL. Client threads send single- and multi-instance STOWs,
large instances (6-9 MB, multipart) among them, and duplicates of earlier instances; each
instance a 200/202 response lists in ReferencedSOPSequence is *acknowledged*. Ten times the
gateway is killed with SIGKILL: half of the kills while a multipart upload is in progress, the
other half right after one completed (as seen through the bucket), each right after a new
gateway process, started meanwhile on the same data directory, took over the clients. Half of
the requests cut off are retried once; the others are abandoned.

Afterwards the promise is checked from outside the gateway: every index row has its objects
(boto3 on the bucket, SQL on the index); ``dicomweb-gateway reindex --repair --grace 0`` removes
exactly the orphan objects and the unfinished multipart uploads the kills left, and the spool
holds no file; then every acknowledged instance is served byte-identical (SHA-256) by WADO-RS and
listed by QIDO-RS.
"""

from __future__ import annotations

import hashlib
import random
import re
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import psycopg
import pytest

from gateway.adapters.postgres_index import parse_url
from tests import factory
from tests.fixtures_gateway import RunningGateway, start_gateway, stop_gateway
from tests.fixtures_s3 import S3Bucket
from tests.http_helpers import referenced_sops, split_multipart, stow_body

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

pytestmark = pytest.mark.s3

MiB = 1 << 20
REQUESTS = 1000
KILLS = 10
CLIENTS = 4
STUDIES = 12
PREFIX = "gw/"  # start_gateway's storage URL is s3://{bucket}/gw
AS_STORED = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}
MULTIPART_ENV = {
    "DICOMWEB_GATEWAY_S3__MULTIPART_THRESHOLD": str(5 * MiB),
    "DICOMWEB_GATEWAY_S3__PART_SIZE": str(5 * MiB),
}


# -- the workload ---------------------------------------------------------------------------------


# Instances are made from a few templates by substituting fixed-width UIDs (equal lengths: no
# element length changes). Building 1,600 datasets with pydicom would cost more CPU than the
# gateway spends storing them, on a machine where CPU is what the test is short of.
RUN_ROOT = factory.UID_PREFIX + "7"
SIZES = {"small": 64, "6MB": 1760, "7MB": 1920, "9MB": 2104}  # rows = columns of 16-bit pixels


def run_uid(kind: int, n: int) -> str:
    """A UID of this run: ``kind`` 1 study, 2 series, 3 SOP Instance; all of one length."""
    return f"{RUN_ROOT}.{kind}{n:09d}"


@dataclass(frozen=True)
class Planned:
    """One instance of the workload."""

    study: str
    series: str
    sop: str
    size: str  # a key of SIZES


class Templates:
    """One Part 10 file per size, with placeholder UIDs to substitute."""

    def __init__(self) -> None:
        self._data = {
            size: factory.ct_instance(
                seed=size_index,
                rows=rows,
                cols=rows,
                study_uid=run_uid(1, 0),
                series_uid=run_uid(2, 0),
                sop_uid=run_uid(3, 0),
            )
            for size_index, (size, rows) in enumerate(SIZES.items())
        }

    def instance(self, planned: Planned) -> bytes:
        data = self._data[planned.size]
        for kind, uid in enumerate((planned.study, planned.series, planned.sop), start=1):
            data = data.replace(run_uid(kind, 0).encode(), uid.encode())
        return data


def plan_requests(seed: int) -> list[list[Planned]]:
    """REQUESTS requests: mostly one small instance, some several, some one large (multipart)
    instance, and some duplicates of instances planned earlier (sent again as they were)."""
    rng = random.Random(seed)
    made: list[Planned] = []

    def new(size: str) -> Planned:
        n = len(made) + 1
        study = rng.randint(1, STUDIES)
        made.append(Planned(run_uid(1, study), run_uid(2, study * 10 + n % 3), run_uid(3, n), size))
        return made[-1]

    plan: list[list[Planned]] = []
    for _ in range(REQUESTS):
        roll = rng.random()
        if roll < 0.035:
            # 6-9 MB: above the 5 MiB multipart threshold, two parts.
            plan.append([new(rng.choice(["6MB", "7MB", "9MB"]))])
        elif roll < 0.14 and made:
            plan.append([rng.choice(made)] + ([new("small")] if rng.random() < 0.5 else []))
        elif roll < 0.40:
            plan.append([new("small") for _ in range(rng.randint(2, 4))])
        else:
            plan.append([new("small")])
    return plan


# -- the run --------------------------------------------------------------------------------------


@dataclass
class Run:
    """Shared state of the client threads and the killer."""

    gateway: RunningGateway
    lock: threading.Condition = field(default_factory=threading.Condition)
    done: int = 0  # requests finished (acknowledged, or failed twice)
    sent: int = 0  # attempts started
    # Attempts the clients may start before the next kill: the killer opens the gate segment by
    # segment, so that every kill lands while requests are in flight, never after the last one.
    gate: int = 0

    def open_gate(self, attempts: int) -> None:
        with self.lock:
            self.gate = attempts
            self.lock.notify_all()

    def wait_until_sent(self, attempts: int) -> None:
        with self.lock:
            self.lock.wait_for(lambda: self.sent >= attempts or self.done == REQUESTS)

    acknowledged: dict[str, Planned] = field(default_factory=dict)
    digests: dict[str, str] = field(default_factory=dict)
    statuses: Counter[str] = field(default_factory=Counter)


def client(run: Run, requests: list[list[Planned]], templates: Templates) -> None:
    """Send ``requests`` in order. Of those cut off by a kill (or refused as unavailable), every
    other one is sent again once, at the end (which finds and adopts what the first attempt
    stored); the others are abandoned, as by a client that gives up, leaving their uncommitted
    objects to the repair."""
    queue = [(request, 1, n % 2 == 0) for n, request in enumerate(requests)]
    http = httpx.Client(timeout=120)
    try:
        while queue:
            request, attempt, retry = queue.pop(0)
            with run.lock:
                run.lock.wait_for(lambda: run.sent < run.gate)
                run.sent += 1
                run.lock.notify_all()
            datas = [templates.instance(p) for p in request]
            for planned, data in zip(request, datas, strict=True):
                run.digests.setdefault(planned.sop, hashlib.sha256(data).hexdigest())
            body, content_type = stow_body(datas)
            try:
                response = http.post(
                    f"{run.gateway.url}/studies",
                    content=body,
                    headers={"Content-Type": content_type, "Accept": "application/dicom+json"},
                )
            except httpx.TransportError as exc:
                outcome = type(exc).__name__
                http.close()
                http = httpx.Client(timeout=120)  # its pooled connections died with the gateway
            else:
                outcome = str(response.status_code)
                if response.status_code in (200, 202):
                    stored = set(referenced_sops(response))
                    with run.lock:
                        run.acknowledged.update((p.sop, p) for p in request if p.sop in stored)
            with run.lock:
                run.statuses[outcome] += 1
                if outcome not in ("200", "202") and attempt == 1 and retry:
                    queue.append((request, 2, False))
                else:
                    run.done += 1
                    run.lock.notify_all()
    finally:
        http.close()


def kill_and_switch(run: Run, successor: RunningGateway) -> int:
    """Send new requests to ``successor`` (already running: no downtime to wait out), then
    SIGKILL the current gateway in the middle of its requests and reap it. Returns how many files
    the killed process left in its spool directory (later start-ups and the repair sweep them)."""
    old = run.gateway
    run.gateway = successor
    old.process.kill()
    old.process.wait(30)
    return len(spool_files(old))


def spool_files(gw: RunningGateway) -> list[Path]:
    return [p for p in (gw.data_dir / "spool").glob(f"stow-{gw.process.pid}-*/*") if p.is_file()]


def upload_ids(admin: S3Client, bucket: str) -> set[str]:
    uploads = admin.list_multipart_uploads(Bucket=bucket, Prefix=PREFIX).get("Uploads", [])
    return {upload.get("UploadId", "") for upload in uploads}


def wait_for_multipart(admin: S3Client, bucket: str, known: set[str], seconds: float) -> set[str]:
    """Multipart uploads in progress now (not among ``known``: left by earlier kills); empty
    when none started within ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if started := upload_ids(admin, bucket) - known:
            return started
        time.sleep(0.005)
    return set()


def wait_for_completion(admin: S3Client, bucket: str, uploads: set[str], seconds: float) -> bool:
    """Whether one of ``uploads`` completed within ``seconds``: its object now exists, and its
    index row follows a few milliseconds later (the window to kill in)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if uploads - upload_ids(admin, bucket):
            return True
    return False


# -- looking at the store and the index from outside ----------------------------------------------


def bucket_keys(admin: S3Client, bucket: str) -> set[str]:
    keys: set[str] = set()
    for page in admin.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=PREFIX):
        keys.update(item["Key"][len(PREFIX) :] for item in page.get("Contents", []))
    return keys


def unfinished_uploads(admin: S3Client, bucket: str) -> list[str]:
    return [u.get("Key", "") for u in admin.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]


def object_keys(study: str, series: str, sop: str) -> set[str]:
    base = f"studies/{study}/series/{series}/instances/{sop}"
    return {base + ".dcm", base + ".json"}


IndexRows = Callable[[], set[tuple[str, str, str]]]
INSTANCE_ROWS = "SELECT study_uid, series_uid, sop_uid FROM instances"
# The instances the change feed says are stored now: those whose latest entry is a create.
FEED_CURRENT = (
    "SELECT c.study_uid, c.series_uid, c.sop_uid FROM changefeed AS c WHERE c.action = 'create'"
    " AND c.sequence = (SELECT max(m.sequence) FROM changefeed AS m WHERE m.sop_uid = c.sop_uid)"
)


def sqlite_rows(data_dir: Path, sql: str = INSTANCE_ROWS) -> IndexRows:
    def rows() -> set[tuple[str, str, str]]:
        with sqlite3.connect(f"file:{data_dir / 'index.sqlite3'}?mode=ro", uri=True) as conn:
            found = conn.execute(sql).fetchall()
        conn.close()
        return {(a, b, c) for a, b, c in found}

    return rows


def postgres_rows(url: str, sql: str = INSTANCE_ROWS) -> IndexRows:
    conninfo, schema = parse_url(url)[:2]

    def rows() -> set[tuple[str, str, str]]:
        with psycopg.connect(conninfo, options=f"-c search_path={schema}") as conn:
            found = conn.execute(sql).fetchall()
        return {(a, b, c) for a, b, c in found}

    return rows


def repair_counts(stdout: str) -> dict[str, int]:
    return {label: int(n) for label, n in re.findall(r"^(.*): (\d+)$", stdout, re.MULTILINE)}


# -- the test -------------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
def index_choice(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[tuple[str, ...], IndexRows, IndexRows]]:
    """(gateway flags, the index rows, the instances the change feed says are stored)."""
    if request.param == "sqlite":
        yield (), sqlite_rows(tmp_path / "data"), sqlite_rows(tmp_path / "data", FEED_CURRENT)
    else:
        url = request.getfixturevalue("postgres_url")
        yield ("--index-url", url), postgres_rows(url), postgres_rows(url, FEED_CURRENT)


@pytest.mark.timeout(400)
def test_sigkill_during_stow_loses_no_acknowledged_instance_and_repair_leaves_nothing(
    tmp_path: Path,
    s3_bucket: S3Bucket,
    s3_admin: S3Client,
    index_choice: tuple[tuple[str, ...], IndexRows, IndexRows],
) -> None:
    extra_args, index_rows, feed_current = index_choice
    bucket = s3_bucket.bucket
    plan = plan_requests(seed=7)

    processes: list[RunningGateway] = []

    def new_gateway() -> RunningGateway:
        processes.append(
            start_gateway(tmp_path, store_kind="s3", s3=s3_bucket, extra_args=extra_args, env=MULTIPART_ENV)
        )
        return processes[-1]

    run = Run(new_gateway())
    segment = REQUESTS // (KILLS + 1)
    templates = Templates()
    threads = [threading.Thread(target=client, args=(run, plan[i::CLIENTS], templates)) for i in range(CLIENTS)]
    started = time.monotonic()
    kills_in_multipart = kills_after_complete = spool_files_left = 0
    try:
        for thread in threads:
            thread.start()
        killed: list[RunningGateway] = []
        left: set[str] = set()  # multipart uploads the killed processes left
        for kill in range(KILLS):
            # The successor starts while the clients keep the current gateway busy; it shares the
            # data directory (and the SQLite index) with it, as replicas on one host would.
            successor = new_gateway()
            # Its start-up swept the spool directories of every process killed before it.
            assert [p for gw in killed for p in spool_files(gw)] == [], "a dead process's spool was not swept"
            target = (kill + 1) * segment
            run.open_gate(target + segment // 2)
            run.wait_until_sent(target)
            # Even kills: while a multipart upload is in progress. Odd kills: right after one
            # completed, before (with luck) its index row is committed.
            in_progress = wait_for_multipart(s3_admin, bucket, left, seconds=10)
            if kill % 2 == 1 and in_progress:
                kills_after_complete += wait_for_completion(s3_admin, bucket, in_progress, seconds=10)
            assert run.done < REQUESTS, "the clients finished before the kills"
            killed.append(run.gateway)
            spool_files_left += kill_and_switch(run, successor)
            now_left = upload_ids(s3_admin, bucket)
            kills_in_multipart += bool(in_progress & now_left)  # it was cut off, not completed first
            left |= now_left
        run.open_gate(10 * REQUESTS)
        for thread in threads:
            thread.join(timeout=240)
            assert not thread.is_alive(), "a client did not finish"
    finally:
        run.open_gate(10 * REQUESTS)
        for process in processes:
            stop_gateway(process)
    elapsed = time.monotonic() - started
    statuses = dict(run.statuses)
    print(f"\n{REQUESTS} STOW requests, {KILLS} kills, {elapsed:.1f} s; responses {statuses}")
    print(
        f"kills during a multipart upload: {kills_in_multipart}, right after one completed: {kills_after_complete};"
        f" spool files left by kills: {spool_files_left}"
    )
    assert run.done == REQUESTS
    cut_off = sum(n for status, n in statuses.items() if not status.isdigit())
    assert cut_off >= KILLS // 2, "the kills did not cut requests off"
    assert not [s for s in statuses if s.startswith("5") and s != "503"], "a server error that is not 'retry later'"
    assert len(run.acknowledged) > REQUESTS // 2

    # 1. Every index row has its objects; every acknowledged instance has its row.
    rows = index_rows()
    keys = bucket_keys(s3_admin, bucket)
    assert [row for row in rows if not object_keys(*row) <= keys] == [], "index rows without their objects"
    indexed_sops = {sop for _, _, sop in rows}
    assert [sop for sop in run.acknowledged if sop not in indexed_sops] == [], "acknowledged but not indexed"
    # The change feed was written in the rows' own transactions: no entry for a row the kills
    # rolled back, no row without its entry.
    assert feed_current() == rows, "the change feed and the index disagree after the kills"
    committed = set().union(*(object_keys(*row) for row in rows)) if rows else set()
    orphans = keys - committed
    uploads = unfinished_uploads(s3_admin, bucket)
    print(f"before repair: {len(rows)} index rows, {len(orphans)} orphan objects, {len(uploads)} unfinished uploads")
    # The kills did leave something to repair (what the test is about): uploads cut off mid-way,
    # and objects of abandoned requests whose rows were never committed.
    assert kills_in_multipart >= 1, "no kill landed in the middle of a multipart upload"
    assert uploads, "no kill left an unfinished multipart upload"
    assert orphans, "no kill left an object without its index row"

    # 2. One repair removes exactly what the kills left behind.
    phase = time.monotonic()
    result = run.gateway.cli("reindex", "--repair", "--grace", "0", *extra_args)
    print(f"repair: {time.monotonic() - phase:.1f} s")
    assert result.returncode == 0, result.stderr
    print(result.stdout)
    counts = repair_counts(result.stdout)
    assert counts["instance objects without an index row deleted"] == len([k for k in orphans if k.endswith(".dcm")])
    assert counts["metadata objects without an indexed instance deleted"] == len(
        [k for k in orphans if k.endswith(".json")]
    )
    assert counts["unfinished uploads and temp files discarded"] == len(uploads)
    assert counts["index rows without their instance object removed"] == 0
    assert index_rows() == rows
    assert bucket_keys(s3_admin, bucket) == committed
    assert unfinished_uploads(s3_admin, bucket) == []
    assert [p for p in (tmp_path / "data" / "spool").rglob("*") if p.is_file()] == []

    # 3. Every acknowledged instance is served byte-identical and found by QIDO.
    phase = time.monotonic()
    gw = new_gateway()
    try:
        with httpx.Client(timeout=120) as http:

            def digest(planned: Planned) -> tuple[str, str | None]:
                url = f"{gw.url}/studies/{planned.study}/series/{planned.series}/instances/{planned.sop}"
                response = http.get(url, headers=AS_STORED)
                if response.status_code != 200:
                    return planned.sop, f"HTTP {response.status_code}"
                [(_, body)] = split_multipart(response)
                return planned.sop, hashlib.sha256(body).hexdigest()

            with ThreadPoolExecutor(CLIENTS) as pool:
                served = dict(pool.map(digest, run.acknowledged.values()))
            wrong = [sop for sop, got in served.items() if got != run.digests[sop]]
            assert wrong == [], f"{len(wrong)} acknowledged instance(s) not served byte-identical"
            listed: set[str] = set()
            for study in {p.study for p in run.acknowledged.values()}:
                response = http.get(f"{gw.url}/studies/{study}/instances", params={"limit": "1000"})
                assert response.status_code == 200
                listed.update(row["00080018"]["Value"][0] for row in response.json())
            assert set(run.acknowledged) <= listed
    finally:
        stop_gateway(gw)
    print(f"verification of {len(run.acknowledged)} instances: {time.monotonic() - phase:.1f} s")
