"""What a refused DIMSE request is answered with: a status and its ErrorComment (PS3.7 C.4),
the same for every service class of the DIMSE front door."""

from __future__ import annotations

from typing import Any

from pydicom.dataset import Dataset

__all__ = ["MAX_COMMENT", "Refusal", "failure", "identifier_of"]

MAX_COMMENT = 64  # ErrorComment is LO (PS3.7 C.4, PS3.5 Table 6.2-1)
UNABLE_TO_PROCESS = 0xC000


class Refusal(Exception):
    """A request the gateway refuses: ``status``, an ErrorComment (PS3.7 C.4) and the
    OffendingElement when one key is at fault."""

    def __init__(self, status: int, comment: str, offending: int | None = None) -> None:
        super().__init__(comment)
        self.status = status
        self.comment = comment[:MAX_COMMENT]
        self.offending = offending


def failure(status: int, comment: str, offending: int | None = None) -> Dataset:
    """A status data set with its ErrorComment (PS3.7 C.4) and OffendingElement when known."""
    ds = Dataset()
    ds.Status = status
    if comment:
        ds.ErrorComment = comment[:MAX_COMMENT]
    if offending is not None:
        ds.OffendingElement = [offending]
    return ds


def identifier_of(event: Any, refusal: type[Refusal]) -> Dataset:
    """The request's identifier, decoded by pynetdicom on first access; ``refusal`` with
    0xC000 (unable to process) when it cannot be decoded."""
    try:
        identifier: Dataset = event.identifier
    except Exception as exc:
        raise refusal(UNABLE_TO_PROCESS, "the identifier cannot be decoded") from exc
    return identifier
