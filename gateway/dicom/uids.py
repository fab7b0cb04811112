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


# A corrected version of an instance (gateway.services.bulk_update) is a new object beside the
# original, never the original overwritten: ``version`` names it, "" being the object as stored.
_VERSION_RE = re.compile(r"[0-9a-z]{1,64}")


def instance_key(study: str, series: str, sop: str, version: str = "") -> str:
    """Object key of an instance's Part 10 file (of its corrected ``version``, when given).
    Only validated UIDs and version names can steer the key."""
    for uid, what in ((study, "StudyInstanceUID"), (series, "SeriesInstanceUID"), (sop, "SOPInstanceUID")):
        require_uid(uid, what)
    if not version:
        return f"studies/{study}/series/{series}/instances/{sop}.dcm"
    if _VERSION_RE.fullmatch(version) is None:
        raise ValueError(f"not a version name: {version[:80]!r}")
    return f"{versions_prefix(study, series, sop)}{version}.dcm"


def metadata_key(study: str, series: str, sop: str, version: str = "") -> str:
    """Object key of the DICOM JSON metadata stored beside the instance (or its ``version``)."""
    return instance_key(study, series, sop, version)[: -len(".dcm")] + ".json"


def versions_prefix(study: str, series: str, sop: str) -> str:
    """Where the corrected versions of an instance are kept (not an instance key itself:
    :func:`parse_instance_key` answers None for every key below it)."""
    return f"studies/{study}/series/{series}/instances/{sop}/versions/"


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


def parse_version_key(key: str) -> tuple[tuple[str, str, str], str] | None:
    """Inverse of :func:`instance_key` with a version: ((study, series, sop), version); None
    for keys that are not a corrected version's Part 10 object."""
    head, sep, name = key.rpartition("/versions/")
    if not sep or not name.endswith(".dcm") or _VERSION_RE.fullmatch(name[: -len(".dcm")]) is None:
        return None
    instance = parse_instance_key(head + ".dcm")
    return None if instance is None else (instance, name[: -len(".dcm")])
