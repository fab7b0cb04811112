"""Start-up validation of the security settings: one :class:`SettingsError` line per problem.

Part of the settings floor (``gateway.settings`` calls it), not of the security package: the
security package reads the settings, so the settings must not import it.

The rule that matters most: authentication may be off only on a loopback address (the embedded
default). Binding anything else without it refuses to start.
"""

from __future__ import annotations

import ipaddress
import math
import re
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from gateway.errors import SettingsError

if TYPE_CHECKING:
    # For the annotation only: gateway.settings calls validate_security while it validates,
    # so a run-time import would make the two modules import each other.
    from gateway.settings import Settings

# Asymmetric algorithms only (RFC 8725 3.1-3.2): a JWKS publishes public keys, so an HMAC
# algorithm here could only mean key confusion (HS256 "signed" with the RSA public key).
ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
CORP_VALUES = frozenset({"same-site", "same-origin", "cross-origin"})
_ORIGIN = re.compile(r"https?://[A-Za-z0-9.\-]+(:[0-9]{1,5})?|https?://\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")


_HOST_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9\-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9\-]*[A-Za-z0-9])?)*")


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def validate_security(s: Settings) -> None:
    _validate_auth(s)
    _validate_tls(s)
    _validate_cors(s)
    for proxy in s.trusted_proxies:
        try:
            ipaddress.ip_network(proxy, strict=False)
        except ValueError:
            raise SettingsError(f"trusted_proxies entry {proxy!r} is not an IP address or network") from None
    destination = s.audit.destination
    if destination not in ("", "stdout", "-", "off"):
        from pathlib import Path

        parent = Path(destination).expanduser().parent
        if not parent.is_dir():
            raise SettingsError(f"audit.destination {destination!r}: directory {parent} does not exist")
    for host in s.trusted_hosts:
        name = host[2:] if host.startswith("*.") else host
        if host != "*" and not (_HOST_NAME.fullmatch(name) or _is_ip(name.strip("[]"))):
            raise SettingsError(f"trusted_hosts entry {host!r} must be a host name or address (no port), *.domain or *")
    for name in ("rate_per_second", "header_timeout", "body_timeout", "min_body_rate"):
        if not math.isfinite(getattr(s.limits, name)):
            raise SettingsError(f"limits.{name} must be a finite number")


def _validate_auth(s: Settings) -> None:
    auth, oidc = s.auth, s.auth.oidc
    if auth.mode not in ("", "none", "required"):
        raise SettingsError(f"auth.mode {auth.mode!r} must be none or required")
    oidc_parts = {"issuer": oidc.issuer, "audience": oidc.audience, "jwks_url": oidc.jwks_url}
    if any(oidc_parts.values()) and not all(oidc_parts.values()):
        missing = next(name for name, value in oidc_parts.items() if not value)
        raise SettingsError(f"auth.oidc.{missing} is required when OIDC is configured (issuer, audience, jwks_url)")
    if oidc.jwks_url:
        url = urlsplit(oidc.jwks_url)
        if not (url.scheme == "https" or (url.scheme == "http" and is_loopback(url.hostname or ""))) or not url.netloc:
            raise SettingsError(f"auth.oidc.jwks_url {oidc.jwks_url!r} must be an https:// URL")
    if not oidc.algorithms:
        raise SettingsError("auth.oidc.algorithms must name at least one algorithm")
    for alg in oidc.algorithms:
        if alg not in ASYMMETRIC_ALGORITHMS:
            allowed = ", ".join(sorted(ASYMMETRIC_ALGORITHMS))
            raise SettingsError(f"auth.oidc.algorithms: {alg!r} is not allowed (use {allowed})")
    if not 0 <= oidc.leeway <= 300:
        raise SettingsError("auth.oidc.leeway must be between 0 and 300 seconds")
    if not (0 <= oidc.jwks_min_refresh <= 86400 and 0 < oidc.jwks_max_age <= 7 * 86400):
        raise SettingsError("auth.oidc.jwks_min_refresh / jwks_max_age are out of range")
    if not oidc.scope_claim:
        raise SettingsError("auth.oidc.scope_claim must not be empty")
    if auth.api_keys_file is not None and not auth.api_keys_file.expanduser().parent.is_dir():
        raise SettingsError(f"auth.api_keys_file {auth.api_keys_file}: its directory does not exist")
    if s.auth_required and not (oidc.issuer or auth.api_keys_file):
        raise SettingsError("auth.mode is required but neither auth.oidc nor auth.api_keys_file is configured")
    if not s.auth_required and not is_loopback(s.host):
        raise SettingsError(
            f"refusing to serve on {s.host} without authentication: configure auth.oidc or auth.api_keys_file "
            "(or bind 127.0.0.1)"
        )


def _validate_tls(s: Settings) -> None:
    tls = s.tls
    if (tls.cert_file is None) != (tls.key_file is None):
        raise SettingsError("tls.cert_file and tls.key_file must be given together")
    for name, path in (("cert_file", tls.cert_file), ("key_file", tls.key_file)):
        if path is not None and not path.expanduser().is_file():
            raise SettingsError(f"tls.{name} {path} does not exist")
    if tls.min_version not in ("1.2", "1.3"):
        raise SettingsError(f"tls.min_version {tls.min_version!r} must be 1.2 or 1.3")


def _validate_cors(s: Settings) -> None:
    cors = s.cors
    for origin in cors.origins:
        if origin == "*":
            if cors.allow_credentials:
                raise SettingsError("cors.origins '*' cannot be combined with cors.allow_credentials")
            continue
        if not _ORIGIN.fullmatch(origin):
            raise SettingsError(f"cors.origins entry {origin!r} must be an origin like https://viewer.example.org")
    if not 0 <= cors.max_age <= 86400:
        raise SettingsError("cors.max_age must be between 0 and 86400 seconds")
    if cors.corp is not None and cors.corp not in CORP_VALUES:
        raise SettingsError(f"cors.corp {cors.corp!r} must be one of {', '.join(sorted(CORP_VALUES))}")
