"""OIDC bearer JWTs (RFC 7519) verified against the provider's JWKS, after RFC 8725.

What a token must be to pass, checked in this order (each failure is an :class:`AuthError`,
answered 401 with ``WWW-Authenticate: Bearer error="invalid_token"`` per RFC 6750 3.1):

* a JWS in compact form: three base64url segments, at most 8 KiB. Five segments is a JWE
  (RFC 7516): refused, never decrypted;
* its ``alg`` one of the configured asymmetric algorithms (pinned, RFC 8725 3.1): ``none`` and
  every HMAC algorithm are refused, so a token "signed" with the RSA public key as an HMAC
  secret cannot pass (the key confusion of RFC 8725 2.1);
* its ``kid`` names a key of the configured JWKS whose type fits the algorithm (and whose own
  ``alg``/``use``, when given, agree). ``jku``, ``x5u``, ``jwk`` and ``x5c`` header parameters
  are never followed or used (RFC 8725 3.10): keys come only from the configured URL;
* ``crit`` is refused (we understand no extensions, RFC 7515 4.1.11);
* ``exp``, ``nbf`` and ``iat``, when present, JSON numbers (RFC 7519 NumericDate): PyJWT
  would take the string ``"1999999999"`` as a date;
* signature valid; ``iss`` and ``aud`` equal the configured ones; ``exp`` present and not past,
  ``nbf``/``iat`` not in the future, each with the configured leeway; ``sub`` present.

The audit trail names a token's principal ``jwt:<sub>`` (:class:`Principal`), apart from API
keys (``apikey:<name>``) whatever the ``sub`` says.

JWKS cache: fetched with httpx on first use, refetched after ``jwks_max_age``, and refetched
early when a token names an unknown ``kid`` (key rotation) - at most once per
``jwks_min_refresh`` seconds, so garbage tokens cannot turn into a request flood at the
provider. Concurrent refetches share one request.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio
import httpx
import jwt
from jwt.exceptions import (
    ExpiredSignatureError,
    ImmatureSignatureError,
    InvalidAudienceError,
    InvalidIssuerError,
    InvalidSignatureError,
    MissingRequiredClaimError,
    PyJWKError,
    PyJWTError,
)

from gateway.errors import ServiceUnavailable
from gateway.security.access import RestrictionError, parse_restriction
from gateway.security.principal import DEIDENTIFY_PROFILES, SCOPES, Principal
from gateway.settings import OidcSettings

MAX_TOKEN_BYTES = 8192
MAX_JWKS_BYTES = 1 << 20
_SEGMENT = re.compile(r"[A-Za-z0-9_\-]+")
_KEY_TYPE = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}
_ACCEPTED_TYP = frozenset({"jwt", "at+jwt", "application/at+jwt"})  # RFC 9068 2.1


class AuthError(Exception):
    """The request's credentials are missing or invalid (401). ``error`` is the RFC 6750 3.1
    code; ``description`` is safe to send (no token contents beyond what the client sent);
    ``reason`` is a short machine-readable code for the audit trail (``expired``,
    ``bad_signature``, ``unknown_kid``, ``alg_not_allowed``, ``malformed``, ``revoked_key``, ...),
    which may say more than the client is told (an API key's revocation, say)."""

    def __init__(self, description: str, error: str | None = "invalid_token", *, reason: str = "invalid") -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.reason = reason


@dataclass(frozen=True)
class SigningKey:
    jwk: jwt.PyJWK
    alg: str | None  # the JWK's own "alg", when it names one (RFC 7517 4.4)


class JwksCache:
    """The provider's signing keys by ``kid``."""

    def __init__(
        self,
        url: str,
        client: httpx.AsyncClient,
        *,
        min_refresh: float,
        max_age: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._url = url
        self._client = client
        self._min_refresh = min_refresh
        self._max_age = max_age
        self._clock = clock
        self._keys: dict[str, SigningKey] | None = None
        self._fetched = 0.0  # when the keys were last fetched successfully
        self._attempted = float("-inf")  # when a fetch was last tried
        self._lock = anyio.Lock()
        self.fetches = 0

    async def key(self, kid: str) -> SigningKey | None:
        now = self._clock()
        if self._keys is None or now - self._fetched > self._max_age:
            await self._refresh(now, stale_ok=self._keys is not None)
        elif kid not in self._keys and now - self._attempted >= self._min_refresh:
            await self._refresh(now, stale_ok=True)
        return (self._keys or {}).get(kid)

    async def _refresh(self, asked_at: float, *, stale_ok: bool) -> None:
        async with self._lock:
            if self._attempted >= asked_at:
                return  # another request refreshed while this one waited
            self._attempted = self._clock()
            try:
                keys = await self._fetch()
            except (httpx.HTTPError, ValueError) as exc:
                if stale_ok:
                    return  # keep verifying with the keys we have
                raise ServiceUnavailable(f"identity provider keys are unavailable: {type(exc).__name__}") from exc
            self._keys, self._fetched = keys, self._clock()

    async def _fetch(self) -> dict[str, SigningKey]:
        self.fetches += 1
        body = bytearray()
        # Redirects are not followed: the keys come from the configured URL only.
        async with self._client.stream("GET", self._url, headers={"Accept": "application/json"}) as response:
            response.raise_for_status()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_JWKS_BYTES:
                    raise ValueError("JWKS document too large")
        document = json.loads(body)
        if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
            raise ValueError("JWKS document has no keys list")
        keys: dict[str, SigningKey] = {}
        for item in document["keys"]:
            if not isinstance(item, dict) or not isinstance(item.get("kid"), str) or item.get("use", "sig") != "sig":
                continue
            try:
                declared = item.get("alg")
                keys[item["kid"]] = SigningKey(jwt.PyJWK(item), declared if isinstance(declared, str) else None)
            except PyJWKError:
                continue  # a key type or curve we do not support: tokens naming it fail as unknown kid
        return keys


class OidcVerifier:
    def __init__(self, settings: OidcSettings, jwks: JwksCache, *, clock: Callable[[], float] = time.time) -> None:
        if not (settings.issuer and settings.audience):
            raise ValueError("OIDC needs an issuer and an audience")
        self._settings = settings
        self._issuer = settings.issuer
        self._audience = settings.audience
        self._jwks = jwks
        self._clock = clock

    async def verify(self, token: str) -> Principal:
        header = _header(token, self._settings.algorithms)
        key = await self._jwks.key(header["kid"])
        if key is None:
            raise AuthError("token signing key (kid) is unknown", reason="unknown_kid")
        alg = header["alg"]
        if _KEY_TYPE.get(alg[:2]) != key.jwk.key_type or key.alg not in (None, alg):
            raise AuthError("token signing key does not fit its algorithm", reason="key_mismatch")
        _check_numeric_dates(token)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.jwk.key,
                algorithms=[alg],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._settings.leeway,
                options={"require": ["exp", "iss", "aud", "sub"], "verify_iat": True},
            )
        except ExpiredSignatureError:
            raise AuthError("token has expired", reason="expired") from None
        except ImmatureSignatureError:
            raise AuthError("token is not yet valid", reason="not_yet_valid") from None
        except InvalidIssuerError:
            raise AuthError("token issuer is not accepted", reason="bad_issuer") from None
        except InvalidAudienceError:
            raise AuthError("token audience is not accepted", reason="bad_audience") from None
        except MissingRequiredClaimError as exc:
            raise AuthError(f"token lacks the {exc.claim} claim", reason="missing_claim") from None
        except InvalidSignatureError:
            raise AuthError("token signature is invalid", reason="bad_signature") from None
        except PyJWTError:
            raise AuthError("token is malformed", reason="malformed") from None
        return self._principal(claims)

    def _principal(self, claims: dict[str, Any]) -> Principal:
        subject = claims["sub"]
        if not isinstance(subject, str) or not subject:
            raise AuthError("token subject is malformed", reason="malformed")
        restriction = None
        claim_name = self._settings.restriction_claim
        if claim_name and claim_name in claims:
            try:
                restriction = parse_restriction(claims[claim_name])
            except RestrictionError as exc:
                raise AuthError(f"token {exc}", reason="bad_restriction") from None
        return Principal(
            subject=subject[:256],
            kind="oidc",
            scopes=self._scopes(claims),
            restriction=restriction,
            deidentify=self._deidentify(claims),
        )

    def _deidentify(self, claims: dict[str, Any]) -> str | None:
        """The profile the configured claim names; a claim that names none we know rejects the
        token (fail closed: a token meant for de-identified answers never gets identified ones)."""
        claim_name = self._settings.deidentify_claim
        if not claim_name or claim_name not in claims:
            return None
        value = claims[claim_name]
        if value not in DEIDENTIFY_PROFILES:
            raise AuthError(f"token claim {claim_name} names no de-identification profile", reason="bad_claim")
        return str(value)

    def _scopes(self, claims: dict[str, Any]) -> frozenset[str]:
        raw = claims.get(self._settings.scope_claim, [])
        items = raw.split() if isinstance(raw, str) else raw if isinstance(raw, list) else []
        prefix = self._settings.scope_prefix
        return frozenset(
            s[len(prefix) :]
            for s in items
            if isinstance(s, str) and s.startswith(prefix) and s[len(prefix) :] in SCOPES
        )


def _check_numeric_dates(token: str) -> None:
    """``exp``/``nbf``/``iat`` must be JSON numbers (RFC 7519 2, NumericDate). Read before the
    signature is checked: a refusal here says nothing a forger could use."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except PyJWTError:
        raise AuthError("token is malformed", reason="malformed") from None
    for name in ("exp", "nbf", "iat"):
        value = claims.get(name)
        if name in claims and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise AuthError(f"token {name} claim is not a NumericDate (a JSON number)", reason="bad_type")


def _header(token: str, algorithms: tuple[str, ...]) -> dict[str, Any]:
    """The JOSE header of a compact JWS, after the structural checks of the module docstring."""
    if len(token) > MAX_TOKEN_BYTES:
        raise AuthError("token is too large", reason="too_large")
    segments = token.split(".")
    if len(segments) == 5:
        raise AuthError("encrypted tokens (JWE) are not accepted", reason="encrypted")
    # An empty signature is an Unsecured JWS (RFC 7519 6, alg "none"): read its header first, so
    # the audit trail says it was refused for its algorithm.
    if len(segments) != 3 or not all(_SEGMENT.fullmatch(s) for s in segments[:2]):
        raise AuthError("token is not a compact JWS", reason="malformed")
    if segments[2] and not _SEGMENT.fullmatch(segments[2]):
        raise AuthError("token is not a compact JWS", reason="malformed")
    try:
        header = jwt.get_unverified_header(token)
    except PyJWTError:
        raise AuthError("token header is malformed", reason="malformed") from None
    alg = header.get("alg")
    if "enc" in header:
        raise AuthError("encrypted tokens (JWE) are not accepted", reason="encrypted")
    if not isinstance(alg, str) or alg not in algorithms:
        raise AuthError("token algorithm is not accepted", reason="alg_not_allowed")
    if not segments[2]:
        raise AuthError("token is not a compact JWS", reason="malformed")
    if "crit" in header:
        raise AuthError("token has critical header extensions", reason="crit_header")
    typ = header.get("typ")
    if typ is not None and (not isinstance(typ, str) or typ.lower() not in _ACCEPTED_TYP):
        raise AuthError("token type is not accepted", reason="bad_type")
    if not isinstance(header.get("kid"), str) or not header["kid"]:
        raise AuthError("token names no signing key (kid)", reason="no_kid")
    return header
