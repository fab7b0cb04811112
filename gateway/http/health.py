"""Liveness and readiness probes (outside the DICOMweb base path)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping

import anyio
import orjson
from starlette.requests import Request
from starlette.responses import Response

from gateway import observability
from gateway.errors import GatewayError
from gateway.http.context import gateway_of
from gateway.ports import Upstream

# Readiness probes time out after a few seconds; a PACS slower than this counts as unavailable.
PACS_ECHO_TIMEOUT = 2.0
PACS_ECHO_INTERVAL = 10.0  # C-ECHO results are reused this long (probes come every few seconds)


async def healthz(request: Request) -> Response:
    """The process is alive and serving HTTP."""
    return Response(b'{"status":"ok"}', media_type="application/json")


async def readyz(request: Request) -> Response:
    """Ready when the object store and the index both answer. Each PACS is reported: by the
    outcome of the last operation with it, or, with ``ready_requires_pacs``, by a C-ECHO that
    then decides readiness too."""
    gw = gateway_of(request)
    checks: dict[str, str] = {}

    async def check(name: str, probe: Callable[[], Awaitable[None]]) -> None:
        try:
            await probe()
            checks[name] = "ok"
        except GatewayError as exc:
            checks[name] = f"unavailable: {exc.reason}"

    # At once: a hung store (its probe bounded by a short timeout) must not delay the index's.
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(check, "store", gw.store.ping)
        tasks.start_soon(check, "index", gw.index.ping)
    checks = {name: checks[name] for name in ("store", "index")}
    ready = all(v == "ok" for v in checks.values())
    if gw.settings.ready_requires_pacs:
        pacs = await _echo_cached(request, gw.upstreams)
        ready = ready and all(v.startswith("ok") for v in pacs.values())
    else:
        pacs = {name: _last_seen(name) for name in sorted(gw.upstreams)}
    info: dict[str, object] = {"status": "ready" if ready else "unready", "checks": checks}
    if pacs:
        info["pacs"] = pacs
    if gw.forward is not None:
        # Informational: a PACS that is down delays forwarding but must not take the gateway out
        # of service, so the forward queue never makes the gateway unready.
        try:
            info["forward"] = {"to": gw.forward.target, **await gw.forward.status()}
        except GatewayError as exc:
            info["forward"] = {"to": gw.forward.target, "error": exc.reason}
    webhooks = getattr(request.app.state, "webhooks", None)
    if webhooks is not None:
        # Informational too: a receiver that is down delays its deliveries, nothing else.
        try:
            info["webhooks"] = await webhooks.status()
        except GatewayError as exc:
            info["webhooks"] = {"error": exc.reason}
    body = orjson.dumps(info)
    return Response(body, status_code=200 if ready else 503, media_type="application/json")


def _last_seen(node: str) -> str:
    """Without ready_requires_pacs, probes never talk to a PACS (no association every few
    seconds per pod in its log): they report the outcome of the gateway's last operation."""
    last = observability.last_dimse(node)
    if last is None:
        return "not contacted yet"
    operation, outcome, age = last
    return f"last {operation}: {outcome}, {age:.0f} s ago"


async def _echo_cached(request: Request, upstreams: Mapping[str, Upstream]) -> dict[str, str]:
    """With ready_requires_pacs: C-ECHO results, at most PACS_ECHO_INTERVAL seconds old."""
    state = request.app.state
    cached: tuple[float, dict[str, str]] | None = getattr(state, "pacs_echo", None)
    if cached is None or time.monotonic() - cached[0] > PACS_ECHO_INTERVAL:
        cached = (time.monotonic(), await _echo_all(upstreams))
        state.pacs_echo = cached
    return cached[1]


async def _echo_all(upstreams: Mapping[str, Upstream]) -> dict[str, str]:
    """C-ECHO every PACS node at once, each bounded by PACS_ECHO_TIMEOUT: "ok (N ms)" or why not."""
    results: dict[str, str] = {}

    async def echo(name: str, upstream: Upstream) -> None:
        try:
            with anyio.fail_after(PACS_ECHO_TIMEOUT):
                seconds = await upstream.echo()
            results[name] = f"ok ({seconds * 1000:.0f} ms)"
        except TimeoutError:
            results[name] = f"unavailable: no C-ECHO answer within {PACS_ECHO_TIMEOUT:.0f} s"
        except GatewayError as exc:
            results[name] = f"unavailable: {exc.reason}"

    async with anyio.create_task_group() as tasks:
        for name, upstream in upstreams.items():
            tasks.start_soon(echo, name, upstream)
    return dict(sorted(results.items()))
