"""The one way an instance enters the store: STOW, the PACS cache and every later way in call
:class:`InstanceWriter`, built once by the composition root.

Write order, which is what makes "acknowledged means durable" true:

1. the Part 10 object is created under its UID key, create-only (never overwritten);
2. its DICOM JSON metadata object is written beside it;
3. the index row is committed.

An instance is reported stored only after all three returned, so **the index row is the commit
point**: an object without a row was never acknowledged. A process killed at any moment
(SIGKILL, power cut) therefore leaves at most: objects without a row (killed between steps 1 and
3), an unfinished S3 multipart upload or a file store temp file (killed inside step 1), and its
spooled request parts (``gateway.spool``) -- never an index row without its object, so nothing
acknowledged is lost. ``dicomweb-gateway reindex --repair`` (``gateway.commands.repair``) removes those
leftovers in place, leaving anything younger than its grace period alone; a gateway sweeps the
spool of dead processes when it starts. A retried upload does not wait for the repair: it finds
the object taken, checks it is byte-identical (SHA-256) and completes steps 2 and 3. The same
holds for a concurrent or repeated upload of the same bytes, so exactly one copy exists.

The index refuses, in the transaction of step 3, an instance whose patient differs from the one
its study was stored with (:attr:`AddOutcome.PATIENT_MISMATCH`): the first instance of a study
decides who sees it (gateway.services.visibility), so a later one cannot move it to another
patient, nor show another patient's data to this one's readers.
"""

from __future__ import annotations

import logging
from pathlib import Path

import anyio

from gateway.dicom import uids
from gateway.errors import AlreadyExists, GatewayError, IndexOutcomeUnknown, MetadataNotWritten, ServiceUnavailable
from gateway.ports import AddOutcome, BlobStore, Index, InstanceRecord, KeepIf
from gateway.services.claims import Claimant, InstanceClaims
from gateway.services.outcomes import (
    FAILURE_DUPLICATE_SOP,
    FAILURE_PATIENT_MISMATCH,
    FailedInstance,
    StoredInstance,
)

log = logging.getLogger(__name__)

# Pauses between attempts while another replica removes the same instance (about 10 s in all).
_REMOVAL_WAITS = (0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.5, 2.0, 2.0, 2.0)


class InstanceWriter:
    """Steps 1-3 of the module docstring for parsed instances, and their undo."""

    def __init__(self, store: BlobStore, index: Index) -> None:
        self._store = store
        self._index = index
        self._claims = InstanceClaims()

    async def write(
        self, record: InstanceRecord, path: Path, *, claimant: Claimant | None = None
    ) -> StoredInstance | FailedInstance:
        """Store ``record`` (its Part 10 file at ``path``) durably, or say why not.

        ``claimant`` keeps its claim on the instance after this returns (a STOW request holds it
        until its response is decided, then calls :meth:`release`); without one the claim lasts
        for this call only. Raises ServiceUnavailable when the store or index fails.
        """
        who = claimant or Claimant()
        await self._claims.claim(record.sop_uid, who)
        try:
            return await self._write(record, path, who)
        finally:
            if claimant is None:
                self._claims.release_all(who)

    def release(self, claimant: Claimant) -> None:
        """The claimant's response is decided: its instances may be undone by others again."""
        self._claims.release_all(claimant)

    async def undo(self, stored: StoredInstance, claimant: Claimant) -> None:
        """Remove an instance ``claimant`` stored but whose request was refused as a whole,
        unless another upload relies on it (in this process, or on another replica)."""
        async with self._claims.undoing(stored.sop_instance_uid, claimant) as sole:
            if not sole:
                return  # another upload in this process relies on this instance now: it stays
            # Another replica's upload may have been told it is stored: the index knows (KeepIf.SHARED).
            await self._remove(stored.study_uid, stored.series_uid, stored.sop_instance_uid, KeepIf.SHARED)

    async def discard_objects(self, study: str, series: str, sop: str) -> None:
        """Delete the objects of an instance taken out of the index earlier (a DELETE, once its
        grace is over), unless it was indexed again meanwhile (stored anew: then they are its).
        Raises GatewayError when the index cannot say: the objects then stay (they may belong to
        a row committed since), for ``reindex --repair`` to judge."""
        token = await self._index.begin_removal(study, series, sop, keep_if=KeepIf.INDEXED)
        if token is None:
            return
        await self._delete_objects(study, series, sop)
        try:
            await self._index.end_removal(sop, token)
        except GatewayError as exc:  # the removal lapses (REMOVAL_LAPSE)
            log.warning("could not end the removal of %s: %s", sop, exc.reason)

    async def _write(self, record: InstanceRecord, path: Path, who: Claimant) -> StoredInstance | FailedInstance:
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
        if added in (AddOutcome.CONFLICT, AddOutcome.PATIENT_MISMATCH):
            if created:
                await self._discard_unindexed(record, who)
            # CONFLICT: the same SOP Instance UID already indexed with other bytes (e.g. under
            # another series).
            return self._duplicate(record) if added is AddOutcome.CONFLICT else self._patient_mismatch(record)
        return StoredInstance(
            record.sop_class_uid,
            record.sop_uid,
            record.study_uid,
            record.series_uid,
            created=created and added is AddOutcome.INSERTED,
            inserted=added is AddOutcome.INSERTED,
        )

    async def _write_objects(
        self, record: InstanceRecord, path: Path, who: Claimant
    ) -> tuple[bool, AddOutcome] | FailedInstance:
        """Steps 1-3 once: (whether this call created the object, the index's answer)."""
        key = uids.instance_key(record.study_uid, record.series_uid, record.sop_uid)
        metadata_key = uids.metadata_key(record.study_uid, record.series_uid, record.sop_uid)
        created = True
        try:
            # Steps 1 and 2 together: the store may make both durable at once.
            await self._store.put_instance(
                key, path, sha256=record.sha256, metadata_key=metadata_key, metadata=record.metadata
            )
        except AlreadyExists:
            created = False
            existing = await self._store.stat(key)
            if existing is None or existing.sha256 != record.sha256:
                return self._duplicate(record)
        except MetadataNotWritten:
            # Our object, never acknowledged: undone as after any failed step 2.
            with anyio.CancelScope(shield=True):
                await self._discard_unindexed(record, who)
            raise
        try:
            if not created:
                # The object was there (a retry, or another upload of the same bytes): its
                # metadata may not be, or not yet durable.
                await self._store.put_bytes(metadata_key, record.metadata, content_type="application/dicom+json")
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
        keys = [uids.instance_key(study, series, sop), uids.metadata_key(study, series, sop)]
        try:
            # Its corrected versions (gateway.services.bulk_update) go with it.
            keys += [key async for key in self._store.list_keys(uids.versions_prefix(study, series, sop))]
        except GatewayError as exc:
            log.warning("could not list the versions of %s: %s", sop, exc.reason)
        for key in keys:
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

    @staticmethod
    def _patient_mismatch(record: InstanceRecord) -> FailedInstance:
        # The stored patient is not named: the writer may not be allowed to read it.
        return FailedInstance(
            record.sop_class_uid,
            record.sop_uid,
            FAILURE_PATIENT_MISMATCH,
            f"the PatientID or IssuerOfPatientID differs from the patient that study {record.study_uid}"
            " is stored under (relational mismatch); correct the patient, or use another StudyInstanceUID",
            conflict=True,
            study_uid=record.study_uid,
        )
