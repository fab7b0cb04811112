"""``dicomweb-gateway reindex --repair``: reconcile the object store with the index, in place.

A STOW writes the Part 10 object, then its metadata JSON, then the index row, and acknowledges
the instance only after all three (:mod:`gateway.services.instance_writer`). So **the index row is the
commit point**: an object without a row was never acknowledged, and a process killed at any
moment leaves at most objects without a row, an unfinished S3 multipart upload (or a file store
temp file), and spooled request parts. The repair removes exactly those, and does not clear the
index, so it may run beside live gateways:

1. Objects (``.dcm`` and ``.json``) of instances without an index row, older than the grace
   period (default 15 minutes: an upload in flight writes its objects seconds before its row).
   They are deleted under an index removal (:meth:`gateway.ports.Index.begin_removal` with
   ``KeepIf.INDEXED``), so an upload of the same instance that commits meanwhile keeps them, and
   one that commits during the removal is told to write them again.
   Corrected versions (:mod:`gateway.services.bulk_update`, ``.../instances/{sop}/versions/``)
   follow the same rule, their commit point being the correction's index transaction: a
   version's objects are deleted when they are older than the grace period, their operation is
   not recorded unfinished (a correction in flight), and no index row names them, neither the
   instance's row (its current version) nor a kept version (a replaced one still retrievable).
   A replica killed during a correction leaves exactly those.
2. Index rows whose ``.dcm`` is missing: an instance the store lost, not a crash (the row is
   written last). Each is reported, and its row and metadata removed, so the index stops
   promising what cannot be served.
3. Unfinished writes started before the grace period: S3 multipart uploads aborted, file store
   temp files removed.
4. Spool directories of gateway processes of this host that are not running any more
   (:mod:`gateway.spool`), done by :func:`run_repair`.

Memory stays bounded on millions of objects: the store is listed once and checked against the
index in batches; its instance keys are remembered as 64-bit hashes only (a collision could only
hide a dangling row, never delete an object).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from gateway.dicom import uids
from gateway.ports import BlobStore, Corrections, Index, InstanceKey, KeepIf, ListedObject, RemovalCause
from gateway.services.bulk_update import NOT_STARTED, RUNNING

DEFAULT_GRACE = 15 * 60.0  # seconds
_BATCH = 500


@dataclass
class RepairReport:
    """What a repair did (or, in a dry run, would do)."""

    orphan_instances: int = 0  # .dcm objects without an index row, deleted
    orphan_metadata: int = 0  # .json objects without an indexed instance, deleted
    orphan_versions: int = 0  # objects of corrected versions no index row names, deleted
    dangling_rows: int = 0  # index rows whose .dcm was missing, removed
    unfinished_writes: int = 0  # S3 multipart uploads aborted / temp files removed
    spool_files: int = 0  # files in the spool directories of stopped processes, removed
    young_kept: int = 0  # objects without an index row younger than the grace period: kept
    foreign_keys: int = 0  # keys under studies/ that are not instance objects: left alone

    def lines(self, *, dry_run: bool, grace: float) -> list[str]:
        head = ["dry run: nothing was changed; the counts are what a repair would do"] if dry_run else []
        return [
            *head,
            f"instance objects without an index row deleted: {self.orphan_instances}",
            f"metadata objects without an indexed instance deleted: {self.orphan_metadata}",
            f"objects of corrected versions no index row names deleted: {self.orphan_versions}",
            f"index rows without their instance object removed: {self.dangling_rows}",
            f"unfinished uploads and temp files discarded: {self.unfinished_writes}",
            f"spool files of stopped gateway processes removed: {self.spool_files}",
            f"objects without an index row younger than {grace:g} s kept: {self.young_kept}",
            f"keys that are not instance objects left alone: {self.foreign_keys}",
        ]


class IndexLooksLost(Exception):
    """The index is empty while the store holds instances: a repair would delete them all."""


def _warn(message: str) -> None:
    print(message, file=sys.stderr)


async def repair(
    store: BlobStore,
    index: Index,
    *,
    grace: float = DEFAULT_GRACE,
    dry_run: bool = False,
    now: float | None = None,
    warn: Callable[[str], None] = _warn,
) -> RepairReport:
    """Steps 1-3 of the module docstring; returns the counts."""
    cutoff = (time.time() if now is None else now) - grace
    report = RepairReport()
    if await _index_is_empty(index):
        async for listed in store.list_objects("studies/"):
            if uids.parse_instance_key(listed.key) is not None or uids.parse_version_key(listed.key) is not None:
                raise IndexLooksLost(
                    "the index is empty but the store holds instances: rebuild it with `reindex` (without --repair)"
                )
    sweep = _OrphanSweep(store, index, cutoff, dry_run, report)
    async for listed in store.list_objects("studies/"):
        await sweep.add(listed)
    await sweep.flush()
    async for key in index.instance_keys():
        if hash(uids.instance_key(*key)) not in sweep.present and await _drop_dangling(store, index, key, dry_run):
            warn(f"index row without its object: {uids.instance_key(*key)} (lost from the store); row removed")
            report.dangling_rows += 1
    unfinished = [write async for write in store.list_unfinished(cutoff)]
    for write in unfinished:
        if not dry_run:
            await store.discard_unfinished(write)
        report.unfinished_writes += 1
    return report


async def _index_is_empty(index: Index) -> bool:
    async for _ in index.instance_keys(page_size=1):
        return False
    return True


class _OrphanSweep:
    """Step 1 over a store listing, in batches of index lookups."""

    def __init__(self, store: BlobStore, index: Index, cutoff: float, dry_run: bool, report: RepairReport) -> None:
        self._store = store
        self._index = index
        self._cutoff = cutoff
        self._dry_run = dry_run
        self._report = report
        self._pending: list[tuple[ListedObject, InstanceKey, bool]] = []  # (object, instance, is .dcm)
        self._removed: set[InstanceKey] = set()
        self.present: set[int] = set()  # hash() of every .dcm key listed

    async def add(self, listed: ListedObject) -> None:
        key = listed.key
        as_dcm = key[: -len(".json")] + ".dcm" if key.endswith(".json") else key
        versioned = uids.parse_version_key(as_dcm)
        if versioned is not None and isinstance(self._index, Corrections):
            if listed.modified >= self._cutoff:
                self._report.young_kept += 1
            elif not await self._version_is_named(*versioned):
                if not self._dry_run:
                    await self._store.delete(key)
                self._report.orphan_versions += 1
            return
        instance = uids.parse_instance_key(as_dcm)
        if instance is None:
            self._report.foreign_keys += 1
            return
        is_instance = key.endswith(".dcm")
        if is_instance:
            self.present.add(hash(key))
        self._pending.append((listed, instance, is_instance))
        if len(self._pending) >= _BATCH:
            await self.flush()

    async def flush(self) -> None:
        pending, self._pending = self._pending, []
        if not pending:
            return
        indexed = await self._index.indexed({instance for _, instance, _ in pending})
        for listed, instance, is_instance in pending:
            if instance in indexed:
                continue
            if instance not in self._removed:
                if listed.modified >= self._cutoff:
                    self._report.young_kept += 1
                    continue
                if not await self._remove(instance):
                    continue  # committed meanwhile: it stays
            if is_instance:
                self._report.orphan_instances += 1
            else:
                self._report.orphan_metadata += 1

    async def _version_is_named(self, instance: InstanceKey, version: str) -> bool:
        """Whether the version is (or may become) committed: its operation still runs, or the
        instance's row or one of its kept versions names it. The operation is asked first: once
        it is finished, no commit of that version can follow."""
        assert isinstance(self._index, Corrections)
        operation = await self._index.operation(version)
        if operation is not None and operation.status in (NOT_STARTED, RUNNING):
            return True
        record = await self._index.get(*instance)
        if record is not None and record.version == version:
            return True
        return any(kept.version == version for kept in await self._index.kept_versions(instance[2]))

    async def _remove(self, instance: InstanceKey) -> bool:
        """Delete an unindexed instance's objects unless it gets indexed meanwhile."""
        if self._dry_run:
            self._removed.add(instance)
            return True
        study, series, sop = instance
        token = await self._index.begin_removal(study, series, sop, keep_if=KeepIf.INDEXED)
        if token is None:
            return False
        try:
            await self._store.delete(uids.instance_key(study, series, sop))
            await self._store.delete(uids.metadata_key(study, series, sop))
        finally:
            await self._index.end_removal(sop, token)
        self._removed.add(instance)
        return True


async def _drop_dangling(store: BlobStore, index: Index, key: InstanceKey, dry_run: bool) -> bool:
    """Step 2 for one row the listing did not see: True when its object is really missing (and,
    unless a dry run, the row and metadata are removed)."""
    study, series, sop = key
    record = await index.get(study, series, sop)
    # A corrected instance (gateway.services.bulk_update) lives at its version's key.
    if record is None or await store.stat(record.object_key) is not None:
        return False  # removed, or written after the listing passed its place
    if dry_run:
        return True
    token = await index.begin_removal(study, series, sop, keep_if=KeepIf.NEVER, cause=RemovalCause("repair"))
    restore = False
    try:
        # An upload of the same bytes may have written the object again in the meantime (its
        # row was there, so it was told "stored"): then the row comes back, as it was.
        info = await store.stat(record.object_key)
        restore = info is not None and info.sha256 == record.sha256
        if not restore:
            await store.delete(uids.metadata_key(study, series, sop, record.version))
    finally:
        if token is not None:
            await index.end_removal(sop, token)
    if restore:
        await index.add(record)
    return not restore
