"""One C-MOVE or C-GET from request to outcome, as both handlers run it (PS3.4 C.4.2, C.4.3).

The handlers differ only in where the sub-operations go (a sub-association to the destination,
or the requester's own association); what they share lives here, once: translating and planning
the identifier (a bad one is its failure status, an unavailable index or store 0xA701, anything
else 0xC001), the sub-operation loop with its C-CANCEL and final status, the status of a
requester that leaves mid-retrieve, and the closing of the streams with the audited outcome.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset

from gateway.dimse.find import FindPeer
from gateway.dimse.retrieve import CANCELLED, Plan, Retriever
from gateway.dimse.retrieve_outcome import RetrieveOutcome, Tally, final_status, outcome, report
from gateway.dimse.retrieve_query import Model, RetrieveFailure, parse_retrieve
from gateway.dimse.status import failure, identifier_of
from gateway.errors import ServiceUnavailable

__all__ = ["SUCCESS", "RetrieveRun"]

log = logging.getLogger(__name__)

SUCCESS = 0x0000
OUT_OF_RESOURCES_MATCHES = 0xA701  # PS3.4 C.4.2.1.5: unable to calculate the number of matches
UNABLE_TO_PROCESS_INTERNAL = 0xC001


@dataclass
class RetrieveRun:
    """The state of one request as its handler goes: what it reports when it ends, whatever
    the way it ends. ``operation`` is "C-MOVE" or "C-GET"; ``status`` and ``comment`` start as
    an internal failure, so that an unexpected end is reported as one."""

    operation: str
    peer: FindPeer
    retriever: Retriever
    started: float = field(default_factory=time.monotonic)
    level: str = ""
    status: int = UNABLE_TO_PROCESS_INTERNAL
    comment: str = "internal error"
    tally: Tally = field(default_factory=Tally)
    plan: Plan | None = None

    def planned(self, event: Any, sop_classes: dict[str, Model]) -> Plan | Dataset:
        """The plan of the request of ``event`` (restricted to the peer's), or the failure data
        set to answer it with (PS3.4 C.4.2.1.5, C.4.3.1.3)."""
        try:
            request = parse_retrieve(
                identifier_of(event, RetrieveFailure), str(event.request.AffectedSOPClassUID), sop_classes
            )
            self.level = request.level
            self.plan = self.retriever.plan(
                request, self.peer.restriction, deidentified=self.peer.deidentify is not None
            )
        except RetrieveFailure as exc:
            self.status, self.comment = exc.status, exc.comment
            return failure(exc.status, exc.comment, exc.offending)
        except ServiceUnavailable as exc:
            log.warning("%s from %s: %s", self.operation, self.peer.name, exc.reason)
            self.status, self.comment = OUT_OF_RESOURCES_MATCHES, "the index or store is unavailable"
            return failure(self.status, self.comment)
        except Exception:
            log.exception("%s from %s failed", self.operation, self.peer.name)
            return failure(self.status, self.comment)
        return self.plan

    def sub_operations(
        self,
        plan: Plan,
        *,
        accepted: Callable[[], dict[str, list[str]]],
        receiver_up: Callable[[], bool],
        cancelled: Callable[[], bool],
        sends_encoded: Callable[[], bool],
    ) -> Iterator[tuple[int, Dataset | None]]:
        """What the handler yields after the count (see
        :meth:`gateway.dimse.retrieve.Retriever.sub_operations`), noting C-CANCEL (0xFE00) or
        else the final status pynetdicom sends."""
        for result in self.retriever.sub_operations(
            plan,
            accepted=accepted,
            receiver_up=receiver_up,
            cancelled=cancelled,
            sends_encoded=sends_encoded,
            tally=self.tally,
        ):
            if result[0] == CANCELLED:
                self.status = CANCELLED
            yield result
        if self.status != CANCELLED:
            self.status = final_status(plan.count, self.tally)

    def left(self) -> None:
        """pynetdicom closed the handler's generator: the requester left mid-retrieve (or, for
        C-MOVE, the destination refused): what had started is reported as cancelled."""
        if self.status == SUCCESS and self.plan is not None and self.plan.count > 0:
            self.status, self.comment = CANCELLED, "association ended"

    def finish(self, destination: str, hook: Callable[[RetrieveOutcome], None] | None) -> None:
        """End the streams of the plan and report the outcome (to the log and ``hook``)."""
        if self.plan is not None:
            self.retriever.close(self.plan)
        done = outcome(
            self.operation, self.peer.name, self.level, destination, self.status, self.tally, self.plan,
            self.started, self.comment,
        )  # fmt: skip
        report(done, hook)
