"""API keys for machine clients (STOW uploaders): named, scoped, revocable, stored hashed.

A key is ``dwgk_<id>_<secret>``: ``id`` (12 hex digits) finds the entry, ``secret`` (256 random
bits) proves possession. Clients send it as a bearer token (``Authorization: Bearer dwgk_...``,
RFC 6750 2.1). The key file keeps only a per-key random salt and SHA-256(salt || secret): the
secret has 256 bits of entropy, so a slow password hash (scrypt) would add nothing but CPU per
request; comparison is constant-time (:func:`hmac.compare_digest`).

Key file (JSON, written by ``dicomweb-gateway apikey create/revoke``, mode 0600)::

    {"version": 1, "keys": [
      {"name": "uploader-1", "id": "3f9a1c2b7d4e", "salt": "<32 hex>", "sha256": "<64 hex>",
       "scopes": ["write"], "created": "2025-01-31T12:00:00Z", "revoked": false,
       "restriction": {"StudyInstanceUID": ["1.2.3"]},    # optional, see gateway.security.access
       "deidentify": "basic"}                              # optional: answers de-identified
    ]}

The gateway re-reads the file when it changes, so a revocation takes effect without a restart.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import re
import secrets
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.security.access import Restriction, RestrictionError, parse_restriction
from gateway.security.principal import DEIDENTIFY_PROFILES, SCOPES, Principal

PREFIX = "dwgk_"
_KEY = re.compile(r"dwgk_([0-9a-f]{12})_([A-Za-z0-9_\-]{43})")
_NAME = re.compile(r"[A-Za-z0-9._\-]{1,64}")
_RECHECK_SECONDS = 1.0


class ApiKeyError(Exception):
    """A key-file or key-command problem; the message is one line for the user."""


@dataclass(frozen=True)
class ApiKeyEntry:
    name: str
    id: str
    salt: bytes
    digest: bytes
    scopes: frozenset[str]
    created: str
    revoked: bool
    restriction: Restriction | None
    deidentify: str | None = None


def looks_like_api_key(token: str) -> bool:
    return token.startswith(PREFIX)


def _digest(salt: bytes, secret: str) -> bytes:
    return hashlib.sha256(salt + secret.encode("ascii")).digest()


class ApiKeyStore:
    """The key file, re-read when its size or mtime changes (checked at most once a second)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._stamp: tuple[int, int] | None = None
        self._checked = 0.0
        self._by_id: dict[str, ApiKeyEntry] = {}

    def authenticate(self, token: str) -> Principal | None:
        """The key's principal, or None when the key is unknown, wrong or revoked."""
        return self.check(token)[0]

    def check(self, token: str) -> tuple[Principal | None, str]:
        """The key's principal and ``"ok"``, or None and why not, for the audit trail only:
        ``malformed``, ``unknown_key``, ``revoked_key`` or ``bad_secret`` (the client is told
        none of this; each costs the same hashing work)."""
        match = _KEY.fullmatch(token)
        if match is None:
            return None, "malformed"
        self._refresh()
        entry = self._by_id.get(match.group(1))
        if entry is None or entry.revoked:
            # Spend the same hashing work either way: no timing signal for existing ids.
            hmac.compare_digest(_digest(b"\0" * 16, match.group(2)), b"\0" * 32)
            return None, "unknown_key" if entry is None else "revoked_key"
        if not hmac.compare_digest(_digest(entry.salt, match.group(2)), entry.digest):
            return None, "bad_secret"
        principal = Principal(
            subject=entry.name,
            kind="apikey",
            scopes=entry.scopes,
            restriction=entry.restriction,
            deidentify=entry.deidentify,
        )
        return principal, "ok"

    def _refresh(self) -> None:
        now = time.monotonic()
        if self._stamp is not None and now - self._checked < _RECHECK_SECONDS:
            return
        self._checked = now
        try:
            st = self._path.stat()
        except FileNotFoundError:
            self._by_id, self._stamp = {}, (0, 0)
            return
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            self._by_id = {e.id: e for e in read_keys(self._path)}
            self._stamp = stamp


def read_keys(path: Path) -> list[ApiKeyEntry]:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        raise ApiKeyError(f"API key file {path} is unreadable: {exc}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("keys"), list):
        raise ApiKeyError(f"API key file {path} has no 'keys' list")
    return [_entry(item, path) for item in raw["keys"]]


def _entry(item: Any, path: Path) -> ApiKeyEntry:
    try:
        scopes = frozenset(item["scopes"])
        if not scopes <= SCOPES:
            raise ValueError(f"unknown scope in {sorted(scopes)}")
        restriction = parse_restriction(item["restriction"]) if item.get("restriction") is not None else None
        deidentify = item.get("deidentify")
        if deidentify is not None and deidentify not in DEIDENTIFY_PROFILES:
            raise ValueError(f"unknown de-identification profile {deidentify!r}")
        return ApiKeyEntry(
            name=str(item["name"]),
            id=str(item["id"]),
            salt=bytes.fromhex(item["salt"]),
            digest=bytes.fromhex(item["sha256"]),
            scopes=scopes,
            created=str(item.get("created", "")),
            revoked=bool(item.get("revoked", False)),
            restriction=restriction,
            deidentify=deidentify,
        )
    except (KeyError, TypeError, ValueError, RestrictionError) as exc:
        raise ApiKeyError(f"API key file {path} has a malformed entry: {exc}") from None


def create_key(
    path: Path,
    name: str,
    scopes: frozenset[str],
    restriction: dict[str, Any] | None = None,
    deidentify: str | None = None,
) -> tuple[ApiKeyEntry, str]:
    """Add a key to the file; returns its entry and the key itself (shown once, never stored)."""
    if not _NAME.fullmatch(name):
        raise ApiKeyError(f"key name {name!r} must be 1-64 letters, digits, '.', '_' or '-'")
    if not scopes or not scopes <= SCOPES:
        raise ApiKeyError(f"scopes must be among {', '.join(sorted(SCOPES))}")
    if restriction is not None:
        try:
            parse_restriction(restriction)
        except RestrictionError as exc:
            raise ApiKeyError(str(exc)) from None
    if deidentify is not None and deidentify not in DEIDENTIFY_PROFILES:
        raise ApiKeyError(f"de-identification profile must be one of {', '.join(sorted(DEIDENTIFY_PROFILES))}")
    entries = _raw_entries(path)
    if any(e["name"] == name and not e.get("revoked") for e in entries):
        raise ApiKeyError(f"an active key named {name!r} exists; revoke it first")
    key_id, secret, salt = secrets.token_hex(6), secrets.token_urlsafe(32), secrets.token_bytes(16)
    item: dict[str, Any] = {
        "name": name,
        "id": key_id,
        "salt": salt.hex(),
        "sha256": _digest(salt, secret).hex(),
        "scopes": sorted(scopes),
        "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "revoked": False,
    }
    if restriction is not None:
        item["restriction"] = restriction
    if deidentify is not None:
        item["deidentify"] = deidentify
    _write(path, [*entries, item])
    return _entry(item, path), f"{PREFIX}{key_id}_{secret}"


def revoke_key(path: Path, name: str) -> int:
    """Mark every active key named ``name`` revoked; returns how many were."""
    entries = _raw_entries(path)
    count = 0
    for e in entries:
        if e.get("name") == name and not e.get("revoked"):
            e["revoked"] = True
            count += 1
    if count:
        _write(path, entries)
    return count


def _raw_entries(path: Path) -> list[dict[str, Any]]:
    read_keys(path)  # validates
    if not path.exists():
        return []
    keys: list[dict[str, Any]] = json.loads(path.read_text(encoding="utf-8"))["keys"]
    return keys


def _write(path: Path, entries: list[dict[str, Any]]) -> None:
    """Replace the file atomically (readers see the old or the new file, never half of one)."""
    text = json.dumps({"version": 1, "keys": entries}, indent=2) + "\n"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".apikeys-", suffix=".json")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
