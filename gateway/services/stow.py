"""STOW-RS (PS3.18 10.5): validate, store and index each uploaded instance.

Write order, which is what makes "acknowledged means durable" true:

1. the Part 10 object is created under its UID key, create-only (never overwritten);
2. its DICOM JSON metadata object is written beside it;
3. the index row is committed.

An instance is reported in ReferencedSOPSequence only after all three returned. A crash in
between leaves at most an orphan object that ``reindex`` sweeps, never an index row without its
object. A concurrent or repeated upload of the same bytes finds the object taken, checks it is
byte-identical (SHA-256) and completes steps 2 and 3 idempotently, so exactly one copy exists.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import anyio

from gateway.dicom import uids
from gateway.dicom.parse import InstanceRejected, ParseLimits, parse_part10
from gateway.errors import AlreadyExists, GatewayError
from gateway.ports import AddOutcome, BlobStore, Index, InstanceRecord

log = logging.getLogger(__name__)

# PS3.18 Table 10.5.3-2 / PS3.4 Annex B failure reasons used by the store service itself.
FAILURE_PROCESSING = 0x0110
FAILURE_DUPLICATE_SOP = 0x0111  # PS3.7 C.4.2.1.4: a different object under a stored SOP Instance UID
FAILURE_STUDY_MISMATCH = 0xA900  # instance does not belong to the study named in the URL
FAILURE_UNSUPPORTED_MEDIA = 0xC000


class UploadedPart(Protocol):
    """What the service needs of one spooled multipart part."""

    @property
    def content_type(self) -> str | None: ...

    @property
    def path(self) -> Path: ...


@dataclass(frozen=True)
class StoredInstance:
    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str
    series_uid: str


@dataclass(frozen=True)
class FailedInstance:
    sop_class_uid: str | None
    sop_instance_uid: str | None
    failure_reason: int
    detail: str
    conflict: bool = False  # the data is fine but clashes with the request or the store


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
    def __init__(self, store: BlobStore, index: Index, parse_limits: ParseLimits, *, parse_threads: int = 2) -> None:
        self._store = store
        self._index = index
        self._parse_limits = parse_limits
        self._parse_limiter = anyio.CapacityLimiter(parse_threads)

    async def store_parts(self, parts: AsyncIterator[UploadedPart], *, study_uid: str | None) -> StowOutcome:
        """Store every part in turn; per-instance failures are collected, not raised."""
        outcome = StowOutcome()
        async for part in parts:
            result = await self.store_one(part, study_uid=study_uid)
            if isinstance(result, StoredInstance):
                outcome.stored.append(result)
            else:
                outcome.failed.append(result)
        return outcome

    async def store_one(self, part: UploadedPart, *, study_uid: str | None) -> StoredInstance | FailedInstance:
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
            )
        # Store or index failures propagate (503 with Retry-After): the client retries the request,
        # and instances already stored in it then come back as identical duplicates.
        return await self.persist(record, part.path)

    def _parse(self, path: Path) -> InstanceRecord:
        return parse_part10(path, origin="stow", limits=self._parse_limits)

    async def persist(self, record: InstanceRecord, path: Path) -> StoredInstance | FailedInstance:
        """Steps 1-3 of the module docstring for one parsed instance."""
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
            added = await self._index.add(record)
        except BaseException:
            # Unacknowledged: leave nothing we created behind (the reindex would sweep it too).
            if created:
                with anyio.CancelScope(shield=True):
                    await self._discard(record)
            raise
        if added is AddOutcome.CONFLICT:
            # Same SOP Instance UID already indexed with other bytes (e.g. under another series).
            if created:
                await self._discard(record)
            return self._duplicate(record)
        return StoredInstance(record.sop_class_uid, record.sop_uid, record.study_uid, record.series_uid)

    async def _discard(self, record: InstanceRecord) -> None:
        for key in (
            uids.instance_key(record.study_uid, record.series_uid, record.sop_uid),
            uids.metadata_key(record.study_uid, record.series_uid, record.sop_uid),
        ):
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
        )
