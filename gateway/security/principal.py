"""The authenticated principal: who is asking, with which scopes and which study restriction."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from gateway.dicom.deidentify import PROFILES
from gateway.security.access import Restriction

# Scopes (issue #4): read = QIDO/WADO, write = STOW, admin = maintenance (reindex, delete),
# metrics = GET /metrics (Prometheus scraping; unrestricted principals only).
READ = "read"
WRITE = "write"
ADMIN = "admin"
METRICS = "metrics"
SCOPES = frozenset({READ, WRITE, ADMIN, METRICS})
# De-identification profiles a principal may be given (PS3.15 E.1).
DEIDENTIFY_PROFILES = PROFILES

Kind = Literal["anonymous", "oidc", "apikey", "dimse"]


@dataclass(frozen=True)
class Principal:
    """``subject`` is the token's ``sub`` or the API key's name; ``restriction`` None means all
    studies; ``deidentify`` names the confidentiality profile its answers pass through.
    The anonymous principal exists only when authentication is off (loopback)."""

    subject: str
    kind: Kind
    scopes: frozenset[str]
    restriction: Restriction | None = None
    # "basic": every answer it receives is de-identified (gateway.dicom.deidentify); None: as stored.
    deidentify: str | None = None

    @property
    def audit_id(self) -> str:
        """How the audit trail names this principal (PS3.15 A.5 ActiveParticipant UserID):
        ``apikey:<name>``, ``jwt:<sub>`` or ``dimse:<peer name>``, so a token whose ``sub`` is ``apikey:x`` is never
        taken for the API key ``x`` (key names have no colon)."""
        if self.kind == "apikey":
            return f"apikey:{self.subject}"
        if self.kind == "oidc":
            return f"jwt:{self.subject}"
        if self.kind == "dimse":
            return f"dimse:{self.subject}"  # a [[dimse_clients]] or [[pacs]] peer of the DIMSE front door
        return self.subject

    @property
    def rate_key(self) -> str:
        return f"{self.kind}:{self.subject}"


ANONYMOUS = Principal(subject="anonymous", kind="anonymous", scopes=SCOPES)
