"""Liveness and readiness probes (outside the DICOMweb base path)."""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response

from gateway.errors import GatewayError
from gateway.http.context import gateway_of


async def healthz(request: Request) -> Response:
    """The process is alive and serving HTTP."""
    return Response(b'{"status":"ok"}', media_type="application/json")


async def readyz(request: Request) -> Response:
    """Ready when the object store and the index both answer."""
    gw = gateway_of(request)
    checks: dict[str, str] = {}
    for name, probe in (("store", gw.store.ping), ("index", gw.index.ping)):
        try:
            await probe()
            checks[name] = "ok"
        except GatewayError as exc:
            checks[name] = f"unavailable: {exc.reason}"
    ready = all(v == "ok" for v in checks.values())
    body = orjson.dumps({"status": "ready" if ready else "unready", "checks": checks})
    return Response(body, status_code=200 if ready else 503, media_type="application/json")
