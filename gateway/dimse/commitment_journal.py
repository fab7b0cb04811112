"""Storage commitment requests kept until reported (PS3.4 J.3.3), for the handler's threads.

Once the gateway answered an N-ACTION with success it owes the peer an N-EVENT-REPORT, whatever
happens to the process: the peer may not ask again for a long while (PS3.4 J.3.6.1.1 leaves that
to its conformance statement), and meanwhile it keeps copies it could delete. So a request is
written to the index (:class:`gateway.ports.PendingCommitments`) before it is answered, removed
once its report was delivered or given up, and held under a lease by the replica reporting it:
a restarted replica takes its own requests back at once, another replica takes a stopped
replica's once their lease lapsed.

:class:`CommitmentJournal` is that record as the blocking handler threads use it, each call run
on the gateway's loop through the portal.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from gateway.ports import PendingCommitment, PendingCommitments
from gateway.services.commitment import Reference

__all__ = ["LEASE_SECONDS", "CommitmentJournal", "references_of"]

Portal = Callable[[Coroutine[Any, Any, Any]], Any]

# A lease is renewed before every delivery attempt; the longest pause between two (the last
# retry delay, 60 s, plus an attempt's connect, association and DIMSE timeouts) stays well inside
# it, so a working replica never loses a request it is reporting.
LEASE_SECONDS = 180.0


class CommitmentJournal:
    """The pending requests of one replica (``holder``) in ``store``, reached through ``portal``."""

    def __init__(self, store: PendingCommitments, *, holder: str, portal: Portal, lease: float = LEASE_SECONDS) -> None:
        self._store = store
        self._holder = holder
        self._portal = portal
        self._lease = lease

    @property
    def holder(self) -> str:
        return self._holder

    def record(
        self, transaction_uid: str, ae_title: str, address: str, references: Sequence[Reference], *, duplicate: bool
    ) -> PendingCommitment:
        """Write an accepted request, held by this replica; durable once this returns."""
        pending = PendingCommitment(
            key=uuid.uuid4().hex,
            transaction_uid=transaction_uid,
            ae_title=ae_title,
            address=address,
            references=tuple((r.sop_class_uid, r.sop_instance_uid) for r in references),
            duplicate=duplicate,
            accepted_at=time.time(),
        )
        self._portal(self._store.add_commitment(pending, self._holder, self._until()))
        return pending

    def claim(self, *, mine: bool, limit: int) -> list[PendingCommitment]:
        """Requests to report now: free or lapsed ones, and with ``mine`` this replica's own
        (at start-up, what the previous run of this replica left)."""
        if limit <= 0:
            return []
        claimed: list[PendingCommitment] = self._portal(
            self._store.claim_commitments(self._holder, self._until(), mine=mine, limit=limit)
        )
        return claimed

    def renew(self, key: str) -> bool:
        """Keep reporting ``key``: False when another replica took it over."""
        return bool(self._portal(self._store.renew_commitment(key, self._holder, self._until())))

    def remove(self, key: str) -> None:
        """The request was reported (or given up)."""
        self._portal(self._store.remove_commitment(key))

    def release(self) -> None:
        """This replica stops: every request it holds is free for the next one."""
        self._portal(self._store.release_commitments(self._holder))

    def _until(self) -> float:
        return time.time() + self._lease


def references_of(pending: PendingCommitment) -> tuple[Reference, ...]:
    """The Referenced SOP Sequence of a kept request."""
    return tuple(Reference(sop_class, sop) for sop_class, sop in pending.references)
