"""Request ids, JSON logs and Prometheus metrics (gateway/observability.py, gateway/http/middleware/metrics.py)."""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.routing import Route

from gateway import observability
from gateway.adapters.filestore import FileBlobStore
from gateway.adapters.sqlite_index import SqliteIndex
from gateway.app import create_app
from gateway.errors import UpstreamError
from gateway.http import health
from gateway.services.bundle import build_gateway
from gateway.settings import load_settings
from tests import factory
from tests.fixtures_gateway import RunningGateway
from tests.http_helpers import stow_body, uids_of

Client = httpx.AsyncClient


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[Client]:
    """The app in-process (its lifespan run by hand: Starlette's TestClient wants httpx2)."""
    settings = load_settings(environ={}, overrides={"data_dir": tmp_path / "data"})
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), Client(transport=transport, base_url="http://localhost") as http:
        yield http


async def sample(client: Client, name: str, **labels: str) -> float:
    """The value of one sample of ``/metrics`` (0 when absent)."""
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    for family in text_string_to_metric_families(response.text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return 0.0


@pytest.mark.anyio
async def test_request_ids_are_made_or_kept(client: Client) -> None:
    made = (await client.get("/healthz")).headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", made)
    assert (await client.get("/healthz")).headers["x-request-id"] != made
    assert (await client.get("/healthz", headers={"X-Request-ID": "abc-123.x"})).headers["x-request-id"] == "abc-123.x"
    # Not sane for a header or a log line: replaced, never echoed.
    for bad in ("a b", "x" * 200, "a\u00e9"):
        kept = await client.get("/healthz", headers={"X-Request-ID": bad.encode()})
        assert re.fullmatch(r"[0-9a-f]{32}", kept.headers["x-request-id"])
    assert len((await client.get("/healthz")).headers.get_list("x-request-id")) == 1


@pytest.mark.anyio
async def test_http_metrics_by_route_template_and_status(client: Client) -> None:
    route = "/dicomweb/studies/{study}/series"
    before = await sample(client, "dicomweb_gateway_http_requests_total", method="GET", route=route, status="200")
    for n in range(3):
        assert (await client.get(f"/dicomweb/studies/1.2.3.{n}/series")).status_code == 200
    after = await sample(client, "dicomweb_gateway_http_requests_total", method="GET", route=route, status="200")
    assert after - before == 3
    count = await sample(client, "dicomweb_gateway_http_request_duration_seconds_count", route=route, status="200")
    assert count >= 3
    assert (await client.get("/dicomweb/studies/not-a-uid/series")).status_code == 400
    assert await sample(client, "dicomweb_gateway_http_requests_total", route=route, status="400") >= 1
    # Paths no route serves share one label: a scanner cannot blow up the label space.
    for n in range(3):
        assert (await client.get(f"/nothing/{n}")).status_code == 404
    assert await sample(client, "dicomweb_gateway_http_requests_total", route="<unmatched>", status="404") >= 3
    assert await sample(client, "dicomweb_gateway_http_requests_in_flight") == 1  # the /metrics request itself
    assert await sample(client, "process_resident_memory_bytes") > 0


@pytest.mark.anyio
async def test_stow_and_byte_counters(client: Client) -> None:
    data = factory.ct_instance(seed=700)
    body, content_type = stow_body([data, b"not dicom"])
    stored = await sample(client, "dicomweb_gateway_stow_instances_total", outcome="stored")
    failed = await sample(client, "dicomweb_gateway_stow_instances_total", outcome="failed")
    bytes_in = await sample(client, "dicomweb_gateway_http_body_bytes_total", direction="in")
    response = await client.post("/dicomweb/studies", content=body, headers={"Content-Type": content_type})
    assert response.status_code == 202, response.text
    assert await sample(client, "dicomweb_gateway_stow_instances_total", outcome="stored") == stored + 1
    assert await sample(client, "dicomweb_gateway_stow_instances_total", outcome="failed") == failed + 1
    assert await sample(client, "dicomweb_gateway_http_body_bytes_total", direction="in") >= bytes_in + len(body)
    bytes_out = await sample(client, "dicomweb_gateway_http_body_bytes_total", direction="out")
    study, series, sop = uids_of(data)
    got = await client.get(f"/dicomweb/studies/{study}/series/{series}/instances/{sop}")
    assert got.status_code == 200
    assert await sample(client, "dicomweb_gateway_http_body_bytes_total", direction="out") >= bytes_out + len(data)


@pytest.mark.anyio
async def test_memory_gauges_of_the_caches_and_the_index(client: Client) -> None:
    """What bounded caches and SQLite hold is reported, so that a soak can tell them from a leak."""
    data = factory.rle_instance(seed=701)  # frames of a compressed instance are decoded, and cached
    body, content_type = stow_body([data])
    assert (
        await client.post("/dicomweb/studies", content=body, headers={"Content-Type": content_type})
    ).status_code == 200
    assert await sample(client, "dicomweb_gateway_cache_bytes", cache="frames") == 0
    study, series, sop = uids_of(data)
    frame = await client.get(
        f"/dicomweb/studies/{study}/series/{series}/instances/{sop}/frames/1",
        headers={"Accept": 'multipart/related; type="application/octet-stream"'},
    )
    assert frame.status_code == 200
    held = await sample(client, "dicomweb_gateway_cache_bytes", cache="frames")
    assert held == 64 * 64 * 2  # the decoded frame
    assert 0 < await sample(client, "dicomweb_gateway_index_memory_bytes") < 64 << 20


@pytest.mark.anyio
async def test_dimse_and_cache_hooks(client: Client) -> None:
    labels = {"node": "orthanc", "operation": "C-FIND"}
    ok = await sample(client, "dicomweb_gateway_dimse_operations_total", outcome="success", **labels)
    with observability.dimse_operation("orthanc", "C-FIND"):
        pass
    with observability.dimse_operation("orthanc", "C-FIND") as op:
        op.outcome = "warning"
    with pytest.raises(TimeoutError), observability.dimse_operation("orthanc", "C-FIND"):
        raise TimeoutError
    observability.observe_dimse("orthanc", "C-FIND", "timeout", 30.0)
    assert await sample(client, "dicomweb_gateway_dimse_operations_total", outcome="success", **labels) == ok + 1
    assert await sample(client, "dicomweb_gateway_dimse_operations_total", outcome="warning", **labels) >= 1
    assert await sample(client, "dicomweb_gateway_dimse_operations_total", outcome="failure", **labels) >= 1
    assert await sample(client, "dicomweb_gateway_dimse_duration_seconds_count", outcome="timeout", **labels) >= 1
    hits = await sample(client, "dicomweb_gateway_cache_lookups_total", cache="thumbnail", result="hit")
    observability.cache_lookup("thumbnail", hit=True)
    observability.cache_lookup("thumbnail", hit=False)
    assert await sample(client, "dicomweb_gateway_cache_lookups_total", cache="thumbnail", result="hit") == hits + 1
    assert await sample(client, "dicomweb_gateway_cache_lookups_total", cache="thumbnail", result="miss") >= 1


def test_json_log_lines_carry_the_request_id() -> None:
    formatter = observability.JsonFormatter()
    record = logging.LogRecord("gateway.test", logging.WARNING, __file__, 1, "stored %d", (3,), None)
    assert "request_id" not in json.loads(formatter.format(record))
    with observability.request_context("req-1"):
        assert observability.current_request_id() == "req-1"
        line = json.loads(formatter.format(record))
    assert observability.current_request_id() is None
    assert line["request_id"] == "req-1"
    assert (line["level"], line["logger"], line["message"]) == ("warning", "gateway.test", "stored 3")
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        failed = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    assert "ValueError: boom" in json.loads(formatter.format(failed))["exception"]


def test_the_server_logs_json_lines_with_request_ids(file_gateway: RunningGateway) -> None:
    response = httpx.get(f"{file_gateway.url}/studies", headers={"X-Request-ID": "trace-me-42"})
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "trace-me-42"
    # The access line is written when the response is done, which may be just after the client
    # has it: give the server a moment (generous: the machine is shared).
    deadline = time.monotonic() + 20
    while True:
        lines = file_gateway.log().splitlines()
        entries = [json.loads(line) for line in lines if line.startswith("{") and line.endswith("}")]
        access = [e for e in entries if e.get("request_id") == "trace-me-42" and e["logger"] == "gateway.access"]
        if access or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert len(access) == 1, entries
    assert (access[0]["route"], access[0]["status"], access[0]["method"]) == ("/dicomweb/studies", 200, "GET")
    assert any(e["logger"].startswith("uvicorn") for e in entries)  # uvicorn's own lines are JSON too


class _FakePacs:
    """Stands in for a DIMSE upstream in readiness tests: answers, refuses or hangs."""

    def __init__(self, behaviour: str) -> None:
        self.behaviour = behaviour

    async def echo(self) -> float:
        if self.behaviour == "refuses":
            raise UpstreamError("association rejected")
        if self.behaviour == "hangs":
            await anyio.sleep(60)
        return 0.012


@pytest.mark.anyio
@pytest.mark.parametrize("required", [False, True])
async def test_readiness_reports_each_pacs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, required: bool) -> None:
    monkeypatch.setattr(health, "PACS_ECHO_TIMEOUT", 0.2)
    settings = load_settings(environ={}, overrides={"data_dir": tmp_path, "ready_requires_pacs": required})
    (tmp_path / "objects").mkdir()
    store, index = FileBlobStore(tmp_path / "objects"), SqliteIndex(tmp_path / "index.sqlite3")
    pacs: dict[str, Any] = {"up": _FakePacs("answers"), "down": _FakePacs("refuses"), "slow": _FakePacs("hangs")}
    app = Starlette(routes=[Route("/readyz", health.readyz)])
    app.state.gateway = build_gateway(settings, store, index, upstreams=pacs)
    observability.observe_dimse("up", "C-FIND", "success", 0.01)
    observability.observe_dimse("down", "C-GET", "refused", 0.01)
    try:
        async with Client(transport=httpx.ASGITransport(app=app), base_url="http://localhost") as http:
            response = await http.get("/readyz")
            again = await http.get("/readyz")
    finally:
        await index.aclose()
        await store.aclose()
    body = response.json()
    assert body["checks"] == {"store": "ok", "index": "ok"}
    assert again.json() == body  # with C-ECHO: the result is reused for a few seconds
    if not required:
        # By default probes never talk to a PACS: they report what the gateway last saw.
        assert body["pacs"]["up"].startswith("last C-FIND: success, ")
        assert body["pacs"]["down"].startswith("last C-GET: refused, ")
        assert body["pacs"]["slow"] == "not contacted yet"
        assert (response.status_code, body["status"]) == (200, "ready")
        return
    assert body["pacs"]["up"] == "ok (12 ms)"
    assert body["pacs"]["down"] == "unavailable: association rejected"
    assert body["pacs"]["slow"].startswith("unavailable: no C-ECHO answer")
    assert (response.status_code, body["status"]) == (503, "unready")
