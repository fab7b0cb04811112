"""STOW-RS (PS3.18 10.5): a request's parts, permissions and compression; each parsed instance
is then written by the one :class:`~gateway.services.instance_writer.InstanceWriter` (whose
docstring gives the write order that makes "acknowledged means durable" true).
"""

from __future__ import annotations

import contextlib
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
from gateway.dicom import transcode
from gateway.dicom.dicomjson import str_value
from gateway.dicom.parse import InstanceRejected, ParseLimits, parse_part10
from gateway.errors import GatewayError, ServiceUnavailable
from gateway.ports import InstanceRecord
from gateway.security.access import PATIENT_ID_TAG, Restriction
from gateway.services.claims import Claimant
from gateway.services.instance_writer import InstanceWriter
from gateway.services.outcomes import (
    FAILURE_DUPLICATE_SOP,
    FAILURE_PATIENT_MISMATCH,
    FAILURE_PROCESSING,
    FAILURE_STUDY_MISMATCH,
    FAILURE_UNSUPPORTED_MEDIA,
    FailedInstance,
    StoredInstance,
    not_authorized,
)
from gateway.services.storage_compression import CompressionPolicy
from gateway.services.visibility import Visibility

log = logging.getLogger(__name__)


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
        writer: InstanceWriter,
        visibility: Visibility,
        parse_limits: ParseLimits,
        *,
        parse_threads: int = 2,
        pipeline: int = 8,
        compression: CompressionPolicy | None = None,
    ) -> None:
        self._writer = writer
        self._visibility = visibility
        self._parse_limits = parse_limits
        # Lossless compression on ingest (settings.storage_compression and its size policy).
        self._compression = compression or CompressionPolicy()
        self._parse_limiter = anyio.CapacityLimiter(parse_threads)
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
                            await self._writer.undo(result, request)
            raise
        finally:
            self._writer.release(request)
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

    async def store_one(
        self,
        part: UploadedPart,
        *,
        study_uid: str | None,
        restriction: Restriction | None = None,
        claimant: Claimant | None = None,
        origin: str = "stow",
    ) -> StoredInstance | FailedInstance:
        """Parse and write one spooled instance. ``origin``: what its index row says it came from
        (``stow``, or ``dimse:<name>`` for a DIMSE client's C-STORE)."""
        # A part without Content-Type takes the multipart type parameter (RFC 2387 3.1).
        media = (part.content_type or "application/dicom").split(";", 1)[0].strip().lower()
        if media and media != "application/dicom":
            return FailedInstance(
                None, None, FAILURE_UNSUPPORTED_MEDIA, f"part media type {media} is not application/dicom"
            )
        try:
            record = await anyio.to_thread.run_sync(self._parse, part.path, origin, limiter=self._parse_limiter)
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
        if not await self._visibility.may_write(record, patient_id(record.metadata), restriction):
            # Checked before anything is stored or compared (gateway.services.visibility).
            return not_authorized(record)
        syntax = self._compression.syntax_for(record) if self._compression.enabled else None
        if syntax is None:
            written = await self._writer.write(record, path, claimant=claimant)
        else:
            compressed = path.with_name(path.name + ".compressed")
            try:
                record = await anyio.to_thread.run_sync(
                    self._compress, path, compressed, syntax, record.origin, limiter=self._parse_limiter
                )
                written = await self._writer.write(record, compressed, claimant=claimant)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(compressed)
        if (
            restriction is not None
            and isinstance(written, FailedInstance)
            and written.failure_reason in (FAILURE_DUPLICATE_SOP, FAILURE_PATIENT_MISMATCH)
            and not await self._hidden_clash_visible(record, restriction)
        ):
            # The clash is with an instance or a study the principal cannot see: answered as any
            # instance outside its restriction, never naming what is hidden.
            return not_authorized(record)
        return written

    async def _hidden_clash_visible(self, record: InstanceRecord, restriction: Restriction) -> bool:
        return await self._visibility.instance_visible(
            record.sop_uid, restriction
        ) and await self._visibility.study_visible(record.study_uid, restriction)

    def _compress(self, source: Path, target: Path, syntax: str, origin: str) -> InstanceRecord:
        """Re-encode ``source`` losslessly into ``target`` and parse that: the stored object. The
        encoders are deterministic, so re-sending the same upload finds an identical object. The
        syntax it was received in is recorded in the object's File Meta Information
        (gateway.dicom.original_syntax)."""
        target.write_bytes(transcode.transcode_instance(source, syntax, record_original=True))
        return parse_part10(target, origin=origin, limits=self._parse_limits)

    def _parse(self, path: Path, origin: str) -> InstanceRecord:
        return parse_part10(path, origin=origin, limits=self._parse_limits)


def patient_id(metadata: bytes) -> str | None:
    """The PatientID of an instance's DICOM JSON metadata."""
    return str_value(orjson.loads(metadata), PATIENT_ID_TAG)
