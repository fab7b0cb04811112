"""The change feed as the Index keeps it, over both implementations (SQLite and PostgreSQL):
one entry per row added or removed, written in that transaction, with Microsoft's states
decided at read time and the restriction applied as QIDO applies it."""

from __future__ import annotations

import sqlite3

import anyio
import anyio.lowlevel
import psycopg
import pytest

from gateway.adapters.postgres_index import parse_url
from gateway.ports import AddOutcome, ChangeAction, ChangeQuery, ChangeState, Index, KeepIf, RemovalCause
from gateway.security.access import Restriction
from tests.fixtures_index import Backend
from tests.test_index_contract import ROOT, record

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def feed(limit: int = 100, **kwargs: object) -> ChangeQuery:
    return ChangeQuery(limit=limit, **kwargs)  # type: ignore[arg-type]


async def remove(index: Index, study: int, series: int, sop: int, cause: RemovalCause, keep_if: KeepIf) -> bool:
    uids = (f"{ROOT}.{study}", f"{ROOT}.{study}.{series}", f"{ROOT}.{study}.{series}.{sop}")
    token = await index.begin_removal(*uids, keep_if=keep_if, cause=cause)
    if token is not None:
        await index.end_removal(uids[2], token)
    return token is not None


async def test_an_added_row_has_one_create_entry_and_a_resend_none(index: Index) -> None:
    rec = record(1, 1, 1, PatientID="P1")
    assert await index.add(rec) is AddOutcome.INSERTED
    assert await index.add(rec) is AddOutcome.IDENTICAL
    assert await index.add(record(1, 1, 1, PatientID="P1", sha="0" * 64)) is AddOutcome.CONFLICT
    entries = await index.changes(feed(include_metadata=True))
    assert len(entries) == 1
    entry = entries[0]
    assert (entry.action, entry.state, entry.origin) == (ChangeAction.CREATE, ChangeState.CURRENT, "stow")
    assert (entry.study_uid, entry.series_uid, entry.sop_uid) == (rec.study_uid, rec.series_uid, rec.sop_uid)
    assert entry.metadata == rec.metadata
    assert await index.latest_change(include_metadata=True) == entry


async def test_a_removed_row_has_one_delete_entry_with_its_cause(index: Index) -> None:
    await index.add(record(1, 1, 1))
    rejected = RemovalCause("reject", principal="apikey:admin", reason="113039^DCM")
    assert await remove(index, 1, 1, 1, rejected, KeepIf.NEVER)
    create, delete = await index.changes(feed(include_metadata=True))
    assert delete.sequence > create.sequence
    assert (delete.action, delete.origin, delete.principal, delete.reason) == (
        ChangeAction.DELETE,
        "reject",
        "apikey:admin",
        "113039^DCM",
    )
    assert create.state is delete.state is ChangeState.DELETED
    assert create.metadata is None  # the instance is gone: no metadata to give
    # Stored again: the new create is current, the history before it replaced.
    assert await index.add(record(1, 1, 1)) is AddOutcome.INSERTED
    states = [(e.action, e.state) for e in await index.changes(feed())]
    assert states == [
        (ChangeAction.CREATE, ChangeState.REPLACED),
        (ChangeAction.DELETE, ChangeState.REPLACED),
        (ChangeAction.CREATE, ChangeState.CURRENT),
    ]


async def test_removals_that_keep_the_row_or_find_none_write_nothing(index: Index) -> None:
    await index.add(record(1, 1, 1))
    await index.add(record(1, 1, 1))  # IDENTICAL: now shared
    assert not await remove(index, 1, 1, 1, RemovalCause("undo"), KeepIf.SHARED)
    assert not await remove(index, 1, 1, 1, RemovalCause("undo"), KeepIf.INDEXED)
    # Objects never indexed (a sweep of orphans): a removal, but no row, so no entry.
    assert await remove(index, 2, 1, 1, RemovalCause("undo"), KeepIf.INDEXED)
    assert [e.action for e in await index.changes(feed())] == [ChangeAction.CREATE]


async def test_a_restricted_reader_sees_its_studies_entries_even_after_deletion(index: Index) -> None:
    await index.add(record(1, 1, 1, PatientID="P1"))
    await index.add(record(2, 1, 1, PatientID="P2"))
    await index.add(record(3, 1, 1, PatientID="P3"))
    await remove(index, 1, 1, 1, RemovalCause("delete"), KeepIf.NEVER)  # the study row goes too
    by_patient = Restriction(study_uids=frozenset(), patient_ids=frozenset({"P1"}))
    by_study = Restriction(study_uids=frozenset({f"{ROOT}.3"}), patient_ids=frozenset())
    seen = [(e.study_uid, e.action) for e in await index.changes(feed(restriction=by_patient))]
    assert seen == [(f"{ROOT}.1", ChangeAction.CREATE), (f"{ROOT}.1", ChangeAction.DELETE)]
    assert [e.study_uid for e in await index.changes(feed(restriction=by_study))] == [f"{ROOT}.3"]
    latest = await index.latest_change(by_study)
    assert latest is not None
    assert latest.study_uid == f"{ROOT}.3"
    assert await index.latest_change(Restriction(study_uids=frozenset({"1.2.3"}), patient_ids=frozenset())) is None


async def test_offset_counts_entries_and_the_time_window_bounds_them(index: Index) -> None:
    for sop in range(1, 6):
        await index.add(record(1, 1, sop))
    everything = await index.changes(feed())
    assert [e.sequence for e in everything] == sorted(e.sequence for e in everything)
    assert [e.sequence for e in await index.changes(feed(limit=2, offset=1))] == [e.sequence for e in everything[1:3]]
    middle = everything[2].timestamp
    later = await index.changes(feed(start=middle))
    assert later
    assert all(e.timestamp >= middle for e in later)
    earlier = await index.changes(feed(end=middle))
    assert earlier
    assert all(e.timestamp < middle for e in earlier)
    assert len(earlier) + len(later) == 5


async def test_clear_writes_a_delete_for_every_row(index: Index) -> None:
    await index.add(record(1, 1, 1))
    await index.add(record(1, 2, 1))
    await index.clear()
    entries = await index.changes(feed())
    assert [(e.action, e.origin) for e in entries[2:]] == [(ChangeAction.DELETE, "reindex")] * 2
    assert {e.state for e in entries} == {ChangeState.DELETED}


async def test_sequence_follows_commits_across_replicas(index: Index, backend: Backend) -> None:
    other = backend.open()
    try:

        async def add(idx: Index, start: int) -> None:
            for sop in range(start, start + 10):
                assert await idx.add(record(1, 1, sop)) is AddOutcome.INSERTED

        async with anyio.create_task_group() as tg:
            tg.start_soon(add, index, 1)
            tg.start_soon(add, other, 100)
        entries = await other.changes(feed())
        assert len(entries) == 20
        assert len({e.sop_uid for e in entries}) == 20
        sequences = [e.sequence for e in entries]
        assert sequences == sorted(set(sequences))
    finally:
        await other.aclose()


async def test_the_migration_gives_instances_already_indexed_their_create_entries(backend: Backend) -> None:
    first = backend.open()
    try:
        await first.add(record(1, 1, 1, PatientID="P1"))
        await first.add(record(1, 1, 2, PatientID="P1"))
    finally:
        await first.aclose()
    # The database a gateway of schema version 3 left: no change feed yet (nor what versions 5 to 8 add).
    undo = (
        "DROP TABLE pending_commitments",
        "DROP TABLE operations",
        "DROP TABLE kept_versions",
        "ALTER TABLE instances DROP COLUMN version",
        "ALTER TABLE series DROP COLUMN accessed_at",
        "DROP INDEX instances_by_stored_at",
        "DROP TABLE leases",
        "DROP TABLE protected_studies",
        "DROP TABLE webhook_cursors",
        "DROP TABLE changefeed",
    )
    if backend.name == "sqlite":
        assert backend.path is not None
        with sqlite3.connect(backend.path) as conn:
            for statement in undo:
                conn.execute(statement)
        conn.close()
    else:
        assert backend.url is not None
        conninfo, schema = parse_url(backend.url)[:2]
        with psycopg.connect(conninfo, autocommit=True, options=f"-c search_path={schema}") as pg:
            for statement in undo:
                pg.execute(statement)
    backend.set_schema_version(3)
    again = backend.open()
    try:
        entries = await again.changes(feed(restriction=Restriction(patient_ids=frozenset({"P1"}))))
        assert [(e.sop_uid, e.action, e.state, e.origin) for e in entries] == [
            (f"{ROOT}.1.1.{sop}", ChangeAction.CREATE, ChangeState.CURRENT, "stow") for sop in (1, 2)
        ]
    finally:
        await again.aclose()


async def test_a_follower_by_sequence_misses_no_entry_of_concurrent_writers(index: Index, backend: Backend) -> None:
    # Two replicas write while a follower asks, again and again, for what came after the last
    # sequence it saw: entries commit in sequence order, so it must end up with every one.
    await index.ping()  # the schema exists
    if backend.name == "postgres":
        _slow_commits(backend)
    writers = [backend.open() for _ in range(2)]
    seen: list[int] = []
    done = anyio.Event()

    async def write(idx: Index, study: int) -> None:
        # A study each: adds to one study would wait for each other anyway (its counter row).
        for sop in range(1, 31):
            assert await idx.add(record(study, 1, sop)) is AddOutcome.INSERTED

    async def follow() -> None:
        while True:
            finished = done.is_set()
            after = seen[-1] if seen else None
            seen.extend(e.sequence for e in await index.changes(feed(limit=1000, after=after)))
            if finished:
                return
            await anyio.lowlevel.checkpoint()

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(follow)
            async with anyio.create_task_group() as writing:
                writing.start_soon(write, writers[0], 1)
                writing.start_soon(write, writers[1], 2)
            done.set()
    finally:
        for idx in writers:
            await idx.aclose()
    everything = [e.sequence for e in await index.changes(feed(limit=1000))]
    assert len(everything) == 60
    assert seen == everything


def _slow_commits(backend: Backend) -> None:
    """Widen the gap between an entry taking its sequence and its commit (a random pause after
    the insert, in the writer's transaction), where a writer that took a later sequence could
    commit first if nothing ordered the commits."""
    assert backend.url is not None
    conninfo, schema = parse_url(backend.url)[:2]
    with psycopg.connect(conninfo, autocommit=True, options=f"-c search_path={schema}") as pg:
        pg.execute(
            "CREATE FUNCTION pause_after_entry() RETURNS trigger LANGUAGE plpgsql AS"
            " $$ BEGIN PERFORM pg_sleep(random() * 0.02); RETURN NEW; END $$"
        )
        pg.execute(
            "CREATE TRIGGER pause_after_entry AFTER INSERT ON changefeed"
            " FOR EACH ROW EXECUTE FUNCTION pause_after_entry()"
        )
