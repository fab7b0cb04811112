"""The Storage Commitment Push Model SCP (PS3.4 Annex J): a modality asks whether the gateway
takes responsibility for instances it sent, before deleting its own copies.

:class:`CommitmentHandler` is a pynetdicom ``EVT_N_ACTION`` handler. For each request:

1. the N-ACTION is checked (:mod:`gateway.dimse.commitment_request`) and answered at once:
   success, or the PS3.7 10.1.4.1.10 failure status of a bad request; 0x0213 (resource
   limitation) when ``max_pending`` accepted requests are not yet reported (a request under a
   Transaction UID still in use is accepted, and its instances reported failed with 0x0131,
   PS3.4 J.3.3.1.2); 0x0124 (refused:
   not authorized) when the calling peer lacks the ``write`` scope (it may not hand
   instances over, so it has nothing to ask a commitment for);
2. in the background, on one of a fixed number of worker threads, every referenced instance is
   checked by :class:`gateway.services.commitment.CommitmentCheck` (durable, indexed with that
   SOP Class, visible to the peer). An index or store that cannot answer is retried with
   backoff, then the unchecked instances are reported failed with 0x0110 (processing failure):
   the peer always gets an answer, never a commitment the gateway could not check;
3. the N-EVENT-REPORT (PS3.4 J.3.3) goes on the requesting association while it is open, else on
   a new association to the peer's configured port (``send_report``,
   :class:`gateway.dimse.commitment_report.NewAssociationReporter`), retried with backoff while
   the peer is not listening; after the last attempt the report is given up, logged and passed
   to ``on_outcome`` (the audit and metrics hook) like every other outcome.

Nothing is kept across a restart: a request accepted but not reported when the gateway stops is
logged as lost; the peer, having no report within the time its conformance statement gives
(PS3.4 J.3.6.1.1), asks again.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import weakref
from collections.abc import Callable, Collection, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from pydicom.dataset import Dataset

from gateway.dimse.commitment_report import (
    ReportNotDelivered,
    ReportTarget,
    event_information,
    send_on,
    still_open,
)
from gateway.dimse.commitment_request import (
    RESOURCE_LIMITATION,
    CommitmentRefusal,
    CommitmentRequest,
    parse_commitment,
)
from gateway.dimse.observe import notify
from gateway.dimse.status import failure
from gateway.errors import ServiceUnavailable
from gateway.security.access import Restriction
from gateway.services.commitment import DUPLICATE_TRANSACTION_UID, PROCESSING_FAILURE, Reference, Verdict
from gateway.settings import PacsTls

__all__ = ["Checker", "CommitmentHandler", "CommitmentOutcome", "CommitmentPeer"]

log = logging.getLogger(__name__)

Portal = Callable[[Coroutine[Any, Any, Any]], Any]
"""Runs a coroutine on the gateway's event loop from a pynetdicom thread; returns its result."""

SendReport = Callable[[ReportTarget, int, Dataset], None]
"""Delivers a report on a new association; raises ReportNotDelivered when it could not."""

SUCCESS = 0x0000
NOT_AUTHORIZED = 0x0124  # PS3.7 10.1.4.1.10: Refused: not authorized
WRITE_SCOPE = "write"

# Pauses between attempts: checking while the index or store is unavailable (about 7 s in all),
# and delivering a report to a peer that is not listening (about 2 minutes in all).
CHECK_RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0)
# How long a report on the requesting association waits for its answer (see commitment_report.send_on).
SAME_ASSOCIATION_REPLY_WAIT = 5.0
REPORT_RETRY_DELAYS = (1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0)


class CommitmentPeer(Protocol):
    """What the handler needs to know about the calling peer."""

    @property
    def name(self) -> str: ...

    @property
    def restriction(self) -> Restriction | None: ...

    @property
    def scopes(self) -> Collection[str]: ...

    @property
    def host(self) -> str | None: ...

    @property
    def port(self) -> int | None: ...

    @property
    def tls(self) -> PacsTls: ...


class Checker(Protocol):
    """The commitment check (CommitmentCheck has this shape)."""

    async def verdicts(self, references: Sequence[Reference], restriction: Restriction | None) -> list[Verdict]: ...


@dataclass(frozen=True)
class CommitmentOutcome:
    """One storage commitment as audited: who, which transaction, which instances were
    committed and which failed (with their Failure Reasons), and how the report went.

    ``status``: a refused request's N-ACTION status; for an accepted one 0x0000 once its report
    was delivered, 0x0110 (processing failure) when the report was given up."""

    peer: str
    ae_title: str
    address: str | None
    transaction_uid: str
    status: int
    # (study, series, SOP Instance UID) of each committed instance
    instances: tuple[tuple[str, str, str], ...] = ()
    # (study or None, SOP Instance UID, Failure Reason) of each failed one (study None: unknown to the peer)
    failed: tuple[tuple[str | None, str, int], ...] = ()
    delivered: str = ""  # "same association", "new association", or "" (refused or given up)
    attempts: int = 0
    duration: float = 0.0
    comment: str = ""

    @property
    def committed(self) -> int:
        return len(self.instances)


@dataclass
class _Job:
    peer: CommitmentPeer
    request: CommitmentRequest
    assoc: Any  # the requesting association (pynetdicom.association.Association)
    target: ReportTarget
    address: str  # where the request came from
    started: float
    duplicate: bool  # its Transaction UID is already in use by a request not yet reported


class CommitmentHandler:
    """``EVT_N_ACTION`` handler; see the module docstring.

    ``check``: the commitment check; ``ae_title``: the gateway's AE title (the reports' Retrieve
    AE Title); ``portal``: runs a coroutine on the gateway's loop; ``peer_of``: the calling peer
    of an event; ``send_report``: delivers a report on a new association; ``on_outcome``: called
    once per request (refused, reported, or given up); ``max_pending``: accepted requests not yet
    reported, beyond which requests are refused; ``workers``: background threads.
    Call :meth:`close` when the listener stops: it ends the workers.
    """

    def __init__(
        self,
        check: Checker,
        *,
        ae_title: str,
        portal: Portal,
        peer_of: Callable[[Any], CommitmentPeer],
        send_report: SendReport,
        on_outcome: Callable[[CommitmentOutcome], None] | None = None,
        max_pending: int = 64,
        workers: int = 2,
        check_retry_delays: Sequence[float] = CHECK_RETRY_DELAYS,
        report_retry_delays: Sequence[float] = REPORT_RETRY_DELAYS,
    ) -> None:
        self._check = check
        self._ae_title = ae_title
        self._portal = portal
        self._peer_of = peer_of
        self._send_report = send_report
        self._on_outcome = on_outcome
        self._max_pending = max_pending
        self._check_retry_delays = tuple(check_retry_delays)
        self._report_retry_delays = tuple(report_retry_delays)
        self._pending = 0
        self._transactions: set[str] = set()  # of the pending requests
        self._lock = threading.Lock()
        self._closing = threading.Event()
        # One report at a time on any one association: pynetdicom's send_n_event_report pauses
        # the association's reactor and takes the next message as its response.
        self._assoc_locks: weakref.WeakKeyDictionary[Any, threading.Lock] = weakref.WeakKeyDictionary()
        self._workers = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="commitment")

    @property
    def pending(self) -> int:
        """Requests accepted and not yet reported (or given up)."""
        with self._lock:
            return self._pending

    def __call__(self, event: Any) -> tuple[int | Dataset, Dataset | None]:
        started = time.monotonic()
        peer = self._peer_of(event)
        requestor = event.assoc.requestor
        ae_title, address = str(requestor.ae_title).strip(), str(requestor.address)
        transaction = ""
        try:
            if WRITE_SCOPE not in peer.scopes:
                raise CommitmentRefusal(NOT_AUTHORIZED, "this peer may not store instances")
            request = parse_commitment(event)
            transaction = request.transaction_uid
            duplicate = self._reserve(request.transaction_uid)
            if duplicate is None:
                raise CommitmentRefusal(RESOURCE_LIMITATION, "too many storage commitments pending")
        except CommitmentRefusal as exc:
            refused = CommitmentOutcome(peer.name, ae_title, address, transaction, exc.status, comment=exc.comment)
            self._report(dataclasses.replace(refused, duration=time.monotonic() - started))
            return failure(exc.status, exc.comment), None
        except Exception:
            log.exception("storage commitment request from %s failed", peer.name)
            failed = CommitmentOutcome(peer.name, ae_title, address, transaction, PROCESSING_FAILURE)
            self._report(dataclasses.replace(failed, comment="internal error"))
            return failure(PROCESSING_FAILURE, "internal error"), None
        target = ReportTarget(peer.name, ae_title, peer.host or address, peer.port, peer.tls)
        job = _Job(peer, request, event.assoc, target, address, started, duplicate)
        try:
            self._workers.submit(self._run, job)
        except RuntimeError:  # closed: the listener is stopping
            self._release(job)
            return failure(RESOURCE_LIMITATION, "the gateway is stopping"), None
        log.info(
            "storage commitment %s from %s: %d instances accepted", transaction, peer.name, len(request.references)
        )
        return SUCCESS, None

    def close(self) -> None:
        """Stop: pending reports are given up (logged), the worker threads end."""
        self._closing.set()
        self._workers.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            lost = self._pending
        if lost:
            log.warning("storage commitment: %d accepted requests were not reported (gateway stopping)", lost)

    # -- background ------------------------------------------------------------------------

    def _run(self, job: _Job) -> None:
        verdicts: list[Verdict] = []
        delivered, attempts, comment = "", 0, ""
        try:
            if job.duplicate:
                # PS3.4 J.3.3.1.2: a Transaction UID stays in use until its report is sent; a
                # second request under it is reported failed (Table J.3-2), the first one stands.
                verdicts = [Verdict(r, DUPLICATE_TRANSACTION_UID) for r in job.request.references]
            else:
                verdicts = self._verdicts(job)
            event_type, info = event_information(job.request.transaction_uid, verdicts, ae_title=self._ae_title)
            delivered, attempts, comment = self._deliver(job, event_type, info)
        except Exception:
            log.exception("storage commitment %s from %s failed", job.request.transaction_uid, job.peer.name)
            comment = "internal error"
        finally:
            self._release(job)
            decided = {v.reference.sop_instance_uid: v for v in verdicts}
            instances, failed = [], []
            for reference in job.request.references:
                verdict = decided.get(reference.sop_instance_uid, Verdict(reference, PROCESSING_FAILURE))
                if verdict.failure is None and verdict.study_uid and verdict.series_uid:
                    instances.append((verdict.study_uid, verdict.series_uid, reference.sop_instance_uid))
                else:
                    reason = verdict.failure or PROCESSING_FAILURE
                    failed.append((verdict.study_uid, reference.sop_instance_uid, reason))
            self._report(
                CommitmentOutcome(
                    job.peer.name,
                    job.target.ae_title,
                    job.address,
                    job.request.transaction_uid,
                    SUCCESS if delivered else PROCESSING_FAILURE,
                    instances=tuple(instances),
                    failed=tuple(failed),
                    delivered=delivered,
                    attempts=attempts,
                    duration=time.monotonic() - job.started,
                    comment=comment,
                )
            )

    def _verdicts(self, job: _Job) -> list[Verdict]:
        for delay in (*self._check_retry_delays, None):
            try:
                verdicts: list[Verdict] = self._portal(
                    self._check.verdicts(job.request.references, job.peer.restriction)
                )
                return verdicts
            except ServiceUnavailable as exc:
                if delay is None or self._closing.wait(delay):
                    log.warning(
                        "storage commitment %s from %s: cannot check (%s); reported as processing failures",
                        job.request.transaction_uid,
                        job.peer.name,
                        exc.reason,
                    )
                    break
            except Exception:
                # Not a passing outage: no retry, but still a report (failures), never silence.
                log.exception("storage commitment %s from %s: check failed", job.request.transaction_uid, job.peer.name)
                break
        return [Verdict(reference, PROCESSING_FAILURE) for reference in job.request.references]

    def _deliver(self, job: _Job, event_type: int, info: Dataset) -> tuple[str, int, str]:
        """Deliver the report; (how, attempts, why not) -- how is "" when given up."""
        attempts = 0
        why = ""
        if still_open(job.assoc):
            attempts += 1
            try:
                with self._assoc_lock(job.assoc):
                    send_on(job.assoc, event_type, info, reply_wait=SAME_ASSOCIATION_REPLY_WAIT)
                return "same association", attempts, ""
            except ReportNotDelivered as exc:
                why = str(exc)
                log.info("storage commitment %s: not on its association: %s", job.request.transaction_uid, why)
        if job.target.port is None:
            why = f"{why or 'the association ended'}; {job.peer.name} has no port configured for the report"
        else:
            for delay in (0.0, *self._report_retry_delays):
                if self._closing.wait(delay):
                    why = "gateway stopping"
                    break
                attempts += 1
                try:
                    self._send_report(job.target, event_type, info)
                    return "new association", attempts, ""
                except ReportNotDelivered as exc:
                    why = str(exc)
                    log.info("storage commitment %s: attempt %d: %s", job.request.transaction_uid, attempts, why)
        log.warning(
            "storage commitment %s from %s: report given up after %d attempts: %s",
            job.request.transaction_uid,
            job.peer.name,
            attempts,
            why,
        )
        return "", attempts, why[:200]

    def _assoc_lock(self, assoc: Any) -> threading.Lock:
        with self._lock:
            lock = self._assoc_locks.get(assoc)
            if lock is None:
                lock = self._assoc_locks[assoc] = threading.Lock()
            return lock

    # -- bookkeeping -----------------------------------------------------------------------

    def _reserve(self, transaction_uid: str) -> bool | None:
        """Count one more pending request: None when there are ``max_pending`` already, else
        whether its Transaction UID is already in use by a pending one."""
        with self._lock:
            if self._pending >= self._max_pending:
                return None
            self._pending += 1
            duplicate = transaction_uid in self._transactions
            if not duplicate:
                self._transactions.add(transaction_uid)
            return duplicate

    def _release(self, job: _Job) -> None:
        with self._lock:
            self._pending -= 1
            if not job.duplicate:
                self._transactions.discard(job.request.transaction_uid)

    def _report(self, outcome: CommitmentOutcome) -> None:
        log.info(
            "storage commitment %s from %s: status 0x%04X, %d committed, %d failed, report %s",
            outcome.transaction_uid or "?",
            outcome.peer,
            outcome.status,
            outcome.committed,
            len(outcome.failed),
            outcome.delivered or "not sent",
        )
        notify(self._on_outcome, outcome, "storage commitment")
