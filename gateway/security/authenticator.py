"""From an ``Authorization`` header to a :class:`Principal` (RFC 6750 2.1 bearer tokens).

Two methods share the bearer syntax: API keys (``dwgk_...``, :mod:`gateway.security.apikeys`)
and OIDC JWTs (:mod:`gateway.security.jwt_auth`). Tokens in query parameters or form bodies
(RFC 6750 2.2-2.3) are not accepted: they end up in logs.
"""

from __future__ import annotations

import logging

import httpx

from gateway.errors import ServiceUnavailable
from gateway.security.apikeys import ApiKeyError, ApiKeyStore, looks_like_api_key
from gateway.security.jwt_auth import AuthError, JwksCache, OidcVerifier
from gateway.security.principal import ANONYMOUS, Principal
from gateway.settings import Settings

log = logging.getLogger(__name__)


class Authenticator:
    def __init__(self, settings: Settings, *, http_client: httpx.AsyncClient | None = None) -> None:
        self.required = settings.auth_required
        auth = settings.auth
        self._api_keys = ApiKeyStore(auth.api_keys_file.expanduser()) if auth.api_keys_file else None
        self._client: httpx.AsyncClient | None = None
        self._oidc: OidcVerifier | None = None
        oidc = auth.oidc
        if oidc.issuer and oidc.jwks_url:
            # No redirects, short timeouts: the JWKS comes from the configured URL or not at all.
            self._client = http_client or httpx.AsyncClient(timeout=httpx.Timeout(5.0), follow_redirects=False)
            jwks = JwksCache(oidc.jwks_url, self._client, min_refresh=oidc.jwks_min_refresh, max_age=oidc.jwks_max_age)
            self._oidc = OidcVerifier(oidc, jwks)

    async def authenticate(self, authorization: str | None) -> Principal:
        """The request's principal; raises AuthError (401) or ServiceUnavailable (JWKS down)."""
        if not self.required:
            return ANONYMOUS
        if not authorization:
            # RFC 6750 3.1: no error code when the request carried no credentials at all.
            raise AuthError("authentication required", error=None, reason="no_credentials")
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise AuthError(
                "use the Bearer authentication scheme (RFC 6750)", error="invalid_request", reason="bad_scheme"
            )
        if looks_like_api_key(token):
            try:
                principal, why = self._api_keys.check(token) if self._api_keys else (None, "api_keys_off")
            except ApiKeyError as exc:
                log.error("%s", exc)
                raise ServiceUnavailable("API keys cannot be checked now") from exc
            if principal is None:
                raise AuthError("API key is not valid", reason=why)
            return principal
        if self._oidc is None:
            raise AuthError("bearer token is not a valid API key", reason="malformed")
        return await self._oidc.verify(token)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
