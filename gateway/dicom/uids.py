"""UID validation (PS3.5 9.1) and the object-store keys built from validated UIDs."""

from __future__ import annotations

import re

from gateway.errors import InvalidUID

# PS3.5 9.1: components of digits separated by dots, no leading zero in a multi-digit
# component, at most 64 characters. The OpenAPI spec uses this exact pattern.
UID_PATTERN = r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$"
UID_MAX_LENGTH = 64
_UID_RE = re.compile(UID_PATTERN)


def is_valid_uid(value: str) -> bool:
    """True when ``value`` is a syntactically valid DICOM UID."""
    return len(value) <= UID_MAX_LENGTH and _UID_RE.fullmatch(value) is not None


def require_uid(value: str, what: str = "UID") -> str:
    """Return ``value`` unchanged, or raise :class:`InvalidUID` naming ``what``."""
    if not is_valid_uid(value):
        shown = value if len(value) <= 80 and value.isprintable() else repr(value[:80])
        raise InvalidUID(f"{what} {shown!s} is not a valid DICOM UID (PS3.5 9.1)")
    return value


def instance_key(study: str, series: str, sop: str) -> str:
    """Object key of an instance's Part 10 file. Only validated UIDs can steer the key."""
    for uid, what in ((study, "StudyInstanceUID"), (series, "SeriesInstanceUID"), (sop, "SOPInstanceUID")):
        require_uid(uid, what)
    return f"studies/{study}/series/{series}/instances/{sop}.dcm"


def metadata_key(study: str, series: str, sop: str) -> str:
    """Object key of the DICOM JSON metadata stored beside the instance."""
    return instance_key(study, series, sop)[: -len(".dcm")] + ".json"


def parse_instance_key(key: str) -> tuple[str, str, str] | None:
    """Inverse of :func:`instance_key`; ``None`` for keys that are not instance objects."""
    parts = key.split("/")
    if len(parts) != 6 or parts[0] != "studies" or parts[2] != "series" or parts[4] != "instances":
        return None
    if not parts[5].endswith(".dcm"):
        return None
    study, series, sop = parts[1], parts[3], parts[5][: -len(".dcm")]
    if not all(is_valid_uid(u) for u in (study, series, sop)):
        return None
    return study, series, sop
