"""Metadata corrections as the index keeps them (:class:`gateway.ports.Corrections`), over both
implementations: the switch of a study's rows to corrected versions in one transaction, with
its ``update`` entries and kept versions, rows that changed meanwhile left alone, operations
kept across connections."""

from __future__ import annotations

import dataclasses

import pytest

from gateway.dicom.query import parse_qido
from gateway.errors import OperationTakenOver
from gateway.ports import (
    AddOutcome,
    ChangeAction,
    ChangeQuery,
    ChangeState,
    Corrections,
    Index,
    KeepIf,
    Operation,
    RemovalCause,
    Replacement,
)
from gateway.security.access import Restriction
from tests.fixtures_index import Backend
from tests.test_index_contract import ROOT, record

pytestmark = pytest.mark.anyio

CAUSE = RemovalCause("update", principal="jwt:registrar")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def corrections(index: Index) -> Corrections:
    assert isinstance(index, Corrections)
    return index


async def test_a_study_switches_whole_with_its_entries_and_kept_versions(index: Index) -> None:
    old = [record(1, 1, sop, PatientID="P1", PatientName="WRONG^NAME", AccessionNumber="A1") for sop in (1, 2)]
    for rec in old:
        assert await index.add(rec) is AddOutcome.INSERTED
    new = [
        dataclasses.replace(
            record(1, 1, sop, PatientID="P2", PatientName="RIGHT^NAME", AccessionNumber="A2"), version="v1"
        )
        for sop in (1, 2)
    ]
    replacements = [Replacement(n, o.version, o.sha256) for n, o in zip(new, old, strict=True)]
    switched = await corrections(index).replace_instances(f"{ROOT}.1", replacements, CAUSE)
    assert sorted(switched) == [f"{ROOT}.1.1.1", f"{ROOT}.1.1.2"]

    got = await index.get(f"{ROOT}.1", f"{ROOT}.1.1", f"{ROOT}.1.1.1")
    assert got is not None
    assert (got.version, got.sha256, got.metadata) == ("v1", new[0].sha256, new[0].metadata)
    # The study row, and so QIDO and a restriction by PatientID, follow the correction.
    rows = (await index.search(parse_qido("study", [("AccessionNumber", "A2")]))).rows
    assert [r["00100020"]["Value"] for r in rows] == [["P2"]]
    assert (await index.search(parse_qido("study", [("PatientName", "WRONG*")]))).rows == []
    # The corrected patient's readers see the update entries, with the metadata...
    restricted = Restriction(patient_ids=frozenset({"P2"}))
    entries = await index.changes(ChangeQuery(limit=10, restriction=restricted, include_metadata=True))
    assert [(e.action, e.sop_uid, e.state, e.origin, e.principal) for e in entries] == [
        (ChangeAction.UPDATE, f"{ROOT}.1.1.{sop}", ChangeState.CURRENT, "update", "jwt:registrar") for sop in (1, 2)
    ]
    assert [e.metadata for e in entries] == [n.metadata for n in new]
    # ...the first patient's readers the history they saw before, without the metadata now another patient's.
    restricted = Restriction(patient_ids=frozenset({"P1"}))
    entries = await index.changes(ChangeQuery(limit=10, restriction=restricted, include_metadata=True))
    assert [(e.action, e.state, e.metadata) for e in entries] == [(ChangeAction.CREATE, ChangeState.REPLACED, None)] * 2
    latest = await index.latest_change(restricted, include_metadata=True)
    assert latest is not None
    assert latest.metadata is None
    (kept,) = await corrections(index).kept_versions(f"{ROOT}.1.1.1")
    assert (kept.version, kept.sha256, kept.object_key) == ("", old[0].sha256, old[0].object_key)


async def test_rows_that_changed_meanwhile_are_left_alone(index: Index) -> None:
    first, second = record(2, 1, 1, AccessionNumber="A1"), record(2, 1, 2, AccessionNumber="A1")
    await index.add(first)
    await index.add(second)
    # The second instance was deleted after the correction read it: only the first switches.
    token = await index.begin_removal(f"{ROOT}.2", f"{ROOT}.2.1", f"{ROOT}.2.1.2", keep_if=KeepIf.NEVER)
    assert token is not None
    await index.end_removal(f"{ROOT}.2.1.2", token)
    new = [dataclasses.replace(record(2, 1, sop, AccessionNumber="A2"), version="v1") for sop in (1, 2)]
    replacements = [Replacement(n, "", o.sha256) for n, o in zip(new, (first, second), strict=True)]
    assert await corrections(index).replace_instances(f"{ROOT}.2", replacements, CAUSE) == [f"{ROOT}.2.1.1"]
    # A correction that read an older version than the row now holds changes nothing.
    stale = Replacement(dataclasses.replace(new[0], version="v2"), "", first.sha256)
    assert await corrections(index).replace_instances(f"{ROOT}.2", [stale], CAUSE) == []
    got = await index.get(None, None, f"{ROOT}.2.1.1")
    assert got is not None
    assert got.version == "v1"
    # Deleting the instance forgets its kept versions with it.
    token = await index.begin_removal(f"{ROOT}.2", f"{ROOT}.2.1", f"{ROOT}.2.1.1", keep_if=KeepIf.NEVER)
    assert token is not None
    assert await corrections(index).kept_versions(f"{ROOT}.2.1.1") == []


async def test_kept_versions_expire_and_operations_persist(index: Index, backend: Backend) -> None:
    rec = record(3, 1, 1)
    await index.add(rec)
    new = dataclasses.replace(record(3, 1, 1, AccessionNumber="A2"), version="v1")
    await corrections(index).replace_instances(f"{ROOT}.3", [Replacement(new, "", rec.sha256)], CAUSE)
    assert await corrections(index).expired_versions(0.0, 10) == []
    (expired,) = await corrections(index).expired_versions(float("inf"), 10)
    await corrections(index).forget_version(expired.sop_uid, expired.version)
    assert await corrections(index).kept_versions(f"{ROOT}.3.1.1") == []

    operation = Operation(
        id="0" * 32,
        kind="update",
        status="running",
        created=1.0,
        updated=2.0,
        percent_complete=50,
        request={"studyInstanceUids": [f"{ROOT}.3"]},
        results={"studyUpdated": 1, "errors": []},
        holder="replica-a",
        principal="jwt:registrar",
    )
    await corrections(index).save_operation(operation)
    await corrections(index).save_operation(dataclasses.replace(operation, status="failed", percent_complete=100))
    other = backend.open()
    try:
        got = await corrections(other).operation("0" * 32)
        assert got == dataclasses.replace(operation, status="failed", percent_complete=100)
        assert await corrections(other).running_operations("replica-a") == []
        assert await corrections(other).operation("1" * 32) is None
    finally:
        await other.aclose()


async def test_a_stale_operation_goes_to_one_other_replica_and_only_its_holder_saves_it(index: Index) -> None:
    def running(op_id: str, holder: str, updated: float) -> Operation:
        return Operation(op_id, "update", "running", 1.0, updated, 0, {}, {"errors": []}, holder)

    store = corrections(index)
    await store.save_operation(running("a" * 32, "replica-a", 10.0))
    await store.save_operation(running("b" * 32, "replica-b", 10.0))
    # The holder's heartbeat refreshes its own operation, not another replica's.
    assert await store.heartbeat_operation("a" * 32, "replica-a", 100.0)
    assert not await store.heartbeat_operation("b" * 32, "replica-a", 100.0)
    # Replica A takes over what was not updated since 50 (B's), never its own.
    (taken,) = await store.take_over_stale_operations("replica-a", 50.0, 101.0)
    assert (taken.id, taken.holder, taken.updated) == ("b" * 32, "replica-a", 101.0)
    assert await store.take_over_stale_operations("replica-c", 50.0, 102.0) == []  # taken once only
    # B, paused meanwhile, can neither refresh nor save it any more; A can.
    assert not await store.heartbeat_operation("b" * 32, "replica-b", 103.0)
    await store.save_operation(dataclasses.replace(running("b" * 32, "replica-b", 104.0), percent_complete=50))
    await store.save_operation(dataclasses.replace(taken, status="failed", updated=105.0))
    got = await store.operation("b" * 32)
    assert got is not None
    assert (got.status, got.holder, got.percent_complete) == ("failed", "replica-a", 0)
    assert [op.id for op in await store.unfinished_operations()] == ["a" * 32]


async def test_only_the_holder_of_an_operation_commits_its_studies(index: Index) -> None:
    old = record(4, 1, 1, AccessionNumber="A1")
    await index.add(old)
    operation = Operation("c" * 32, "update", "running", 1.0, 1.0, 0, {}, {"errors": []}, "replica-a")
    await corrections(index).save_operation(operation)
    new = dataclasses.replace(record(4, 1, 1, AccessionNumber="A2"), version="c" * 32)
    replacement = Replacement(new, "", old.sha256)
    # Replica B took the operation over: replica A, paused meanwhile, may not commit any more.
    await corrections(index).take_over_stale_operations("replica-b", 2.0, 3.0)
    with pytest.raises(OperationTakenOver):
        await corrections(index).replace_instances(f"{ROOT}.4", [replacement], CAUSE, holder="replica-a")
    got = await index.get(f"{ROOT}.4", f"{ROOT}.4.1", f"{ROOT}.4.1.1")
    assert got is not None
    assert got.version == ""
    switched = await corrections(index).replace_instances(f"{ROOT}.4", [replacement], CAUSE, holder="replica-b")
    assert switched == [f"{ROOT}.4.1.1"]
