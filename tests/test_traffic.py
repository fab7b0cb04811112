"""Body bytes and status are counted once per request and reported alike by metrics and audit
(gateway/http/middleware/traffic.py, used by the metrics and the audit middlewares beside it)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from gateway.http.middleware.audit import AuditMiddleware
from gateway.http.middleware.metrics import ObservabilityMiddleware
from gateway.http.middleware.traffic import Traffic, counted
from gateway.observability import REGISTRY
from gateway.security.audit import AuditLog

REPLY = b"r" * 3000


async def echo_length(request: Request) -> Response:
    body = await request.body()
    return Response(REPLY, status_code=201 if body else 200)


def bytes_counted(direction: str) -> float:
    value = REGISTRY.get_sample_value("dicomweb_gateway_http_body_bytes_total", {"direction": direction})
    return value or 0.0


@pytest.mark.anyio
async def test_metrics_and_audit_report_the_same_single_count(tmp_path: Path) -> None:
    audit_file = tmp_path / "audit.jsonl"
    audit = AuditLog(str(audit_file))
    audit.open()
    app = Starlette(
        routes=[Route("/dicomweb/studies", echo_length, methods=["POST"])],
        middleware=[
            Middleware(ObservabilityMiddleware, access_log_enabled=False),
            Middleware(AuditMiddleware, audit=audit, base_path="/dicomweb"),
        ],
    )
    body = b"x" * 12345
    before_in, before_out = bytes_counted("in"), bytes_counted("out")
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            response = await client.post("/dicomweb/studies", content=body)
    finally:
        audit.close()
    assert response.status_code == 201
    (line,) = [json.loads(text) for text in audit_file.read_text().splitlines()]
    assert line["http"]["status"] == 201
    assert (line["http"]["bytes_received"], line["http"]["bytes_sent"]) == (len(body), len(REPLY))
    assert (bytes_counted("in") - before_in, bytes_counted("out") - before_out) == (len(body), len(REPLY))


@pytest.mark.anyio
async def test_a_second_middleware_reads_the_first_ones_counter() -> None:
    scope: Scope = {"type": "http", "method": "POST", "path": "/"}
    chunks: list[Message] = [
        {"type": "http.request", "body": b"abc", "more_body": True},
        {"type": "http.request", "body": b"de", "more_body": False},
    ]
    sent: list[Message] = []

    async def receive() -> Message:
        return chunks.pop(0)

    async def send(message: Message) -> None:
        sent.append(message)

    outer, outer_receive, outer_send = counted(scope, receive, send)
    inner, inner_receive, inner_send = counted(scope, outer_receive, outer_send)
    assert inner is outer
    assert (inner_receive, inner_send) == (outer_receive, outer_send)  # not wrapped a second time
    await _serve(inner_receive, inner_send)
    assert outer == Traffic(status=404, received=5, sent=7)
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body", "http.response.body"]


async def _serve(receive: Receive, send: Send) -> None:
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 404, "headers": []})
    await send({"type": "http.response.body", "body": b"miss", "more_body": True})
    await send({"type": "http.response.body", "body": b"ing"})
