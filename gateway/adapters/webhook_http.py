"""Webhook deliveries over HTTP(S) with httpx (:class:`gateway.ports.WebhookSender`).

Redirects are not followed (a receiver that moved is a configuration to fix, and a redirect
would send patients' UIDs somewhere the operator did not name); certificates are verified
against the system's CAs; the usual environment variables apply (``SSL_CERT_FILE``,
``HTTPS_PROXY``, ``NO_PROXY``).
"""

from __future__ import annotations

import httpx


class HttpWebhookSender:
    def __init__(self) -> None:
        self._client = httpx.AsyncClient(follow_redirects=False)

    async def post(self, url: str, body: bytes, headers: dict[str, str], *, within: float) -> str | None:
        try:
            response = await self._client.post(url, content=body, headers=headers, timeout=within)
        except httpx.TimeoutException:
            return f"no answer within {within:g} s"
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if 200 <= response.status_code < 300:
            return None
        return f"answered {response.status_code}"

    async def aclose(self) -> None:
        await self._client.aclose()
