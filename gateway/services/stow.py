"""STOW-RS (PS3.18 10.5): validate, store and index each uploaded instance.

Write order, which is what makes "acknowledged means durable" true:

1. the Part 10 object is created under its UID key, create-only (never overwritten);
2. its DICOM JSON metadata object is written beside it;
3. the index row is committed.

An instance is reported in ReferencedSOPSequence only after all three returned, so **the index
row is the commit point**: an object without a row was never acknowledged. A process killed at
any moment (SIGKILL, power cut) therefore leaves at most: objects without a row (killed between
steps 1 and 3), an unfinished S3 multipart upload or a file store temp file (killed inside step
1), and its spooled request parts (``gateway.spool``) -- never an index row without its object,
so nothing acknowledged is lost. ``dicomweb-gateway reindex --repair`` (``gateway.repair``)
removes those leftovers in place, leaving anything younger than its grace period alone; a
gateway sweeps the spool of dead processes when it starts. A retried upload does not wait for
the repair: it finds the object taken, checks it is byte-identical (SHA-256) and completes steps
2 and 3. The same holds for a concurrent or repeated upload of the same bytes, so exactly one
copy exists.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import anyio
import orjson

from gateway import observability
from gateway.dicom import transcode, uids
from gateway.dicom.media import EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN
from gateway.dicom.parse import InstanceRejected, ParseLimits, parse_part10
from gateway.dicom.query import Match, QidoQuery
from gateway.errors import AlreadyExists, GatewayError, IndexOutcomeUnknown, ServiceUnavailable
from gateway.ports import AddOutcome, BlobStore, Index, InstanceRecord, KeepIf
from gateway.security.access import Restriction
from gateway.services.claims import Claimant, InstanceClaims

log = logging.getLogger(__name__)

# PS3.18 Table 10.5.3-2 / PS3.4 Annex B failure reasons used by the store service itself.
FAILURE_PROCESSING = 0x0110
FAILURE_DUPLICATE_SOP = 0x0111  # PS3.7 C.4.2.1.4: a different object under a stored SOP Instance UID
FAILURE_STUDY_MISMATCH = 0xA900  # instance does not belong to the study named in the URL
FAILURE_UNSUPPORTED_MEDIA = 0xC000
FAILURE_NOT_AUTHORIZED = 0x0124  # PS3.7 C.4.2.1.4 "Refused: Not Authorized"

# Pauses between attempts while another replica removes the same instance (about 10 s in all).
_REMOVAL_WAITS = (0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.5, 2.0, 2.0, 2.0)


class UploadedPart(Protocol):
    """What the service needs of one spooled multipart part."""

    @property
    def content_type(self) -> str | None: ...

    @property
    def path(self) -> Path: ...


@dataclass(frozen=True)
class _OwnedPart:
    """A part whose spooled file the service has taken over from the multipart reader."""

    content_type: str | None
    path: Path


def _first_gateway_error(group: BaseExceptionGroup) -> BaseException:
    """The error to report from a failed pipeline: the first GatewayError (a client or store
    error), else the first error of any kind (a bug: it becomes a 500)."""
    flat: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            flat.append(exc)

    walk(group)
    for exc in flat:
        if isinstance(exc, GatewayError):
            return exc
    return flat[0]


@dataclass(frozen=True)
class StoredInstance:
    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    created: bool = True  # False when an identical copy was already stored (nothing new to undo)


@dataclass(frozen=True)
class FailedInstance:
    sop_class_uid: str | None
    sop_instance_uid: str | None
    failure_reason: int
    detail: str
    conflict: bool = False  # the data is fine but clashes with the request or the store
    retry_after: int | None = None  # the store or index was unavailable: worth retrying later
    study_uid: str | None = None  # when the data set could be read (for the audit trail)


@dataclass
class StowOutcome:
    stored: list[StoredInstance] = field(default_factory=list)
    failed: list[FailedInstance] = field(default_factory=list)

    @property
    def http_status(self) -> int:
        """PS3.18 10.5.3.1: 200 all stored; 202 some stored; none stored: 409 when a failure is a
        conflict (study mismatch, duplicate SOP Instance UID), else 400 (the data is unusable)."""
        if not self.failed:
            return 200
        if self.stored:
            return 202
        return 409 if any(f.conflict for f in self.failed) else 400


class StowService:
    def __init__(
        self,
        store: BlobStore,
        index: Index,
        parse_limits: ParseLimits,
        *,
        parse_threads: int = 2,
        pipeline: int = 8,
        compress_to: str | None = None,
    ) -> None:
        self._store = store
        self._index = index
        self._parse_limits = parse_limits
        # Lossless compression on ingest (settings.storage_compression): a transfer syntax UID.
        self._compress_to = compress_to
        self._parse_limiter = anyio.CapacityLimiter(parse_threads)
        self._claims = InstanceClaims()
        self._pipeline = pipeline

    async def store_parts(
        self, parts: AsyncIterator[UploadedPart], *, study_uid: str | None, restriction: Restriction | None = None
    ) -> StowOutcome:
        """Store every part; per-instance failures are collected, not raised.

        Up to ``pipeline`` instances are parsed and written at once while the body keeps
        streaming in: parsing is CPU work and the durable writes are mostly waiting on fsync, so
        overlapping them is what makes a many-instance upload fast. The outcome keeps part order.
        """
        results: list[StoredInstance | FailedInstance | None] = []
        request = Claimant()
        slots = anyio.Semaphore(self._pipeline)

        async def store(index: int, content_type: str | None, path: Path) -> None:
            try:
                part = _OwnedPart(content_type, path)
                # A part being written is finished, then undone below if the request fails (a
                # client hanging up cancels the pipeline): a write cut short could leave an object
                # whose creation was never learnt of (an S3 multipart complete) or an index commit
                # of unknown outcome, neither of which the undo would find.
                with anyio.CancelScope(shield=True):
                    results[index] = await self.store_one(
                        part, study_uid=study_uid, restriction=restriction, claimant=request
                    )
            finally:
                # A metadata-only operation on the local spool disk: not worth a thread hop.
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                slots.release()

        try:
            try:
                async with anyio.create_task_group() as tg:
                    async for part in parts:
                        await slots.acquire()
                        # The reader deletes a part's file when it reads on: take it over first.
                        owned = part.path.with_name(f".stow-{uuid.uuid4().hex}")
                        os.replace(part.path, owned)
                        results.append(None)
                        tg.start_soon(store, len(results) - 1, part.content_type, owned)
            except BaseExceptionGroup as group:
                raise _first_gateway_error(group) from None
        except GatewayError as exc:
            if exc.status < 500:
                # The request is refused as a whole (a limit hit, a malformed body): the client is
                # told nothing was stored, so what only this request created does not stay behind.
                # Server-side failures keep what is stored: the retry finds identical duplicates.
                with anyio.CancelScope(shield=True):
                    for result in results:
                        if isinstance(result, StoredInstance) and result.created:
                            await self._undo(result, request)
            raise
        finally:
            self._claims.release_all(request)
        outcome = StowOutcome()
        for result in results:
            if isinstance(result, StoredInstance):
                outcome.stored.append(result)
                observability.stow_instances(stored=1)
            elif result is not None:
                outcome.failed.append(result)
                observability.stow_instances(failed=1)
        unavailable = [f.retry_after for f in outcome.failed if f.retry_after is not None]
        if unavailable and not outcome.stored:
            # Nothing stored, and the store or index is why: the request as a whole is unavailable
            # (503 + Retry-After), not refused.
            reason = next(f.detail for f in outcome.failed if f.retry_after is not None)
            raise ServiceUnavailable(reason, retry_after=max(unavailable))
        return outcome

    async def _undo(self, stored: StoredInstance, request: Claimant) -> None:
        async with self._claims.undoing(stored.sop_instance_uid, request) as sole:
            if not sole:
                return  # another upload in this process relies on this instance now: it stays
            # Another replica's upload may have been told it is stored: the index knows (KeepIf.SHARED).
            await self._remove(stored.study_uid, stored.series_uid, stored.sop_instance_uid, KeepIf.SHARED)

    async def store_one(
        self,
        part: UploadedPart,
        *,
        study_uid: str | None,
        restriction: Restriction | None = None,
        claimant: Claimant | None = None,
    ) -> StoredInstance | FailedInstance:
        # A part without Content-Type takes the multipart type parameter (RFC 2387 3.1).
        media = (part.content_type or "application/dicom").split(";", 1)[0].strip().lower()
        if media and media != "application/dicom":
            return FailedInstance(
                None, None, FAILURE_UNSUPPORTED_MEDIA, f"part media type {media} is not application/dicom"
            )
        try:
            record = await anyio.to_thread.run_sync(self._parse, part.path, limiter=self._parse_limiter)
        except InstanceRejected as exc:
            return FailedInstance(exc.sop_class_uid, exc.sop_instance_uid, exc.failure_code, exc.reason)
        if study_uid is not None and record.study_uid != study_uid:
            return FailedInstance(
                record.sop_class_uid,
                record.sop_uid,
                FAILURE_STUDY_MISMATCH,
                f"StudyInstanceUID {record.study_uid} does not match the study {study_uid} in the request URL",
                conflict=True,
                study_uid=record.study_uid,
            )
        try:
            return await self._store_parsed(record, part.path, restriction, claimant)
        except ServiceUnavailable as exc:
            # The store or index failed for this instance (its own writes are undone, or left
            # uncommitted for ``reindex --repair``); others of the request may be stored, and the
            # response says which (PS3.18 10.5.3: 202), so nothing unacknowledged stays indexed.
            return FailedInstance(
                record.sop_class_uid,
                record.sop_uid,
                FAILURE_PROCESSING,
                exc.reason,
                retry_after=exc.retry_after,
                study_uid=record.study_uid,
            )

    async def _store_parsed(
        self, record: InstanceRecord, path: Path, restriction: Restriction | None, claimant: Claimant | None
    ) -> StoredInstance | FailedInstance:
        if restriction is not None and not await self._permitted(record, restriction):
            # Checked before anything is stored or compared, so a restricted principal learns
            # nothing about studies outside its restriction (gateway.security.access).
            return FailedInstance(
                record.sop_class_uid,
                record.sop_uid,
                FAILURE_NOT_AUTHORIZED,
                "this instance is outside the studies the credentials may write",
                conflict=True,
                study_uid=record.study_uid,
            )
        if self._compress_to is None or not self._compressible(record):
            return await self.persist(record, path, claimant=claimant)
        compressed = path.with_name(path.name + ".compressed")
        try:
            record = await anyio.to_thread.run_sync(
                self._compress, path, compressed, self._compress_to, limiter=self._parse_limiter
            )
            return await self.persist(record, compressed, claimant=claimant)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(compressed)

    def _compressible(self, record: InstanceRecord) -> bool:
        """Uncompressed pixel data the configured lossless syntax can hold (else stored as received)."""
        return (
            self._compress_to is not None
            and record.transfer_syntax in (EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN)
            and record.pixel is not None
            and transcode.can_encode(self._compress_to, record.pixel)
        )

    def _compress(self, source: Path, target: Path, syntax: str) -> InstanceRecord:
        """Re-encode ``source`` losslessly into ``target`` and parse that: the stored object. The
        encoders are deterministic, so re-sending the same upload finds an identical object."""
        target.write_bytes(transcode.transcode_instance(source, syntax))
        return parse_part10(target, origin="stow", limits=self._parse_limits)

    async def _permitted(self, record: InstanceRecord, restriction: Restriction) -> bool:
        """A listed study; or a listed PatientID for a new study or one already visible."""
        if record.study_uid in restriction.study_uids:
            return True
        if patient_id(record.metadata) not in restriction.patient_ids:
            return False
        match = Match(
            tag="0020000D", vr="UI", level="study", kind="single", value=record.study_uid, values=(record.study_uid,)
        )
        existing = QidoQuery(level="study", matches=(match,), limit=1)
        if not (await self._index.search(existing)).rows:
            return True
        visible = dataclasses.replace(existing, restriction=restriction)
        return bool((await self._index.search(visible)).rows)

    def _parse(self, path: Path) -> InstanceRecord:
        return parse_part10(path, origin="stow", limits=self._parse_limits)

    async def persist(
        self, record: InstanceRecord, path: Path, *, claimant: Claimant | None = None
    ) -> StoredInstance | FailedInstance:
        """Steps 1-3 of the module docstring for one parsed instance.

        ``claimant`` keeps its claim on the instance after this returns (a STOW request holds it
        until its response is decided); without one the claim lasts for this call only.
        """
        who = claimant or Claimant()
        await self._claims.claim(record.sop_uid, who)
        try:
            return await self._persist(record, path, who)
        finally:
            if claimant is None:
                self._claims.release_all(who)

    async def _persist(self, record: InstanceRecord, path: Path, who: Claimant) -> StoredInstance | FailedInstance:
        # REMOVING: an undo or sweep on another replica is deleting this instance's objects; once
        # it is over they are written again (the removal blocks the index, not the store).
        created = False
        for wait in _REMOVAL_WAITS:
            written = await self._write_objects(record, path, who)
            if isinstance(written, FailedInstance):
                return written
            created = created or written[0]  # an earlier attempt's object counts as ours too
            added = written[1]
            if added is not AddOutcome.REMOVING:
                break
            await anyio.sleep(wait)
        else:
            raise ServiceUnavailable(
                f"SOPInstanceUID {record.sop_uid} is being removed by another request; retry later", retry_after=5
            )
        if added is AddOutcome.CONFLICT:
            # Same SOP Instance UID already indexed with other bytes (e.g. under another series).
            if created:
                await self._discard_unindexed(record, who)
            return self._duplicate(record)
        return StoredInstance(
            record.sop_class_uid,
            record.sop_uid,
            record.study_uid,
            record.series_uid,
            created=created and added is AddOutcome.INSERTED,
        )

    async def _write_objects(
        self, record: InstanceRecord, path: Path, who: Claimant
    ) -> tuple[bool, AddOutcome] | FailedInstance:
        """Steps 1-3 once: (whether this call created the object, the index's answer)."""
        key = uids.instance_key(record.study_uid, record.series_uid, record.sop_uid)
        created = True
        try:
            await self._store.put_file(key, path, sha256=record.sha256, content_type="application/dicom")
        except AlreadyExists:
            created = False
            existing = await self._store.stat(key)
            if existing is None or existing.sha256 != record.sha256:
                return self._duplicate(record)
        try:
            await self._store.put_bytes(
                uids.metadata_key(record.study_uid, record.series_uid, record.sop_uid),
                record.metadata,
                content_type="application/dicom+json",
            )
            return created, await self._index.add(record)
        except BaseException as exc:
            # Unacknowledged: leave nothing we alone created behind (the reindex sweeps the rest),
            # unless the index may have committed the row after all.
            if created and not isinstance(exc, IndexOutcomeUnknown):
                with anyio.CancelScope(shield=True):
                    await self._discard_unindexed(record, who)
            raise

    async def _discard_unindexed(self, record: InstanceRecord, who: Claimant) -> None:
        async with self._claims.undoing(record.sop_uid, who) as sole:
            if sole:
                await self._remove(record.study_uid, record.series_uid, record.sop_uid, KeepIf.INDEXED)

    async def _remove(self, study: str, series: str, sop: str, keep_if: KeepIf) -> None:
        """Delete an instance's row and objects unless ``keep_if``; see Index.begin_removal."""
        try:
            token = await self._index.begin_removal(study, series, sop, keep_if=keep_if)
        except GatewayError as exc:
            if keep_if is not KeepIf.INDEXED:
                log.warning("could not unindex %s: %s", sop, exc.reason)
                return  # an indexed instance must keep its objects
            # Not indexed, and with the index unreachable no replica can commit it either: the
            # objects go now (what fails here is left for ``reindex --repair``).
            token = None
            log.info("index unavailable (%s); removing the uncommitted objects of %s", exc.reason, sop)
        else:
            if token is None:
                return
        await self._delete_objects(study, series, sop)
        if token is not None:
            try:
                await self._index.end_removal(sop, token)
            except GatewayError as exc:  # the removal lapses (REMOVAL_LAPSE)
                log.warning("could not end the removal of %s: %s", sop, exc.reason)

    async def _delete_objects(self, study: str, series: str, sop: str) -> None:
        for key in (uids.instance_key(study, series, sop), uids.metadata_key(study, series, sop)):
            try:
                await self._store.delete(key)
            except GatewayError as exc:  # the reindex sweeps what cannot be deleted now
                log.warning("could not remove %s: %s", key, exc.reason)

    @staticmethod
    def _duplicate(record: InstanceRecord) -> FailedInstance:
        return FailedInstance(
            record.sop_class_uid,
            record.sop_uid,
            FAILURE_DUPLICATE_SOP,
            f"SOPInstanceUID {record.sop_uid} is already stored with different content; refusing to overwrite",
            conflict=True,
            study_uid=record.study_uid,
        )


def patient_id(metadata: bytes) -> str | None:
    """The PatientID of an instance's DICOM JSON metadata."""
    element = orjson.loads(metadata).get("00100020") or {}
    values = element.get("Value") or [None]
    return values[0] if isinstance(values[0], str) else None
