"""Storage commitment (PS3.4 Annex J): may the gateway take responsibility for an instance?

An instance is committed to a peer only when all of these hold, each decided by the service that
owns it rather than re-implemented here:

* it is indexed under its SOP Instance UID (the index row is the commit point of every write,
  :mod:`gateway.services.instance_writer`), with the SOP Class UID the peer names;
* its Part 10 object is in the store at its key, with the size (and, where the store knows it,
  the SHA-256) the index recorded: a row whose object has gone or changed is not something the
  gateway can stand behind;
* its study is visible to the peer (:class:`gateway.services.visibility.Visibility`): a
  restricted peer learns nothing about other patients' instances, so those are reported exactly
  like absent ones;
* it is not a copy cached from a PACS that the cache expiry will drop (the ``pacs-cache``
  retention rule, :mod:`gateway.services.retention`): the gateway cannot take responsibility for what it
  is going to delete. Once a peer sends such an instance itself, the index marks the copy
  shared, the expiry keeps it, and it is committed.

The failure reasons are those of PS3.4 J.3.3.1.1 (Table J.3-2).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import anyio
from anyio.abc import TaskGroup

from gateway.dicom import uids
from gateway.ports import BlobStore, Index
from gateway.security.access import Restriction
from gateway.services.visibility import Visibility

__all__ = [
    "CLASS_INSTANCE_CONFLICT",
    "DUPLICATE_TRANSACTION_UID",
    "NO_SUCH_OBJECT_INSTANCE",
    "PROCESSING_FAILURE",
    "RESOURCE_LIMITATION",
    "CommitmentCheck",
    "Reference",
    "Verdict",
]

LOOKUPS_AT_ONCE = 8

# PS3.4 Table J.3-2, Failure Reason (0008,1197) values.
PROCESSING_FAILURE = 0x0110
NO_SUCH_OBJECT_INSTANCE = 0x0112
RESOURCE_LIMITATION = 0x0213
CLASS_INSTANCE_CONFLICT = 0x0119
DUPLICATE_TRANSACTION_UID = 0x0131


@dataclass(frozen=True)
class Reference:
    """One item of the request's Referenced SOP Sequence."""

    sop_class_uid: str
    sop_instance_uid: str


@dataclass(frozen=True)
class Verdict:
    """A reference and, when it is not committed, why (a PS3.4 Table J.3-2 Failure Reason);
    its study and series when the instance is indexed and visible to the peer (for the audit)."""

    reference: Reference
    failure: int | None = None
    study_uid: str | None = None
    series_uid: str | None = None

    @property
    def committed(self) -> bool:
        return self.failure is None


class CommitmentCheck:
    """Decides, per referenced instance, whether the gateway commits to it (module docstring)."""

    def __init__(
        self, store: BlobStore, index: Index, visibility: Visibility, *, cached_copies_expire: bool = False
    ) -> None:
        self._store = store
        self._index = index
        self._visibility = visibility
        self._cached_copies_expire = cached_copies_expire  # pacs_cache_max_age with PACS nodes

    async def verdicts(self, references: Sequence[Reference], restriction: Restriction | None) -> list[Verdict]:
        """One verdict per reference, in order. Raises ServiceUnavailable when the index or the
        store cannot answer: the caller decides whether to retry or to report a processing
        failure, never to claim a commitment it could not check."""
        seen: dict[str, bool] = {}  # per study: one visibility decision for many instances
        verdicts: list[Verdict | None] = [None] * len(references)
        failures: list[Exception] = []
        cursor = iter(range(len(references)))

        async def checker(tg: TaskGroup) -> None:
            # A few lookups at once: each is a round trip to the index or store, a request may
            # list thousands of instances, and the index answers several readers in parallel.
            for i in cursor:
                try:
                    verdicts[i] = await self._verdict(references[i], restriction, seen)
                except Exception as exc:  # the first failure ends the check; raised below as is
                    failures.append(exc)
                    tg.cancel_scope.cancel()
                    return

        async with anyio.create_task_group() as tg:
            for _ in range(min(LOOKUPS_AT_ONCE, len(references))):
                tg.start_soon(checker, tg)
        if failures:
            raise failures[0]
        return [verdict for verdict in verdicts if verdict is not None]

    async def _verdict(self, reference: Reference, restriction: Restriction | None, seen: dict[str, bool]) -> Verdict:
        if not uids.is_valid_uid(reference.sop_instance_uid):
            return Verdict(reference, NO_SUCH_OBJECT_INSTANCE)
        record = await self._index.get(None, None, reference.sop_instance_uid)
        if record is None:
            return Verdict(reference, NO_SUCH_OBJECT_INSTANCE)
        if record.study_uid not in seen:
            seen[record.study_uid] = await self._visibility.study_visible(record.study_uid, restriction)
        if not seen[record.study_uid]:
            return Verdict(reference, NO_SUCH_OBJECT_INSTANCE)  # another patient's instance: as if absent
        found = Verdict(reference, None, record.study_uid, record.series_uid)
        if record.sop_class_uid != reference.sop_class_uid:
            return dataclasses.replace(found, failure=CLASS_INSTANCE_CONFLICT)
        if self._cached_copies_expire and record.origin.startswith("pacs:") and not record.shared:
            return dataclasses.replace(found, failure=PROCESSING_FAILURE)  # to be expired: not ours to keep
        stored = await self._store.stat(record.object_key)
        if stored is None or stored.size != record.size:
            return dataclasses.replace(found, failure=PROCESSING_FAILURE)
        if stored.sha256 is not None and stored.sha256 != record.sha256:
            # The store knows the digest (a file store computes it): the object is not the one indexed.
            return dataclasses.replace(found, failure=PROCESSING_FAILURE)
        return found
