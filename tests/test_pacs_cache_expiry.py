"""Expiry of instances cached from a PACS (``pacs_cache_max_age``): a retrieved series is
removed from the cache after the age and fetched from the PACS again when asked for; STOWed
instances, and cached ones an upload was told are stored, are never expired."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest

from gateway.adapters.filestore import FileBlobStore
from gateway.adapters.sqlite_index import SqliteIndex
from gateway.dicom.parse import ParseLimits, parse_part10
from gateway.errors import NotFound
from gateway.ports import AddOutcome, Index, RetentionMatch
from gateway.services.instance_reader import InstanceReader
from gateway.services.instance_writer import InstanceWriter
from gateway.services.pacs_flights import PacsFlights
from gateway.services.removal import RemovalService
from gateway.services.retention import RetentionSweep
from gateway.services.visibility import Visibility
from gateway.settings_retention import PACS_CACHE_RULE, RetentionRule
from tests import factory
from tests.fixtures_pacs import GATEWAY_AET, GatewayFactory, load_orthanc, node
from tests.http_helpers import stow, uids_of
from tests.peers.orthanc import OrthancPeer, orthanc_available, run_orthanc
from tests.test_index_contract import record
from tests.test_pacs_wado import by_sop, dataset_bytes, retrieve

pytestmark = pytest.mark.timeout(120)

MAX_AGE = 2.0
GRACE = 5.0  # seconds the objects of an expired instance outlive its row here
PACS_STUDY = factory.new_uid("expiry-pacs-study")
PACS_SERIES = factory.new_uid("expiry-pacs-series")
STOW_STUDY = factory.new_uid("expiry-stow-study")
STOW_SERIES = factory.new_uid("expiry-stow-series")


def series(study: str, series_uid: str, seed: int, name: str) -> list[bytes]:
    identity = {"study_uid": study, "series_uid": series_uid, "patient_name": name, "PatientID": f"PID-{seed}"}
    return [factory.ct_instance(seed=seed + i, instance_number=i, **identity) for i in (1, 2, 3)]


@pytest.fixture(scope="module")
def in_pacs() -> list[bytes]:
    return series(PACS_STUDY, PACS_SERIES, 60, "EXPIRY^PACS")


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory, in_pacs: list[bytes], scp_port: int) -> Iterator[OrthancPeer]:
    if not orthanc_available():
        pytest.skip("Orthanc is not installed (apt-get install orthanc orthanc-dicomweb)")
    with run_orthanc(tmp_path_factory.mktemp("orthanc-expiry"), gateway_aet=GATEWAY_AET, gateway_port=scp_port) as peer:
        load_orthanc(peer, in_pacs)
        yield peer


def cached_sops(data_dir: Path, study: str) -> set[str]:
    return {uids_of(p.read_bytes())[2] for p in (data_dir / "objects").rglob("*.dcm") if study in str(p)}


def wait_until(condition: object, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return True
        time.sleep(0.2)
    return False


@pytest.mark.parametrize("method", ["get", "move"])
def test_cached_series_expires_and_is_fetched_again(
    pacs_gateway_factory: GatewayFactory, orthanc: OrthancPeer, in_pacs: list[bytes], method: str
) -> None:
    gw = pacs_gateway_factory(
        [node("orthanc", orthanc.dicom_port, orthanc.aet, retrieve=method)], pacs_cache_max_age=MAX_AGE
    )
    stowed = series(STOW_STUDY, STOW_SERIES, 70, "EXPIRY^STOW")
    assert stow(gw.url, stowed).status_code == 200
    url = f"{gw.url}/studies/{PACS_STUDY}/series/{PACS_SERIES}"
    expected = {uids_of(d)[2]: dataset_bytes(d) for d in in_pacs}

    first = by_sop(retrieve(url))
    assert {sop: dataset_bytes(d) for sop, d in first.items()} == expected
    assert gw.log().count("retrieving series") == 1
    # Cached (written through once the retrieve ended), then gone after the age: the sweep runs
    # every second here, and the machine may be busy, so a generous bound on noticing it.
    assert wait_until(lambda: "retention: rule pacs-cache removed 3 instance(s)" in gw.log(), 30), gw.log()[-3000:]
    assert f"retrieved series {PACS_SERIES}" in gw.log()
    # The change feed says where the copies came from, and what took them away.
    feed = httpx.get(gw.url + "/changefeed", params={"includeMetadata": "false"}, timeout=30).json()
    cached = [(e["SopInstanceUid"], e["Action"], e["Origin"]) for e in feed if e["StudyInstanceUid"] == PACS_STUDY]
    assert sorted(cached) == sorted(
        [(sop, "create", "pacs:orthanc") for sop in expected] + [(sop, "delete", "expiry") for sop in expected]
    )
    # The objects go one sweep after the rows (requests may still be reading them).
    assert wait_until(lambda: not cached_sops(gw.data_dir, PACS_STUDY), 30)

    # Asked again: a fresh DIMSE retrieve from the PACS, the same bytes.
    again = by_sop(retrieve(url))
    assert {sop: dataset_bytes(d) for sop, d in again.items()} == expected
    assert gw.log().count("retrieving series") == 2

    # The STOWed series outlived several sweeps untouched, and is served from the store.
    assert cached_sops(gw.data_dir, STOW_STUDY) == {uids_of(d)[2] for d in stowed}
    served = by_sop(retrieve(f"{gw.url}/studies/{STOW_STUDY}/series/{STOW_SERIES}"))
    assert set(served) == {uids_of(d)[2] for d in stowed}
    assert gw.log().count("retrieving series") == 2


# -- the index's part, over SQLite and PostgreSQL ------------------------------------------------


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_index_lists_only_old_unshared_pacs_copies(index: Index) -> None:
    def at(rec: object, origin: str, stored_at: float) -> object:
        return dataclasses.replace(rec, origin=origin, stored_at=stored_at)  # type: ignore[type-var]

    old_pacs = at(record(1, 1, 1), "pacs:orthanc", 1000.0)
    older_pacs = at(record(1, 1, 2), "pacs:orthanc", 500.0)
    new_pacs = at(record(1, 1, 3), "pacs:orthanc", 3000.0)
    old_stow = at(record(2, 1, 1), "stow", 100.0)
    shared_pacs = at(record(3, 1, 1), "pacs:dcmqrscp", 100.0)
    for rec in (old_pacs, older_pacs, new_pacs, old_stow, shared_pacs):
        assert await index.add(rec) is AddOutcome.INSERTED  # type: ignore[arg-type]
    # An upload of the same bytes is told "stored": that copy must stay.
    assert await index.add(dataclasses.replace(shared_pacs, origin="stow")) is AddOutcome.IDENTICAL  # type: ignore[type-var]

    cached = RetentionMatch(origin="pacs:")  # the rule pacs_cache_max_age stands for
    expired = [(c.study_uid, c.series_uid, c.sop_uid) for c in await index.retention_candidates(cached, 2000.0, 10)]
    assert expired == [(r.study_uid, r.series_uid, r.sop_uid) for r in (older_pacs, old_pacs)]  # type: ignore[attr-defined]
    assert [c.sop_uid for c in await index.retention_candidates(cached, 2000.0, 1)] == [expired[0][2]]


@pytest.mark.anyio
async def test_objects_outlive_their_rows_by_an_interval_for_reads_in_flight(tmp_path: Path) -> None:
    """A request that found a cached instance just before the sweep removed its row may still be
    reading it (a series retrieve reads instance after instance; frames are ranged reads): the
    objects go one interval later, and not at all if the instance was indexed again meanwhile."""
    store = FileBlobStore(tmp_path / "objects")
    index = SqliteIndex(tmp_path / "index.sqlite3")
    try:
        writer = InstanceWriter(store, index)
        reader = InstanceReader(store, index)
        instances = series(PACS_STUDY, PACS_SERIES, 10, "EXPIRY^INFLIGHT")
        for n, data in enumerate(instances):
            path = tmp_path / f"in-{n}.dcm"
            path.write_bytes(data)
            await writer.write(parse_part10(path, origin="pacs:orthanc"), path)
        flights = PacsFlights(writer, index, {}, None, parse_limits=ParseLimits())
        async with anyio.create_task_group() as tasks:
            removal = RemovalService(index, writer, Visibility(index), None, flights, grace=30.0)
            removal.start(tasks)
            rule = RetentionRule(name=PACS_CACHE_RULE, origin="pacs", max_age_seconds=MAX_AGE)
            # The cache rule's objects go one interval after their rows.
            sweep = RetentionSweep(index, removal, [rule], interval=GRACE)
            keys = [InstanceReader.key(r) for r in await reader.select(PACS_STUDY, PACS_SERIES)]  # a request in flight
            assert len(keys) == 3

            assert await sweep.sweep(time.time() + 10 * MAX_AGE) == 3
            with pytest.raises(NotFound):
                await reader.select(PACS_STUDY, PACS_SERIES)  # new requests: gone (a PACS retrieve would follow)
            assert [await store.read_all(key) for key in keys] == instances  # the request in flight: intact

            # Indexed again before its objects were due (retrieved anew): that one keeps them.
            again = tmp_path / "again.dcm"
            again.write_bytes(instances[0])
            await writer.write(parse_part10(again, origin="pacs:orthanc"), again)
            deadline = time.monotonic() + 30 + GRACE
            while await store.stat(keys[1]) is not None or await store.stat(keys[2]) is not None:
                assert time.monotonic() < deadline, "the objects of the expired instances are still there"
                await anyio.sleep(0.1)
            assert await store.read_all(keys[0]) == instances[0]
            for key in keys[1:]:
                with pytest.raises(NotFound):
                    await store.read_all(key)
            tasks.cancel_scope.cancel()
    finally:
        await index.aclose()
