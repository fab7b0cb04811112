"""One storage commitment request as the handler works on it (:mod:`gateway.dimse.commitment`):
the calling peer, the job a worker thread reports, and the outcome that is audited."""

from __future__ import annotations

import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.dimse.commitment_report import ReportTarget
from gateway.dimse.commitment_request import CommitmentRequest
from gateway.security.access import Restriction
from gateway.services.commitment import PROCESSING_FAILURE, Reference, Verdict
from gateway.settings import PacsTls

__all__ = ["Checker", "CommitmentOutcome", "CommitmentPeer", "Job", "Stopped"]

SUCCESS = 0x0000


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
class Job:
    """An accepted request on its way to its report; ``key`` names it in the journal."""

    peer: CommitmentPeer
    request: CommitmentRequest
    assoc: Any  # the requesting association (pynetdicom.association.Association); None once resumed
    target: ReportTarget
    address: str  # where the request came from
    started: float
    duplicate: bool  # its Transaction UID is already in use by a request not yet reported
    key: str | None = None  # in the journal

    def outcome(self, verdicts: Sequence[Verdict], delivered: str, attempts: int, comment: str) -> CommitmentOutcome:
        """What is audited once the report went (``delivered``: how) or was given up."""
        decided = {v.reference.sop_instance_uid: v for v in verdicts}
        instances, failed = [], []
        for reference in self.request.references:
            verdict = decided.get(reference.sop_instance_uid, Verdict(reference, PROCESSING_FAILURE))
            if verdict.failure is None and verdict.study_uid and verdict.series_uid:
                instances.append((verdict.study_uid, verdict.series_uid, reference.sop_instance_uid))
            else:
                reason = verdict.failure or PROCESSING_FAILURE
                failed.append((verdict.study_uid, reference.sop_instance_uid, reason))
        return CommitmentOutcome(
            self.peer.name,
            self.target.ae_title,
            self.address,
            self.request.transaction_uid,
            SUCCESS if delivered else PROCESSING_FAILURE,
            instances=tuple(instances),
            failed=tuple(failed),
            delivered=delivered,
            attempts=attempts,
            duration=time.monotonic() - self.started,
            comment=comment,
        )


class Stopped(Exception):
    """The job ends unreported and stays in the journal (the gateway stopping, or another
    replica took it over)."""
