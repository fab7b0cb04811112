"""``reindex --repair`` (gateway/commands/repair.py) and the spool sweep (gateway/spool.py): each kind of
leftover a crashed write can leave, over both object stores and both indexes, plus the races a
live system adds (an instance committed, or its object written again, while the repair runs).

The end-to-end proof (SIGKILL during 1,000 STOWs) is tests/test_fault_crash.py.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from gateway.adapters.filestore import FileBlobStore
from gateway.adapters.s3 import S3BlobStore
from gateway.adapters.sqlite_index import SqliteIndex
from gateway.commands.reindex import reindex
from gateway.commands.repair import IndexLooksLost, RepairReport, repair
from gateway.dicom import uids
from gateway.dicom.parse import parse_part10
from gateway.ports import (
    BlobStore,
    Corrections,
    Index,
    InstanceKey,
    InstanceRecord,
    ObjectInfo,
    Operation,
    RemovalCause,
    Replacement,
)
from gateway.spool import process_spool_dir, sweep_dead_spools
from tests import factory
from tests.fixtures_s3 import S3Bucket

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

pytestmark = pytest.mark.anyio
LATER = 3600.0  # a "now" this far ahead makes every object old enough to repair


@pytest.fixture(params=["file", pytest.param("s3", marks=pytest.mark.s3)])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[BlobStore]:
    if request.param == "file":
        (tmp_path / "objects").mkdir()
        instance: BlobStore = FileBlobStore(tmp_path / "objects")
    else:
        bucket: S3Bucket = request.getfixturevalue("s3_bucket")
        instance = S3BlobStore(
            bucket.bucket,
            "gw",
            endpoint_url=bucket.endpoint_url,
            region=bucket.region,
            access_key=bucket.access_key,
            secret_key=bucket.secret_key,
        )
    try:
        yield instance
    finally:
        await instance.aclose()


@pytest.fixture
def leave_unfinished(request: pytest.FixtureRequest, store: BlobStore) -> Callable[[str], None]:
    """What a process killed in the middle of writing ``key`` leaves (see the contract suite)."""
    if isinstance(store, FileBlobStore):

        def temp_file(key: str) -> None:
            final = store.root / key
            final.parent.mkdir(parents=True, exist_ok=True)
            (final.parent / f".{final.name}.{'ab' * 16}.tmp").write_bytes(b"partial")

        return temp_file
    bucket: S3Bucket = request.getfixturevalue("s3_bucket")
    admin: S3Client = request.getfixturevalue("s3_admin")

    def multipart(key: str) -> None:
        admin.create_multipart_upload(Bucket=bucket.bucket, Key="gw/" + key)

    return multipart


class Writer:
    """Writes instances the way a STOW does, stopping after any step (as a crash would)."""

    def __init__(self, store: BlobStore, index: Index, tmp: Path) -> None:
        self.store, self.index, self.tmp = store, index, tmp
        self.count = 0

    async def write(self, *, dcm: bool = True, json: bool = True, row: bool = True) -> InstanceRecord:
        self.count += 1
        path = self.tmp / f"instance-{self.count}.dcm"
        path.write_bytes(factory.ct_instance(seed=900 + self.count, rows=16, cols=16))
        record = parse_part10(path, origin="stow")
        where = (record.study_uid, record.series_uid, record.sop_uid)
        if dcm:
            await self.store.put_file(
                uids.instance_key(*where), path, sha256=record.sha256, content_type="application/dicom"
            )
        if json:
            await self.store.put_bytes(
                uids.metadata_key(*where), record.metadata, content_type="application/dicom+json"
            )
        if row:
            await self.index.add(record)
        return record


def key_of(record: InstanceRecord) -> InstanceKey:
    return record.study_uid, record.series_uid, record.sop_uid


def objects_of(*records: InstanceRecord) -> set[str]:
    return {f(*key_of(r)) for r in records for f in (uids.instance_key, uids.metadata_key)}


async def keys(store: BlobStore) -> set[str]:
    return {key async for key in store.list_keys()}


async def rows(index: Index) -> set[InstanceKey]:
    return {key async for key in index.instance_keys()}


async def test_repair_removes_what_crashed_writes_left_and_keeps_the_rest(
    store: BlobStore, index: Index, tmp_path: Path, leave_unfinished: Callable[[str], None]
) -> None:
    writer = Writer(store, index, tmp_path)
    committed = await writer.write()
    await writer.write(row=False)  # killed before the index row
    await writer.write(json=False, row=False)  # killed before the metadata
    await writer.write(dcm=False, row=False)  # an instance object deleted by hand
    lost = await writer.write()
    await store.delete(uids.instance_key(*key_of(lost)))  # the store lost a committed object
    await store.put_bytes("studies/1.2/notes.txt", b"not ours", content_type="text/plain")
    leave_unfinished("studies/1.2/series/3/instances/4.dcm")
    everything = await keys(store)
    warnings: list[str] = []

    # Within the grace period nothing young is touched (it may be a write in flight), but a row
    # without its object is never in flight: objects are written before rows.
    young = await repair(store, index, warn=warnings.append)
    assert young == RepairReport(dangling_rows=1, young_kept=4, foreign_keys=1)
    assert warnings == [
        f"index row without its object: {uids.instance_key(*key_of(lost))} (lost from the store); row removed"
    ]
    assert await rows(index) == {key_of(committed)}
    assert await keys(store) == everything - objects_of(lost)

    dry = await repair(store, index, grace=0, dry_run=True, now=time.time() + LATER)
    expected = RepairReport(orphan_instances=2, orphan_metadata=2, unfinished_writes=1, foreign_keys=1)
    assert dry == expected
    assert await keys(store) == everything - objects_of(lost)
    assert [w async for w in store.list_unfinished(time.time() + LATER)] != []

    assert await repair(store, index, grace=0, now=time.time() + LATER) == expected
    assert await keys(store) == objects_of(committed) | {"studies/1.2/notes.txt"}
    assert await rows(index) == {key_of(committed)}
    assert [w async for w in store.list_unfinished(time.time() + LATER)] == []
    assert await repair(store, index, grace=0, now=time.time() + LATER) == RepairReport(foreign_keys=1)


async def test_repair_refuses_an_index_that_looks_lost(store: BlobStore, index: Index, tmp_path: Path) -> None:
    writer = Writer(store, index, tmp_path)
    await writer.write(row=False)
    with pytest.raises(IndexLooksLost, match="rebuild it with `reindex`"):
        await repair(store, index, grace=0, now=time.time() + LATER)
    assert len(await keys(store)) == 2


async def test_repair_removes_the_versions_no_row_names(store: BlobStore, index: Index, tmp_path: Path) -> None:
    # An instance corrected twice (its original and first correction kept, its second current),
    # then corrections whose replicas were killed: one whose operation failed (its objects are
    # orphans), one still running (a correction in flight: its objects stay).
    assert isinstance(index, Corrections)
    record = await Writer(store, index, tmp_path).write()
    where = key_of(record)
    for old, new in (("", "v1"), ("v1", "v2")):
        await version_objects(store, where, new)
        replacement = Replacement(dataclasses.replace(record, version=new), old, record.sha256)
        assert await index.replace_instances(record.study_uid, [replacement], RemovalCause("update")) == [where[2]]
    for version, status in (("v3", "failed"), ("v4", "running")):
        await version_objects(store, where, version)
        await index.save_operation(Operation(version, "update", status, 1.0, 1.0, 0, {}, {}, "replica-a"))
    everything = await keys(store)
    orphans = {uids.instance_key(*where, "v3"), uids.metadata_key(*where, "v3")}

    assert await repair(store, index) == RepairReport(young_kept=8)  # within the grace period
    dry = await repair(store, index, grace=0, dry_run=True, now=time.time() + LATER)
    assert dry == RepairReport(orphan_versions=2)
    assert await keys(store) == everything
    assert await repair(store, index, grace=0, now=time.time() + LATER) == RepairReport(orphan_versions=2)
    assert await keys(store) == everything - orphans
    assert await repair(store, index, grace=0, now=time.time() + LATER) == RepairReport()


async def test_repair_refuses_an_index_that_lost_corrected_instances(
    store: BlobStore, index: Index, tmp_path: Path
) -> None:
    # Only a corrected version left in the store (its original's time was over): still the
    # index looks lost, not the version orphaned.
    record = await Writer(store, index, tmp_path).write(dcm=False, json=False, row=False)
    await version_objects(store, key_of(record), "v1")
    with pytest.raises(IndexLooksLost):
        await repair(store, index, grace=0, now=time.time() + LATER)
    assert len(await keys(store)) == 2


async def test_reindex_skips_the_versions_of_a_correction_cut_short(
    store: BlobStore, index: Index, tmp_path: Path
) -> None:
    # A correction of two studies whose replica was killed after committing the first: both
    # have a version in the store, the index records the operation running. A rebuild before
    # that operation is failed takes the first study's version and the second's original.
    assert isinstance(index, Corrections)
    writer = Writer(store, index, tmp_path)
    committed, cut_short = await writer.write(), await writer.write()
    operation = "0" * 13 + "a" * 19
    for record in (committed, cut_short):
        local = tmp_path / "stored.dcm"
        await store.download(uids.instance_key(*key_of(record)), local)
        await store.put_bytes(
            uids.instance_key(*key_of(record), operation), local.read_bytes(), content_type="application/dicom"
        )
    replacement = Replacement(dataclasses.replace(committed, version=operation), "", committed.sha256)
    await index.replace_instances(committed.study_uid, [replacement], RemovalCause("update"))
    request = {"studyInstanceUids": [committed.study_uid, cut_short.study_uid]}
    await index.save_operation(Operation(operation, "update", "running", 1.0, 1.0, 50, request, {}, "replica-a"))

    assert await reindex(store, index, progress=False) == (2, 0)
    versions = {key: (await index.get(*key)) for key in (key_of(committed), key_of(cut_short))}
    assert {key: None if record is None else record.version for key, record in versions.items()} == {
        key_of(committed): operation,
        key_of(cut_short): "",
    }


async def version_objects(store: BlobStore, where: InstanceKey, version: str) -> None:
    await store.put_bytes(uids.instance_key(*where, version), b"part 10", content_type="application/dicom")
    await store.put_bytes(uids.metadata_key(*where, version), b"{}", content_type="application/dicom+json")


class _CommittedDuringRepair:
    """The index as a repair sees it when an upload commits an instance just after the repair
    checked it (a race a real index cannot be made to lose on demand): ``indexed`` answers from
    before the commit, everything else is the real index."""

    def __init__(self, index: Index, late: InstanceKey) -> None:
        self._index, self._late = index, late

    async def indexed(self, keys: Any) -> set[InstanceKey]:
        return await self._index.indexed(keys) - {self._late}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._index, name)


async def test_repair_keeps_an_instance_committed_while_it_runs(store: BlobStore, index: Index, tmp_path: Path) -> None:
    writer = Writer(store, index, tmp_path)
    await writer.write()
    late = await writer.write()
    racing: Any = _CommittedDuringRepair(index, key_of(late))
    report = await repair(store, racing, grace=0, now=time.time() + LATER)
    assert (report.orphan_instances, report.orphan_metadata) == (0, 0)
    assert objects_of(late) <= await keys(store)


class _WrittenAgainDuringRepair:
    """The store as a repair sees it when an upload writes a lost object again while the repair
    looks at its row: the first ``stat`` of that key says absent, later ones the truth."""

    def __init__(self, store: BlobStore, key: str) -> None:
        self._store, self._key, self._missed = store, key, False

    async def stat(self, key: str) -> ObjectInfo | None:
        if key == self._key and not self._missed:
            self._missed = True
            return None
        return await self._store.stat(key)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


async def test_repair_keeps_a_row_whose_object_is_written_again(store: BlobStore, index: Index, tmp_path: Path) -> None:
    writer = Writer(store, index, tmp_path)
    record = await writer.write()
    key = uids.instance_key(*key_of(record))
    racing: Any = _WrittenAgainDuringRepair(store, key)
    racing.list_objects = _hiding(store, key)  # the listing ran before the object came back
    report = await repair(racing, index, grace=0, now=time.time() + LATER)
    assert report.dangling_rows == 0
    assert await index.get(*key_of(record)) == record
    assert objects_of(record) <= await keys(store)


def _hiding(store: BlobStore, hidden: str) -> Callable[..., AsyncIterator[Any]]:
    async def list_objects(prefix: str = "") -> AsyncIterator[Any]:
        async for listed in store.list_objects(prefix):
            if listed.key != hidden:
                yield listed

    return list_objects


# -- the spool sweep ------------------------------------------------------------------------------


def test_sweep_removes_only_the_spools_of_dead_processes(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    mine = process_spool_dir(root)
    mine.mkdir(parents=True)
    (mine / "multipart-1.part").write_bytes(b"in use")
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    dead = root / mine.name.replace(f"stow-{os.getpid()}-", f"stow-{child.pid}-", 1)
    (dead / "sub").mkdir(parents=True)
    (dead / "multipart-2.part").write_bytes(b"left by a killed process")
    (dead / "sub" / ".zip-3").write_bytes(b"and this")
    elsewhere = root / f"stow-{child.pid}-0-another-host"  # cannot be checked from here
    elsewhere.mkdir()
    (root / "pacs").mkdir()  # not a STOW spool
    assert sweep_dead_spools(root, remove=False) == 2
    assert dead.exists()
    assert sweep_dead_spools(root) == 2
    assert sorted(p.name for p in root.iterdir()) == sorted([mine.name, elsewhere.name, "pacs"])
    assert (mine / "multipart-1.part").read_bytes() == b"in use"
    assert sweep_dead_spools(tmp_path / "absent") == 0


def test_a_recycled_pid_does_not_keep_a_dead_spool(tmp_path: Path) -> None:
    # This process's pid with another start time: the directory of an earlier process that had
    # the same pid.
    root = tmp_path / "spool"
    pid, start, host = process_spool_dir(root).name.removeprefix("stow-").split("-", 2)
    if start == "0":
        pytest.fail("no /proc start times on this machine: the sweep cannot tell recycled pids")
    earlier = root / f"stow-{pid}-{int(start) - 1}-{host}"
    earlier.mkdir(parents=True)
    (earlier / "multipart-1.part").write_bytes(b"x")
    assert sweep_dead_spools(root) == 1
    assert not earlier.exists()


# -- the command line -----------------------------------------------------------------------------


def cli(data: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DICOMWEB_GATEWAY_", "AWS_"))}
    return subprocess.run(
        [sys.executable, "-m", "gateway", "reindex", "--data", str(data), *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def test_reindex_repair_command(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "objects").mkdir(parents=True)
    store, index = FileBlobStore(data / "objects"), SqliteIndex(data / "index.sqlite3")
    writer = Writer(store, index, tmp_path)
    committed = await writer.write()
    await writer.write(row=False)
    await index.aclose()

    assert cli(data, "--grace", "0").returncode == 2  # --grace goes with --repair
    assert cli(data, "--repair", "--grace", "-1").returncode == 2
    kept = cli(data, "--repair")
    assert kept.returncode == 0, kept.stderr
    assert "objects without an index row younger than 900 s kept: 2" in kept.stdout
    dry = cli(data, "--repair", "--grace", "0", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.startswith("dry run: nothing was changed")
    assert "instance objects without an index row deleted: 1" in dry.stdout
    assert len(await keys(store)) == 4
    done = cli(data, "--repair", "--grace", "0")
    assert done.returncode == 0, done.stderr
    assert "instance objects without an index row deleted: 1\n" in done.stdout
    assert "metadata objects without an indexed instance deleted: 1\n" in done.stdout
    assert await keys(store) == objects_of(committed)
