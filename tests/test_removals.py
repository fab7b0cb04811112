"""Removals across replicas: undoing an upload (or sweeping an object) never deletes an instance
another replica's upload was told is stored.

In-process claims (tests/test_claims.py) cover one gateway process; here two StowService objects
with their own claims and their own index connections stand for two replicas sharing one index
(SQLite file or PostgreSQL schema) and one object store, and the Index contract for
``begin_removal`` / ``end_removal`` runs over both index implementations.
"""

from __future__ import annotations

import hashlib
import io
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import anyio
import psycopg
import pydicom
import pytest

import gateway.adapters.postgres_index as postgres_index
import gateway.adapters.sqlite_index as sqlite_index
from gateway.adapters.filestore import FileBlobStore
from gateway.adapters.postgres_index import parse_url
from gateway.dicom import uids
from gateway.dicom.parse import ParseLimits
from gateway.errors import BadRequest, IndexError_, IndexOutcomeUnknown, ServiceUnavailable
from gateway.ports import AddOutcome, BlobStore, Index, InstanceRecord, KeepIf
from gateway.services.instance_writer import InstanceWriter
from gateway.services.outcomes import StoredInstance
from gateway.services.stow import StowService
from gateway.services.visibility import Visibility
from tests import factory
from tests.fixtures_index import Backend
from tests.test_index_contract import record, search, values

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# -- the Index contract -------------------------------------------------------------------------


async def test_removal_takes_the_row_and_blocks_adds_until_it_ends(index: Index) -> None:
    rec = record(1, 1, 1)
    assert await index.add(rec) is AddOutcome.INSERTED
    token = await index.begin_removal(rec.study_uid, rec.series_uid, rec.sop_uid, keep_if=KeepIf.SHARED)
    assert token is not None
    assert await index.get(None, None, rec.sop_uid) is None
    assert await search(index, "study") == []  # the counters went with the row
    assert await index.add(rec) is AddOutcome.REMOVING
    await index.end_removal(rec.sop_uid, "not-the-token")
    assert await index.add(rec) is AddOutcome.REMOVING  # only its own token ends a removal
    await index.end_removal(rec.sop_uid, token)
    assert await index.add(rec) is AddOutcome.INSERTED
    assert values(await search(index, "study"), "00201208") == [1]


async def test_an_identical_add_makes_the_row_shared(index: Index) -> None:
    rec = record(1, 1, 1)
    assert await index.add(rec) is AddOutcome.INSERTED
    assert await index.add(rec) is AddOutcome.IDENTICAL  # a second upload is told it is stored
    assert await index.begin_removal(rec.study_uid, rec.series_uid, rec.sop_uid, keep_if=KeepIf.SHARED) is None
    assert await index.get(None, None, rec.sop_uid) == rec
    assert await index.add(rec) is AddOutcome.IDENTICAL  # and no removal is in progress
    token = await index.begin_removal(rec.study_uid, rec.series_uid, rec.sop_uid, keep_if=KeepIf.NEVER)
    assert token is not None
    assert await index.get(None, None, rec.sop_uid) is None


async def test_keep_if_indexed_removes_only_what_no_row_commits(index: Index) -> None:
    rec = record(1, 1, 1)
    assert await index.add(rec) is AddOutcome.INSERTED
    assert await index.begin_removal(rec.study_uid, rec.series_uid, rec.sop_uid, keep_if=KeepIf.INDEXED) is None
    assert await index.get(None, None, rec.sop_uid) == rec
    # The same SOP Instance UID under another series is another key: its objects are not committed.
    token = await index.begin_removal(rec.study_uid, f"{rec.series_uid}9", rec.sop_uid, keep_if=KeepIf.INDEXED)
    assert token is not None
    assert await index.get(None, None, rec.sop_uid) == rec  # the indexed row stays
    await index.end_removal(rec.sop_uid, token)


async def test_a_removal_whose_process_died_lapses(index: Index, monkeypatch: pytest.MonkeyPatch) -> None:
    rec = record(1, 1, 1)
    assert await index.begin_removal(rec.study_uid, rec.series_uid, rec.sop_uid, keep_if=KeepIf.NEVER)
    monkeypatch.setattr(sqlite_index, "REMOVAL_LAPSE", -1.0)
    monkeypatch.setattr(postgres_index, "REMOVAL_LAPSE", -1.0)
    # The first add after the lapse still answers REMOVING: its objects may be half deleted, so
    # the uploader writes them again before adding.
    assert await index.add(rec) is AddOutcome.REMOVING
    assert await index.add(rec) is AddOutcome.INSERTED


async def test_schema_version_1_is_migrated_keeping_its_rows(backend: Backend) -> None:
    rec = record(1, 1, 1)
    first = backend.open()
    try:
        assert await first.add(rec) is AddOutcome.INSERTED
    finally:
        await first.aclose()
    _downgrade_to_version_1(backend)
    again = backend.open()
    try:
        assert await again.get(None, None, rec.sop_uid) == rec
        assert await again.add(rec) is AddOutcome.IDENTICAL
        assert await again.begin_removal(rec.study_uid, rec.series_uid, rec.sop_uid, keep_if=KeepIf.SHARED) is None
    finally:
        await again.aclose()


def _downgrade_to_version_1(backend: Backend) -> None:
    """Undo migrations 8 to 2 by hand: the database a gateway of schema version 1 left."""
    statements = (
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
        "DROP INDEX instances_expiry",
        "ALTER TABLE instances DROP COLUMN shared",
        "DROP TABLE removals",
    )
    if backend.name == "sqlite":
        assert backend.path is not None
        with sqlite3.connect(backend.path) as conn:
            for statement in statements:
                conn.execute(statement)
        conn.close()
    else:
        assert backend.url is not None
        conninfo, schema = parse_url(backend.url)[:2]
        with psycopg.connect(conninfo, autocommit=True, options=f"-c search_path={schema}") as conn:
            for statement in statements:
                conn.execute(statement)
    backend.set_schema_version(1)


# -- two replicas -------------------------------------------------------------------------------


@dataclass
class Part:
    content_type: str | None
    path: Path


class GatedStore(FileBlobStore):
    """The shared store as one replica sees it: its deletes wait for ``release`` when gated."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.deleting = anyio.Event()
        self.release: anyio.Event | None = None

    async def delete(self, key: str) -> None:
        self.deleting.set()
        if self.release is not None:
            await self.release.wait()
        await super().delete(key)


def stow_service(store: BlobStore, index: Index) -> StowService:
    return StowService(InstanceWriter(store, index), Visibility(index), ParseLimits())


@dataclass
class Replicas:
    a: StowService
    b: StowService
    a_store: GatedStore
    a_index: Index
    objects: Path
    spool: Path

    def part(self, data: bytes) -> Part:
        path = self.spool / f"part-{hashlib.sha256(data).hexdigest()[:8]}-{id(data)}"
        path.write_bytes(data)
        return Part("application/dicom", path)


@pytest.fixture
async def replicas(backend: Backend, tmp_path: Path) -> AsyncIterator[Replicas]:
    objects = tmp_path / "objects"
    spool = tmp_path / "spool"
    spool.mkdir()
    a_store, b_store = GatedStore(objects), FileBlobStore(objects)
    a_index, b_index = backend.open(), backend.open()
    try:
        yield Replicas(
            stow_service(a_store, a_index),
            stow_service(b_store, b_index),
            a_store,
            a_index,
            objects,
            spool,
        )
    finally:
        await a_index.aclose()
        await b_index.aclose()


async def refused_upload(replicas: Replicas, data: bytes, in_between: anyio.Event, resume: anyio.Event) -> None:
    """Replica A's request: one instance stored, then the body turns out bad (a refused request,
    4xx): A undoes what it created."""

    async def parts() -> AsyncIterator[Part]:
        yield replicas.part(data)
        with anyio.fail_after(10):
            # The service writes in a task of its own: its commit shows only in the index.
            while await replicas.a_index.get(None, None, _sop(data)) is None:  # noqa: ASYNC110
                await anyio.sleep(0.01)
        in_between.set()
        await resume.wait()
        raise BadRequest("multipart body ends without its closing boundary")

    with pytest.raises(BadRequest):
        await replicas.a.store_parts(parts(), study_uid=None)


def _sop(data: bytes) -> str:
    return uids_of(data)[2]


def uids_of(data: bytes) -> tuple[str, str, str]:
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    return str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)


async def stored_by(service: StowService, replicas: Replicas, data: bytes) -> StoredInstance:
    async def parts() -> AsyncIterator[Part]:
        yield replicas.part(data)

    outcome = await service.store_parts(parts(), study_uid=None)
    assert outcome.failed == []
    assert len(outcome.stored) == 1
    return outcome.stored[0]


async def assert_intact(replicas: Replicas, data: bytes) -> None:
    study, series, sop = uids_of(data)
    assert (await replicas.a_index.get(study, series, sop)) is not None
    stored = (replicas.objects / uids.instance_key(study, series, sop)).read_bytes()
    assert hashlib.sha256(stored).digest() == hashlib.sha256(data).digest()
    assert (replicas.objects / uids.metadata_key(study, series, sop)).is_file()


async def test_an_undo_keeps_what_another_replica_acknowledged(replicas: Replicas) -> None:
    data = factory.ct_instance(seed=1)
    in_between, resume = anyio.Event(), anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(refused_upload, replicas, data, in_between, resume)
        await in_between.wait()
        # B uploads the same bytes while A's request is still open: B is told they are stored.
        acknowledged = await stored_by(replicas.b, replicas, data)
        assert not acknowledged.created
        resume.set()  # now A's request is refused and undone
    await assert_intact(replicas, data)


async def test_an_upload_during_a_removal_writes_the_instance_again(replicas: Replicas) -> None:
    data = factory.ct_instance(seed=2)
    in_between, resume = anyio.Event(), anyio.Event()
    replicas.a_store.release = release = anyio.Event()
    acknowledged: list[StoredInstance] = []

    async def upload_on_b() -> None:
        acknowledged.append(await stored_by(replicas.b, replicas, data))

    async with anyio.create_task_group() as tg:
        tg.start_soon(refused_upload, replicas, data, in_between, resume)
        await in_between.wait()
        resume.set()
        with anyio.fail_after(10):
            await replicas.a_store.deleting.wait()  # A's undo has taken the row and deletes objects
        tg.start_soon(upload_on_b)  # B finds A's object still there, but may not commit yet
        await anyio.sleep(0.3)
        assert acknowledged == []
        release.set()
    assert len(acknowledged) == 1
    await assert_intact(replicas, data)


# -- an index failure during the commit ----------------------------------------------------------


class FailingAdds:
    """The index as a writer sees it when the database goes away during ``add``: a fault no
    real server produces on demand at that instant, so this wraps a real index."""

    def __init__(self, index: Index, error: IndexError_) -> None:
        self._index = index
        self._error = error

    async def add(self, record: InstanceRecord) -> AddOutcome:
        raise self._error

    def __getattr__(self, name: str) -> Any:
        return getattr(self._index, name)


@pytest.mark.parametrize(
    ("error", "kept"),
    [
        (IndexError_("the index database is unreachable"), False),
        (IndexOutcomeUnknown("the index connection broke while committing"), True),
    ],
)
async def test_objects_stay_when_the_commit_may_have_landed(replicas: Replicas, error: IndexError_, kept: bool) -> None:
    data = factory.ct_instance(seed=3)
    failing = cast(Index, FailingAdds(replicas.a_index, error))
    service = stow_service(FileBlobStore(replicas.objects), failing)

    async def parts() -> AsyncIterator[Part]:
        yield replicas.part(data)

    with pytest.raises(ServiceUnavailable) as refused:  # 503: nothing of the request is stored
        await service.store_parts(parts(), study_uid=None)
    assert refused.value.reason == error.reason
    key = uids.instance_key(*uids_of(data))
    # Unknown outcome: a row may exist, so its object must too (reindex --repair sweeps it if
    # not). Known failure: nothing was committed, so nothing stays.
    assert (replicas.objects / key).is_file() is kept
