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

With a ``journal`` (:mod:`gateway.dimse.commitment_journal`, the index), a request is recorded
before its N-ACTION is answered (an index that cannot record it: 0x0110, the peer asks again)
and removed once reported or given up. A gateway stopping, or killed, leaves its unreported
requests there: :meth:`CommitmentHandler.start` takes them back when it starts again (checked
anew, then reported to the peer's configured port as above), and every ``resume_interval``
takes those of a replica that stopped, once their lease lapsed. A report may so be sent twice
(a crash just after it went), never not at all. Without a journal nothing outlives the process.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import weakref
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pydicom.dataset import Dataset

from gateway.dimse.commitment_job import Checker, CommitmentOutcome, CommitmentPeer, Job, Stopped
from gateway.dimse.commitment_journal import CommitmentJournal, references_of
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
from gateway.ports import PendingCommitment
from gateway.services.commitment import DUPLICATE_TRANSACTION_UID, PROCESSING_FAILURE, Verdict

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
# How often the journal is asked for the requests of replicas that stopped.
RESUME_INTERVAL = 30.0


class CommitmentHandler:
    """``EVT_N_ACTION`` handler; see the module docstring.

    ``check``: the commitment check; ``ae_title``: the gateway's AE title (the reports' Retrieve
    AE Title); ``portal``: runs a coroutine on the gateway's loop; ``peer_of``: the calling peer
    of an event; ``send_report``: delivers a report on a new association; ``on_outcome``: called
    once per request (refused, reported, or given up); ``max_pending``: accepted requests not yet
    reported, beyond which requests are refused;
    ``workers``: background threads; ``journal``: where requests are kept until reported (see
    the module docstring), with ``peer_by_ae`` finding the peer of a kept request by its calling
    AE title.
    Call :meth:`start` once the listener runs (it resumes kept requests) and :meth:`close` when
    the listener stops: it ends the workers.
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
        journal: CommitmentJournal | None = None,
        peer_by_ae: Callable[[str], CommitmentPeer | None] | None = None,
        resume_interval: float = RESUME_INTERVAL,
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
        self._journal = journal
        self._peer_by_ae = peer_by_ae or (lambda ae_title: None)
        self._resume_interval = resume_interval
        self._active: set[str] = set()  # journal keys of the jobs running or queued here
        self._resumer: threading.Thread | None = None

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
            key = self._record(request, ae_title, address, duplicate)
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
        job = Job(peer, request, event.assoc, target, address, started, duplicate, key)
        if not self._submit(job):  # closed: the listener is stopping
            self._forget(job)  # refused, so never to be reported
            return failure(RESOURCE_LIMITATION, "the gateway is stopping"), None
        log.info(
            "storage commitment %s from %s: %d instances accepted", transaction, peer.name, len(request.references)
        )
        return SUCCESS, None

    def start(self) -> None:
        """Resume the kept requests (this replica's at once, other replicas' once lapsed)."""
        if self._journal is None or self._resumer is not None:
            return
        self._resumer = threading.Thread(target=self._resume, name="commitment-resume", daemon=True)
        self._resumer.start()

    def close(self) -> None:
        """Stop: the worker threads end; unreported requests stay in the journal for the next
        start (released for other replicas), or without one are given up (logged)."""
        self._closing.set()
        if self._resumer is not None:
            self._resumer.join()
        self._workers.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            left = self._pending
        if self._journal is not None:
            try:
                self._journal.release()
            except Exception as exc:  # their lease lapses instead
                log.warning("storage commitment: cannot release the pending requests: %s", exc)
            if left:
                log.info("storage commitment: %d accepted requests left to report after the next start", left)
        elif left:
            log.warning("storage commitment: %d accepted requests were not reported (gateway stopping)", left)

    # -- the journal -----------------------------------------------------------------------

    def _record(self, request: CommitmentRequest, ae_title: str, address: str, duplicate: bool) -> str | None:
        """Keep an accepted request in the journal before it is answered; refused (and its
        reservation undone) when the journal cannot keep it."""
        if self._journal is None:
            return None
        try:
            pending = self._journal.record(
                request.transaction_uid, ae_title, address, request.references, duplicate=duplicate
            )
        except Exception as exc:
            self._unreserve(request.transaction_uid, duplicate)
            log.warning("storage commitment %s: cannot be recorded: %s", request.transaction_uid, exc)
            raise CommitmentRefusal(PROCESSING_FAILURE, "the request cannot be recorded now") from exc
        with self._lock:
            self._active.add(pending.key)
        return pending.key

    def _resume(self) -> None:
        mine = True  # at start-up, what this replica's previous run left too
        while True:
            assert self._journal is not None
            try:
                with self._lock:
                    room = self._max_pending - self._pending
                for pending in self._journal.claim(mine=mine, limit=room):
                    self._resume_one(pending)
                mine = False
            except Exception as exc:  # the index is down: at the next round
                log.warning("storage commitment: cannot resume pending requests: %s", exc)
            if self._closing.wait(self._resume_interval):
                return

    def _resume_one(self, pending: PendingCommitment) -> None:
        with self._lock:
            if pending.key in self._active:  # being reported here already (its lease had lapsed)
                return
        peer = self._peer_by_ae(pending.ae_title)
        if peer is None:
            log.warning(
                "storage commitment %s: no peer has the AE title %s any more; not reported",
                pending.transaction_uid,
                pending.ae_title,
            )
            assert self._journal is not None
            self._journal.remove(pending.key)
            return
        with self._lock:
            self._pending += 1
            if not pending.duplicate:
                self._transactions.add(pending.transaction_uid)
            self._active.add(pending.key)
        request = CommitmentRequest(pending.transaction_uid, references_of(pending))
        target = ReportTarget(peer.name, pending.ae_title, peer.host or pending.address, peer.port, peer.tls)
        job = Job(peer, request, None, target, pending.address, time.monotonic(), pending.duplicate, pending.key)
        log.info(
            "storage commitment %s from %s: resumed (%d instances)",
            pending.transaction_uid,
            peer.name,
            len(request.references),
        )
        self._submit(job)

    def _submit(self, job: Job) -> bool:
        try:
            self._workers.submit(self._run, job)
        except RuntimeError:  # closed
            self._release(job)
            return False
        return True

    # -- background ------------------------------------------------------------------------

    def _run(self, job: Job) -> None:
        verdicts: list[Verdict] = []
        delivered, attempts, comment = "", 0, ""
        finished = True  # reported or given up: out of the journal
        try:
            if job.duplicate:
                # PS3.4 J.3.3.1.2: a Transaction UID stays in use until its report is sent; a
                # second request under it is reported failed (Table J.3-2), the first one stands.
                verdicts = [Verdict(r, DUPLICATE_TRANSACTION_UID) for r in job.request.references]
            else:
                verdicts = self._verdicts(job)
            event_type, info = event_information(job.request.transaction_uid, verdicts, ae_title=self._ae_title)
            delivered, attempts, comment = self._deliver(job, event_type, info)
        except Stopped as exc:
            finished, comment = False, str(exc)
        except Exception:
            log.exception("storage commitment %s from %s failed", job.request.transaction_uid, job.peer.name)
            comment = "internal error"
        finally:
            self._release(job)
            if finished:
                self._forget(job)
        if not finished:  # its outcome comes once it is reported, here or by another replica
            log.info("storage commitment %s from %s: %s", job.request.transaction_uid, job.peer.name, comment)
            return
        self._report(job.outcome(verdicts, delivered, attempts, comment))

    def _verdicts(self, job: Job) -> list[Verdict]:
        for delay in (*self._check_retry_delays, None):
            try:
                verdicts: list[Verdict] = self._portal(
                    self._check.verdicts(job.request.references, job.peer.restriction)
                )
                return verdicts
            except ServiceUnavailable as exc:
                if delay is None or self._closing.wait(delay):
                    if self._journal is not None and self._closing.is_set():
                        raise Stopped("gateway stopping: checked again after the next start") from exc
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

    def _deliver(self, job: Job, event_type: int, info: Dataset) -> tuple[str, int, str]:
        """Deliver the report; (how, attempts, why not) -- how is "" when given up."""
        attempts = 0
        why = ""
        if job.assoc is not None and still_open(job.assoc):
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
                    if job.key is not None:
                        raise Stopped("gateway stopping: reported after the next start")
                    why = "gateway stopping"
                    break
                if not self._still_mine(job):
                    raise Stopped("taken over by another replica")
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

    def _still_mine(self, job: Job) -> bool:
        """Renew the job's lease before an attempt; False when another replica holds it."""
        if job.key is None or self._journal is None:
            return True
        try:
            return self._journal.renew(job.key)
        except Exception as exc:  # the index is down: keep reporting (the lease is long)
            log.info("storage commitment %s: lease not renewed: %s", job.request.transaction_uid, exc)
            return True

    def _forget(self, job: Job) -> None:
        if job.key is None or self._journal is None:
            return
        try:
            self._journal.remove(job.key)
        except Exception as exc:  # left in the journal: reported again after a restart
            log.warning("storage commitment %s: not removed from the index: %s", job.request.transaction_uid, exc)

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

    def _release(self, job: Job) -> None:
        self._unreserve(job.request.transaction_uid, job.duplicate)
        with self._lock:
            self._active.discard(job.key or "")

    def _unreserve(self, transaction_uid: str, duplicate: bool) -> None:
        with self._lock:
            self._pending -= 1
            if not duplicate:
                self._transactions.discard(transaction_uid)

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
