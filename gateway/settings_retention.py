"""Retention rules (``[[retention]]`` tables) and their start-up validation.

Part of the settings floor (``gateway.settings`` imports the rule and calls the validation).
A rule selects instances by where they came from (``origin``), the Modality of their series
and their SOP Class, and says how long they stay: ``max_age_seconds`` after they were stored,
or ``max_idle_seconds`` after their series was last read (:mod:`gateway.services.access_clock`).
The PACS cache expiry (``pacs_cache_max_age``) is one such rule, built here
(:func:`effective_rules`), so one sweep (:mod:`gateway.services.retention`) does both.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.errors import SettingsError

if TYPE_CHECKING:
    from gateway.settings import Settings

PACS_CACHE_RULE = "pacs-cache"  # the name of the rule pacs_cache_max_age stands for
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_PEER = re.compile(r"[A-Za-z0-9_.-]+")
_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")  # PS3.5 9.1
_MODALITY = re.compile(r"[A-Z0-9_ ]{1,16}")  # a CS value (PS3.5 6.2)
ORIGINS = ("stow", "import", "dimse", "pacs")


@dataclass(frozen=True)
class RetentionRule:
    """One ``[[retention]]`` table. ``origin``: ``stow``, ``import``, ``dimse`` (every DIMSE
    client) or ``dimse:<name>``, ``pacs`` (every PACS cache) or ``pacs:<name>``; "" any."""

    name: str = ""  # in the change feed's reason, the dry run and logs
    origin: str = ""
    modality: str = ""  # the series' Modality (0008,0060), e.g. "CR"
    sop_class: str = ""  # SOP Class UID (0008,0016)
    max_age_seconds: float = 0.0  # since stored
    max_idle_seconds: float = 0.0  # since last read (or stored, if later); one of the two

    @property
    def limit(self) -> float:
        """Seconds an instance stays: since stored, or since last used (:attr:`idle`)."""
        return self.max_idle_seconds or self.max_age_seconds

    @property
    def idle(self) -> bool:
        return self.max_idle_seconds > 0

    @property
    def origin_match(self) -> str:
        """The origin as :class:`gateway.ports.RetentionMatch` takes it (a prefix ends in ':')."""
        return self.origin + ":" if self.origin in ("dimse", "pacs") else self.origin


def validate_retention(s: Settings) -> None:
    if s.retention_interval_seconds <= 0:
        raise SettingsError("retention_interval_seconds must be positive seconds")
    names: set[str] = set()
    for i, rule in enumerate(s.retention):
        where = f"retention {rule.name!r}" if rule.name else f"retention[{i}]"
        if not _NAME.fullmatch(rule.name):
            raise SettingsError(f"{where}: name must be 1-64 letters, digits, '-', '_' or '.'")
        if rule.name.lower() in names or rule.name.lower() == PACS_CACHE_RULE:
            raise SettingsError(f"{where}: the name is used by another rule ({PACS_CACHE_RULE!r} is reserved)")
        names.add(rule.name.lower())
        kind, _, peer = rule.origin.partition(":")
        if rule.origin and (kind not in ORIGINS or (peer and kind not in ("dimse", "pacs"))):
            raise SettingsError(
                f"{where}: origin {rule.origin!r} must be stow, import, dimse, dimse:<client>, pacs or pacs:<node>"
            )
        if ":" in rule.origin and not _PEER.fullmatch(peer):
            raise SettingsError(f"{where}: origin {rule.origin!r} names no client or node")
        if rule.modality and not _MODALITY.fullmatch(rule.modality):
            raise SettingsError(f"{where}: modality {rule.modality!r} is not a Modality code (e.g. CT, MR)")
        if rule.sop_class and not _UID.fullmatch(rule.sop_class):
            raise SettingsError(f"{where}: sop_class {rule.sop_class!r} is not a UID")
        if rule.max_age_seconds < 0 or rule.max_idle_seconds < 0:
            raise SettingsError(f"{where}: max_age_seconds and max_idle_seconds must be positive seconds")
        if (rule.max_age_seconds > 0) == (rule.max_idle_seconds > 0):
            raise SettingsError(
                f"{where}: one of max_age_seconds (since stored) or max_idle_seconds (since last read)"
                " must be set, and only one"
            )


def effective_rules(s: Settings) -> tuple[RetentionRule, ...]:
    """The ``[[retention]]`` rules, and the PACS cache rule when ``pacs_cache_max_age`` is set
    and a PACS is configured."""
    rules = s.retention
    if s.pacs_cache_max_age > 0 and s.pacs:
        rules = (RetentionRule(name=PACS_CACHE_RULE, origin="pacs", max_age_seconds=s.pacs_cache_max_age), *rules)
    return rules


def effective_interval(s: Settings) -> float:
    """Seconds between sweeps: ``retention_interval_seconds``, and with the PACS cache rule no
    more than half its age (at least 0.5 s), as the cache expiry always swept."""
    if s.pacs_cache_max_age > 0 and s.pacs:
        return min(s.retention_interval_seconds, max(s.pacs_cache_max_age / 2, 0.5))
    return s.retention_interval_seconds
