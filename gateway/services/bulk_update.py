"""Metadata correction of whole studies, Microsoft's ``$bulkUpdate``: ``POST
{base}/studies/$bulkUpdate`` starts an operation that ``GET {base}/operations/{id}`` reports.

Per study, in order (each study is all or nothing):

1. every instance's stored Part 10 object is read, the correction applied
   (:func:`gateway.dicom.correction.apply_correction`: the header changes, pixel data is copied
   as stored) and parsed again (frame offsets move with the header), and the result written
   create-only as a *new* object, the operation's version of it
   (``.../instances/{sop}/versions/{operation}.dcm`` and its metadata JSON), never over the
   original;
2. one index transaction (:meth:`gateway.ports.Corrections.replace_instances`) switches every
   row of the study to its new version, records the replaced versions as kept, updates the
   study row, and writes one change-feed ``update`` entry per instance.

Step 2 is the commit point, as the index row is for a STOW: before it every reader sees the old
version, after it the new one, nothing in between. A process killed before it leaves new
objects that no row names; they are removed when the process starts again and finds its
operation unfinished, or, when it does not start again, by another replica once the operation's
heartbeat stopped (below). The operation is then reported ``failed``; studies it committed
before stay corrected.

A row that changed since step 1 read it (deleted, stored anew, corrected by another request) is
left alone, and its new object removed.

Several replicas: the replica running an operation sets its ``updated`` time every
``bulk_update_heartbeat_seconds``. Every replica looks as often for unfinished operations of
another replica not updated for ``bulk_update_stale_seconds``, takes them over (one index
statement: of several replicas asking at once, one gets each) and abandons them as above. Only
the holder may save an operation, and a replica that finds at its next heartbeat that its
operation was taken over cancels it, removing the new objects of the study it was in: a replica
that was only paused longer than the stale time cannot report it running again. Nor can it
commit a study after the take-over: step 2 first checks, in its transaction, that this replica
still holds the operation (on PostgreSQL locking the operation's row, so that a take-over
waits for a commit under way and then finds the study committed).

The replaced versions stay retrievable (``GET .../instances/{sop}/original``) for
``bulk_update_keep_original_seconds``, then a sweep deletes their objects and forgets them.
Who may: the ``admin`` scope (the HTTP security middleware); a study-restricted principal only
inside its restriction (other studies are reported as not found, as absent ones are).
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
from anyio.abc import TaskGroup

from gateway.dicom import uids
from gateway.dicom.correction import Correction, apply_correction
from gateway.dicom.parse import ParseLimits, parse_part10
from gateway.dicom.rejection import InstanceRejected
from gateway.errors import AlreadyExists, Conflict, GatewayError, NotFound, OperationTakenOver, ServiceUnavailable
from gateway.ports import (
    BlobStore,
    Corrections,
    Index,
    InstanceKey,
    InstanceRecord,
    KeptVersion,
    Operation,
    RemovalCause,
    Replacement,
)
from gateway.security.access import Restriction
from gateway.security.audit import AccessRecord
from gateway.security.principal import Principal
from gateway.services.visibility import Visibility

log = logging.getLogger(__name__)

KIND = "update"
NOT_STARTED, RUNNING, SUCCEEDED, FAILED = "notStarted", "running", "succeeded", "failed"
# Seconds between sweeps of kept versions whose time is over (sooner when they are kept less long).
SWEEP_INTERVAL = 600.0
_SWEEP_BATCH = 500

AuditWriter = Callable[[AccessRecord], None]


class BulkUpdateService:
    def __init__(
        self,
        store: BlobStore,
        index: Index,
        visibility: Visibility,
        parse_limits: ParseLimits,
        spool_dir: Path,
        *,
        keep_seconds: float,
        heartbeat_seconds: float = 10.0,
        stale_seconds: float = 60.0,
    ) -> None:
        self._store = store
        self._index = index
        self._corrections = index if isinstance(index, Corrections) else None
        self._visibility = visibility
        self._limits = parse_limits
        self._spool_dir = spool_dir
        self._keep_seconds = keep_seconds
        self._heartbeat_seconds = heartbeat_seconds
        self._stale_seconds = stale_seconds
        self._running: dict[str, anyio.CancelScope] = {}  # operations this replica runs
        self._to_abandon: dict[str, Operation] = {}  # taken over, not yet abandoned (the store was away)
        self._tasks: TaskGroup | None = None
        self._holder = "local"
        self._audit: AuditWriter | None = None

    async def start(self, tasks: TaskGroup, *, holder: str, audit: AuditWriter | None = None) -> None:
        """Run operations and the sweep of kept versions in ``tasks`` (the application's task
        group); ``holder``: this replica's name. Operations this replica left unfinished when it
        stopped are marked failed first, and their uncommitted objects removed."""
        self._tasks = tasks
        self._holder = holder
        self._audit = audit
        if self._corrections is None:
            return
        try:
            for operation in await self._corrections.running_operations(holder):
                await self._abandon(operation)
        except GatewayError as exc:  # the index is away: the next start looks again
            log.warning("could not look for unfinished operations: %s", exc.reason)
        tasks.start_soon(self._sweep_forever)
        tasks.start_soon(self._heartbeat_forever)

    # -- requests --------------------------------------------------------------------------------

    async def submit(
        self,
        studies: list[str],
        correction: Correction,
        *,
        principal: Principal | None,
        restriction: Restriction | None,
    ) -> Operation:
        """Record a new operation and start it; it runs after this returns."""
        corrections = self._require()
        if self._tasks is None:
            raise ServiceUnavailable("bulk updates run only in a serving gateway")
        now = time.time()
        operation = Operation(
            id=_new_operation_id(now),
            kind=KIND,
            status=NOT_STARTED,
            created=now,
            updated=now,
            percent_complete=0,
            request={"studyInstanceUids": studies, "changeDataset": correction.dicom_json},
            results=_results(),
            holder=self._holder,
            principal=None if principal is None else principal.audit_id,
        )
        await corrections.save_operation(operation)
        self._tasks.start_soon(self._run, operation, studies, correction, principal, restriction)
        return operation

    async def operation(self, operation_id: str, *, principal: Principal | None) -> Operation:
        """The operation; NotFound when unknown, or (for a study-restricted principal) not its own."""
        found = await self._require().operation(operation_id) if _is_operation_id(operation_id) else None
        if found is None or (
            principal is not None and principal.restriction is not None and found.principal != principal.audit_id
        ):
            raise NotFound(f"no operation {operation_id[:64]!r}")
        return found

    async def original(self, study: str, series: str, sop: str, *, restriction: Restriction | None) -> KeptVersion:
        """The version of the instance before its first correction still kept; NotFound when
        none is (never corrected, its time is over) or the study is hidden from ``restriction``."""
        kept = [k for k in await self._require().kept_versions(sop) if (k.study_uid, k.series_uid) == (study, series)]
        if not kept or not await self._visibility.study_visible(study, restriction):
            raise NotFound("no replaced version of this instance is kept")
        return kept[0]

    def stream(self, kept: KeptVersion) -> AsyncIterator[bytes]:
        """The bytes of a kept version, as stored."""
        return self._store.stream(kept.object_key)

    def _require(self) -> Corrections:
        if self._corrections is None:
            raise ServiceUnavailable("this index keeps no corrections (bulk updates need SQLite or PostgreSQL)")
        return self._corrections

    # -- running an operation ----------------------------------------------------------------------

    async def _run(
        self,
        operation: Operation,
        studies: list[str],
        correction: Correction,
        principal: Principal | None,
        restriction: Restriction | None,
    ) -> None:
        with anyio.CancelScope() as scope:
            self._running[operation.id] = scope
            try:
                await self._run_studies(operation, studies, correction, principal, restriction)
            except OperationTakenOver:
                scope.cancel()
            finally:
                del self._running[operation.id]
        if scope.cancel_called:
            log.warning("operation %s was taken over by another replica (its heartbeat had stopped)", operation.id)

    async def _run_studies(
        self,
        operation: Operation,
        studies: list[str],
        correction: Correction,
        principal: Principal | None,
        restriction: Restriction | None,
    ) -> None:
        results = _results()
        operation = await self._save(operation, RUNNING, 0, results)
        cause = RemovalCause("update", principal=operation.principal, reason=None)
        for done, study in enumerate(studies, start=1):
            try:
                updated = await self._update_study(operation.id, study, correction, restriction, cause)
            except OperationTakenOver:
                raise  # the other replica reports the operation now
            except GatewayError as exc:
                results["studyFailed"] += 1
                results["errors"].append(f"study {study}: {exc.reason}")
            else:
                results["studyUpdated"] += 1
                results["instanceUpdated"] += len(updated)
                self._write_audit(principal, operation.id, study, updated, correction)
            results["studyProcessed"] += 1
            status = RUNNING if done < len(studies) else SUCCEEDED if not results["studyFailed"] else FAILED
            try:
                operation = await self._save(operation, status, done * 100 // len(studies), results)
            except GatewayError as exc:  # the index is away: the next save (or a restart) says more
                log.warning("could not record the progress of operation %s: %s", operation.id, exc.reason)

    async def _update_study(
        self, version: str, study: str, correction: Correction, restriction: Restriction | None, cause: RemovalCause
    ) -> list[InstanceKey]:
        records = await self._index.instances(study)
        if not records or not await self._visibility.study_visible(study, restriction):
            raise NotFound("no such study is stored")  # one answer for absent and hidden alike
        written: list[InstanceRecord] = []
        try:
            self._spool_dir.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=self._spool_dir, prefix="correction-") as tmp:
                for record in records:
                    written.append(await self._new_version(record, version, correction, Path(tmp)))
            replacements = [
                Replacement(new, old.version, old.sha256) for new, old in zip(written, records, strict=True)
            ]
            switched = set(await self._require().replace_instances(study, replacements, cause, holder=self._holder))
        except BaseException:
            # Every record's version key, not only those in ``written``: a cancellation (the
            # operation taken over) can land inside ``_new_version`` after its object was put
            # and before it was returned, and that object would stay behind.
            with anyio.CancelScope(shield=True):
                await self._remove_uncommitted(study, version, records)
            raise
        await self._discard([new for new in written if new.sop_uid not in switched])
        if not switched:
            raise NotFound("the study changed while it was corrected; nothing was changed")
        return [(new.study_uid, new.series_uid, new.sop_uid) for new in written if new.sop_uid in switched]

    async def _new_version(
        self, record: InstanceRecord, version: str, correction: Correction, tmp: Path
    ) -> InstanceRecord:
        """Step 1 of the module docstring for one instance: its new version, durable."""
        source, target = tmp / "stored.dcm", tmp / "corrected.dcm"
        await self._store.download(record.object_key, source)
        try:
            await anyio.to_thread.run_sync(apply_correction, source, target, correction)
            parsed = await anyio.to_thread.run_sync(
                lambda: parse_part10(target, origin=record.origin, limits=self._limits)
            )
        except InstanceRejected as exc:
            raise Conflict(f"instance {record.sop_uid} would not be valid corrected: {exc.reason}") from exc
        except (ValueError, TypeError, AttributeError, OSError) as exc:  # pydicom could not write it
            raise Conflict(f"instance {record.sop_uid} could not be corrected: {exc}") from exc
        if (parsed.study_uid, parsed.series_uid, parsed.sop_uid) != (
            record.study_uid,
            record.series_uid,
            record.sop_uid,
        ):
            raise Conflict(f"instance {record.sop_uid} changed its UIDs when corrected")
        new = dataclasses.replace(parsed, stored_at=record.stored_at, version=version)
        metadata_key = uids.metadata_key(new.study_uid, new.series_uid, new.sop_uid, version)
        try:
            await self._store.put_instance(
                new.object_key, target, sha256=new.sha256, metadata_key=metadata_key, metadata=new.metadata
            )
        except AlreadyExists:  # the same version written before: only its metadata may be missing
            existing = await self._store.stat(new.object_key)
            if existing is None or existing.sha256 not in (None, new.sha256):
                raise
            await self._store.put_bytes(metadata_key, new.metadata, content_type="application/dicom+json")
        for path in (source, target):
            path.unlink(missing_ok=True)
        return new

    async def _discard(self, written: list[InstanceRecord]) -> None:
        """Delete new versions no row names (their correction was not committed)."""
        for new in written:
            await self._delete_version(new.study_uid, new.series_uid, new.sop_uid, new.version)

    async def _remove_uncommitted(self, study: str, version: str, known: list[InstanceRecord] | None = None) -> None:
        """Delete the objects of ``version`` of the study's instances (those of ``known`` and
        those the index has now) that no row names. Rows already at ``version`` were committed
        (a commit whose answer was lost looks like a failure) and keep theirs; when the index
        cannot say, nothing is deleted: an orphan object is better than a lost committed one."""
        try:
            current = await self._index.instances(study)
        except GatewayError as exc:
            log.warning("could not look for uncommitted versions of study %s: %s", study, exc.reason)
            return
        committed = {record.sop_uid for record in current if record.version == version}
        candidates = {record.sop_uid: record for record in [*(known or []), *current]}
        for record in candidates.values():
            if record.sop_uid not in committed:
                await self._delete_version(record.study_uid, record.series_uid, record.sop_uid, version)

    async def _delete_version(self, study: str, series: str, sop: str, version: str) -> None:
        for key in (uids.instance_key(study, series, sop, version), uids.metadata_key(study, series, sop, version)):
            try:
                await self._store.delete(key)
            except GatewayError as exc:
                log.warning("could not remove %s: %s", key, exc.reason)

    async def _save(self, operation: Operation, status: str, percent: int, results: dict[str, Any]) -> Operation:
        saved = dataclasses.replace(
            operation,
            status=status,
            updated=time.time(),
            percent_complete=percent,
            results={**results, "errors": list(results["errors"])},
        )
        await self._require().save_operation(saved)
        return saved

    async def _abandon(self, operation: Operation, why: str = "the gateway stopped while this operation ran") -> None:
        """An operation whose replica stopped while running it (this one before its restart, or
        another one whose heartbeat stopped): its committed studies stay corrected; the new
        objects of the study it was in the middle of go."""
        for study in operation.request.get("studyInstanceUids", []):
            await self._remove_uncommitted(study, operation.id)
        results = dict(operation.results)
        results["errors"] = [
            *results.get("errors", []),
            f"{why}; studies counted as updated were updated, the others not",
        ]
        await self._save(operation, FAILED, operation.percent_complete, results)

    def _write_audit(
        self,
        principal: Principal | None,
        operation_id: str,
        study: str,
        updated: list[InstanceKey],
        correction: Correction,
    ) -> None:
        if self._audit is None:
            return
        self._audit(
            AccessRecord(
                action="update",
                method="BULK-UPDATE",
                path=f"operations/{operation_id}",
                client=None,
                principal=principal,
                status=200,
                uids={"study": study},
                corrected=updated,
                correction=correction.keywords,
            )
        )

    # -- heartbeats, and operations of replicas that stopped ----------------------------------------

    async def _heartbeat_forever(self) -> None:
        while True:
            try:
                await self.heartbeat(time.time())
            except GatewayError as exc:
                log.warning("the heartbeat of bulk update operations failed: %s", exc.reason)
            await anyio.sleep(self._heartbeat_seconds)

    async def heartbeat(self, now: float) -> None:
        """Refresh the operations this replica runs (stopping those taken over), then take over
        and abandon those of replicas whose heartbeat stopped ``bulk_update_stale_seconds`` ago."""
        corrections = self._require()
        for operation_id, scope in list(self._running.items()):
            if await corrections.heartbeat_operation(operation_id, self._holder, now):
                continue
            found = await corrections.operation(operation_id)  # finished meanwhile, or taken over?
            if found is not None and found.holder != self._holder and self._running.get(operation_id) is scope:
                scope.cancel()
        for operation in await corrections.take_over_stale_operations(self._holder, now - self._stale_seconds, now):
            log.warning("operation %s: the replica running it stopped; abandoning it", operation.id)
            self._to_abandon[operation.id] = operation
        for operation in list(self._to_abandon.values()):
            why = f"the replica running this operation stopped (no heartbeat for {self._stale_seconds:g} s)"
            await self._abandon(operation, why)
            del self._to_abandon[operation.id]

    # -- the sweep of kept versions ------------------------------------------------------------------

    async def _sweep_forever(self) -> None:
        interval = min(SWEEP_INTERVAL, max(1.0, self._keep_seconds / 4))
        while True:
            try:
                await self.sweep(time.time())
            except GatewayError as exc:
                log.warning("the sweep of replaced versions failed: %s", exc.reason)
            await anyio.sleep(interval)

    async def sweep(self, now: float) -> int:
        """Delete the kept versions replaced more than ``bulk_update_keep_original_seconds``
        before ``now`` (object first, then the row: a row without its object only answers 404)."""
        corrections = self._require()
        count = 0
        while True:
            expired = await corrections.expired_versions(now - self._keep_seconds, _SWEEP_BATCH)
            for kept in expired:
                await self._delete_version(kept.study_uid, kept.series_uid, kept.sop_uid, kept.version)
                await corrections.forget_version(kept.sop_uid, kept.version)
            count += len(expired)
            if len(expired) < _SWEEP_BATCH:
                return count


def _results() -> dict[str, Any]:
    return {"studyProcessed": 0, "studyUpdated": 0, "studyFailed": 0, "instanceUpdated": 0, "errors": []}


def _new_operation_id(now: float) -> str:
    """32 hex digits that sort by creation time: the operation's id is the name of the versions
    it writes, and ``reindex`` takes the newest version of each instance."""
    return f"{int(now * 1000):013d}{uuid.uuid4().hex[:19]}"


def _is_operation_id(value: str) -> bool:
    return len(value) == 32 and all(c in "0123456789abcdef" for c in value)
