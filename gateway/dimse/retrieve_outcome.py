"""What became of a C-MOVE or C-GET, for its final status, the audit trail and the metrics:
the receiver's answer to each C-STORE sub-operation as it comes (:class:`Tally`), the final
status pynetdicom sends (PS3.4 C.4.2.1.5, C.4.3.1.3) and the outcome a handler reports."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from gateway.dimse.observe import notify

__all__ = ["NOT_PERFORMED", "RetrieveOutcome", "Tally", "final_status", "outcome", "report"]

log = logging.getLogger(__name__)


class Locates(Protocol):
    """Where each planned instance lives (gateway.dimse.retrieve.Plan has this shape)."""

    def where(self, sop: str) -> tuple[str | None, str | None]: ...


NOT_PERFORMED = 0xA702  # PS3.4 C.4.2.1.5: "unable to perform sub-operations"
STORE_WARNINGS = (0xB000, 0xB006, 0xB007)  # PS3.4 B.2.3


@dataclass(frozen=True)
class RetrieveOutcome:
    """One C-MOVE or C-GET as audited: who, what level, where to, the final status, the
    sub-operation counts (as the receiver answered them), the (study, series, SOP Instance UID)
    of each instance delivered and the (study, SOP Instance UID, status) of each that failed."""

    peer: str
    operation: str  # "C-MOVE" or "C-GET"
    level: str
    destination: str
    status: int
    completed: int
    failed: int
    warning: int
    duration: float
    comment: str = ""
    instances: tuple[tuple[str, str, str], ...] = ()
    failures: tuple[tuple[str | None, str | None, int], ...] = ()


@dataclass
class Tally:
    """What became of each sub-operation: the instances yielded, and the receiver's C-STORE
    responses as they come (C-MOVE: :meth:`answered`, called by the sub-association's
    ``send_c_store``, :func:`gateway.netdicom.encoded_store.answers_to`; C-GET: pynetdicom's
    ``EVT_DIMSE_RECV`` on the requester's association, :meth:`on_received`)."""

    sent: list[str] = field(default_factory=list)  # SOP Instance UIDs yielded as data sets
    unsent: list[str] = field(default_factory=list)  # yielded as stand-ins: failed, nothing sent
    answers: dict[str, int] = field(default_factory=dict)  # SOP Instance UID → C-STORE status

    def answered(self, sop: str, status: int) -> None:
        self.answers[sop] = status

    def on_received(self, event: Any) -> None:
        message = event.message
        if type(message).__name__ != "C_STORE_RSP":
            return
        command = message.command_set
        self.answers[str(command.get("AffectedSOPInstanceUID", ""))] = int(command.get("Status", 0xC000))

    @property
    def yielded(self) -> int:
        return len(self.sent) + len(self.unsent)

    @property
    def completed(self) -> int:
        return sum(1 for status in self.answers.values() if status == 0x0000)

    @property
    def warning(self) -> int:
        return sum(1 for status in self.answers.values() if status in STORE_WARNINGS)

    @property
    def failed(self) -> int:
        return max(self.yielded - self.completed - self.warning, 0)

    def delivered(self) -> list[str]:
        return [sop for sop in self.sent if self.answers.get(sop, -1) in (0x0000, *STORE_WARNINGS)]

    def failures(self) -> list[tuple[str, int]]:
        """(SOP Instance UID, status) of each failed sub-operation: the receiver's failure
        status, or 0xA702 for one that was not sent or not answered."""
        failed = [(sop, self.answers.get(sop, NOT_PERFORMED)) for sop in self.sent]
        failed = [(sop, status) for sop, status in failed if status not in (0x0000, *STORE_WARNINGS)]
        return failed + [(sop, NOT_PERFORMED) for sop in self.unsent]


def final_status(announced: int, tally: Tally) -> int:
    """The final status pynetdicom sends after the last sub-operation (PS3.4 C.4.2.1.5,
    C.4.3.1.3), for the audit: 0xA702 when every announced one failed, 0xB000 when some failed
    or warned, else 0x0000."""
    if tally.failed and tally.failed == announced:
        return NOT_PERFORMED
    return 0xB000 if tally.failed or tally.warning else 0x0000


def outcome(
    operation: str,
    peer: str,
    level: str,
    destination: str,
    status: int,
    tally: Tally,
    plan: Locates | None,
    started: float,
    comment: str,
) -> RetrieveOutcome:
    """The outcome of a C-MOVE or C-GET, as its handler reports it."""

    def where(sop: str) -> tuple[str | None, str | None]:
        return plan.where(sop) if plan is not None else (None, None)

    instances = tuple((study or "", series or "", sop) for sop in tally.delivered() for study, series in [where(sop)])
    failures = tuple((where(sop)[0], sop, code) for sop, code in tally.failures())
    return RetrieveOutcome(
        peer, operation, level, destination, status, tally.completed, tally.failed, tally.warning,
        time.monotonic() - started, comment, instances, failures,
    )  # fmt: skip


def report(outcome: RetrieveOutcome, hook: Callable[[RetrieveOutcome], None] | None) -> None:
    log.info(
        "%s from %s: level %s, to %s, status 0x%04X, %d completed, %d failed, %d warning%s",
        outcome.operation,
        outcome.peer,
        outcome.level or "?",
        outcome.destination or "-",
        outcome.status,
        outcome.completed,
        outcome.failed,
        outcome.warning,
        f" ({outcome.comment})" if outcome.comment else "",
    )
    notify(hook, outcome, outcome.operation)
