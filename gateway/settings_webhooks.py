"""Start-up validation of ``[[webhooks]]``: one :class:`SettingsError` line per problem.

Part of the settings floor (``gateway.settings`` calls it), like :mod:`gateway.settings_security`.
A receiver is reached over HTTPS unless the operator says otherwise for that webhook
(``allow_http``): the entries name patients' studies, and the signature proves who sent them,
not that nobody else read them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from gateway.errors import SettingsError

if TYPE_CHECKING:
    # For the annotation only: gateway.settings calls these while it loads.
    from gateway.settings import Settings

WEBHOOK_ACTIONS = frozenset({"create", "delete", "update", "series-stable"})
# The shortest secret accepted: HMAC keys shorter than the hash's output weaken it (RFC 2104 3);
# 16 characters already refuse the obvious mistakes ("secret", "changeme").
MIN_SECRET_LENGTH = 16
MAX_SERIES_STABLE_SECONDS = 86400.0
MAX_TIMEOUT = 20.0  # a POST must end well within the delivery lease (services.webhooks.LEASE_SECONDS)


def resolve_secrets(settings: Settings, env: Mapping[str, str]) -> Settings:
    """Each webhook's ``secret_env`` read once, at start-up (nothing reads the environment later)."""
    hooks = []
    for i, hook in enumerate(settings.webhooks):
        if hook.secret_env is not None:
            where = _where(i, hook.name)
            if hook.secret is not None:
                raise SettingsError(f"{where}: give secret or secret_env, not both")
            value = env.get(hook.secret_env)
            if not value:
                raise SettingsError(f"{where}: secret_env names {hook.secret_env}, which is not set")
            hook = dataclasses.replace(hook, secret=value)
        hooks.append(hook)
    return dataclasses.replace(settings, webhooks=tuple(hooks))


def validate_webhooks(s: Settings) -> None:
    seen: set[str] = set()
    for i, hook in enumerate(s.webhooks):
        where = _where(i, hook.name)
        if not hook.name or not all(c.isascii() and (c.isalnum() or c in "-_.") for c in hook.name):
            raise SettingsError(f"{where}: name must be letters, digits, '-', '_' or '.' (it names a metric label)")
        if len(hook.name) > 64:
            raise SettingsError(f"{where}: name must be at most 64 characters")
        if hook.name.lower() in seen:
            raise SettingsError(f"{where}: the name is used by another [[webhooks]] entry")
        seen.add(hook.name.lower())
        url = urlsplit(hook.url)
        if url.scheme not in ("https", "http") or not url.hostname:
            raise SettingsError(f"{where}: url {hook.url!r} must be an absolute https:// URL")
        if url.scheme == "http" and not hook.allow_http:
            raise SettingsError(
                f"{where}: url {hook.url!r} is plain http; use https, or set allow_http = true for a receiver"
                " the entries may reach unencrypted (e.g. on the same host)"
            )
        if url.username is not None or url.password is not None:
            raise SettingsError(f"{where}: url must not carry credentials (the signature authenticates the gateway)")
        if hook.secret is None:
            raise SettingsError(f"{where}: secret (or secret_env) is required: every delivery is signed")
        if len(hook.secret) < MIN_SECRET_LENGTH:
            raise SettingsError(f"{where}: secret must be at least {MIN_SECRET_LENGTH} characters")
        unknown = sorted(set(hook.actions) - WEBHOOK_ACTIONS)
        if unknown:
            raise SettingsError(f"{where}: action {unknown[0]!r} is not one of {', '.join(sorted(WEBHOOK_ACTIONS))}")
        if not 0 <= hook.series_stable_seconds <= MAX_SERIES_STABLE_SECONDS:
            raise SettingsError(
                f"{where}: series_stable_seconds must be between 0 (none) and {MAX_SERIES_STABLE_SECONDS:.0f}"
            )
        if "series-stable" in hook.actions and hook.series_stable_seconds == 0:
            raise SettingsError(f'{where}: action "series-stable" needs series_stable_seconds (the quiet period)')
        if not 0 < hook.timeout <= MAX_TIMEOUT:
            raise SettingsError(f"{where}: timeout must be more than 0 and at most {MAX_TIMEOUT:.0f} seconds")
        if any(not origin.strip() for origin in hook.origins):
            raise SettingsError(f"{where}: origins must not contain an empty name")


def _where(i: int, name: str) -> str:
    return f"webhooks {name!r}" if name else f"webhooks[{i}]"
