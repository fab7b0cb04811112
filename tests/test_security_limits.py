"""Limits on bad input, each configured small and each proved over real HTTP: request body
size, parts per STOW, part header size, deflate bombs, sequence nesting, decoded frame size,
header-read (slowloris), keep-alive and body-stall timeouts, and the per-key rate limit."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests import factory
from tests.fixtures_gateway import stop_gateway
from tests.fixtures_security import (
    SecuredGateway,
    bearer,
    create_api_key,
    leftovers,
    raw_request,
    start_secured_gateway,
)
from tests.http_helpers import failure_reasons, stow_body

pytestmark = pytest.mark.timeout(300)

MAX_BODY = 2_000_000
LIMITS = f"""
[limits]
max_body_bytes = {MAX_BODY}
max_parts = 5
max_part_header_bytes = 1024
max_sequence_depth = 32
max_decoded_frame_bytes = 4096
header_timeout = 1.0
keep_alive_timeout = 2
body_timeout = 1.5
"""


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredGateway]:
    sg = start_secured_gateway(tmp_path_factory.mktemp("limited"), LIMITS)
    try:
        yield sg
    finally:
        stop_gateway(sg.gw)


def port_of(sg: SecuredGateway) -> int:
    return int(sg.root.rsplit(":", 1)[1])


def post(sg: SecuredGateway, body: bytes, content_type: str) -> httpx.Response:
    return httpx.post(sg.url + "/studies", content=body, headers={"Content-Type": content_type}, timeout=60)


def assert_clean(sg: SecuredGateway) -> None:
    assert leftovers(sg) == []
    assert sg.gw.process.poll() is None


# --- request body ----------------------------------------------------------------------------


def test_declared_oversized_body_is_refused_before_reading(limited: SecuredGateway) -> None:
    head = (
        b"POST /dicomweb/studies HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b'Content-Type: multipart/related; type="application/dicom"; boundary=b\r\n'
        + f"Content-Length: {MAX_BODY + 1}\r\n\r\n".encode()
    )
    started = time.monotonic()
    answer = raw_request(port_of(limited), head)  # not one body byte sent
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert time.monotonic() - started < 5
    assert_clean(limited)


def test_chunked_oversized_body_is_cut_at_the_limit(limited: SecuredGateway) -> None:
    head, content_type = stow_body([factory.ct_instance(seed=1)])
    total = 25 * MAX_BODY  # far more than socket buffers can absorb
    sent = 0

    def chunks() -> Iterator[bytes]:
        nonlocal sent
        yield head[:-4]  # keep streaming past the limit, inside the part
        padding = b"x" * 65536
        while sent < total:
            sent += len(padding)
            yield padding

    try:
        response = httpx.post(
            limited.url + "/studies", content=chunks(), headers={"Content-Type": content_type}, timeout=60
        )
        assert response.status_code == 413
        assert response.headers["connection"] == "close"
    except (httpx.WriteError, httpx.RemoteProtocolError, httpx.ReadError):
        pass  # the server closed while we were still sending: that is the point
    assert sent < total
    assert_clean(limited)


# --- multipart -------------------------------------------------------------------------------


def test_too_many_parts(limited: SecuredGateway) -> None:
    instances = [factory.ct_instance(seed=100 + i, rows=8, cols=8) for i in range(6)]
    response = post(limited, *stow_body(instances))
    assert response.status_code == 413
    assert "more than 5 parts" in response.json()["reason"]
    assert_clean(limited)


def test_oversized_part_headers(limited: SecuredGateway) -> None:
    body = (
        b"--b\r\nContent-Type: application/dicom\r\nX-Padding: "
        + b"a" * 2000
        + b"\r\n\r\n"
        + factory.ct_instance(seed=3, rows=8, cols=8)
        + b"\r\n--b--\r\n"
    )
    response = post(limited, body, 'multipart/related; type="application/dicom"; boundary=b')
    assert response.status_code == 413
    assert_clean(limited)


# --- DICOM bombs -----------------------------------------------------------------------------


def test_deflate_bomb_is_refused_not_inflated(limited: SecuredGateway) -> None:
    bomb = factory.deflate_bomb(300 << 20)
    assert len(bomb) < 400_000  # ~300 KB on the wire
    started = time.monotonic()
    response = post(limited, *stow_body([bomb]))
    assert response.status_code == 400
    assert failure_reasons(response) == [0xA700]  # Out of Resources
    assert "inflates beyond" in response.headers["warning"]
    assert time.monotonic() - started < 30
    assert_clean(limited)


def test_deeply_nested_sequences_give_400(limited: SecuredGateway) -> None:
    for data in (
        factory.nested_sequences(300),
        factory.nested_sequences(300, defined_length=True),
        factory.nested_sequences(300, explicit=False),
    ):
        assert len(data) < 16_000  # small file, deep nesting
        response = post(limited, *stow_body([data]))
        assert response.status_code == 400, response.text
        assert "nested deeper" in response.headers["warning"]
    assert_clean(limited)


def test_decoded_frame_cap(limited: SecuredGateway) -> None:
    data = factory.rle_instance(seed=7, rows=64, cols=64)  # decodes to 8192 bytes > 4096
    assert post(limited, *stow_body([data])).status_code == 200
    study, series, sop = factory.read_uids(data) if hasattr(factory, "read_uids") else _uids(data)
    url = f"{limited.url}/studies/{study}/series/{series}/instances/{sop}/frames/1"
    decoded = httpx.get(url, headers={"Accept": "multipart/related; type=application/octet-stream"})
    assert decoded.status_code == 406
    assert "over the limit" in decoded.json()["reason"]
    as_stored = httpx.get(
        url, headers={"Accept": "multipart/related; type=application/octet-stream; transfer-syntax=*"}
    )
    assert as_stored.status_code == 200


def _uids(data: bytes) -> tuple[str, str, str]:
    from tests.http_helpers import uids_of

    return uids_of(data)


# --- slow clients ----------------------------------------------------------------------------


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    sock.settimeout(seconds)
    try:
        while sock.recv(1024):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        pass
    return True


def test_silent_connection_is_closed(limited: SecuredGateway) -> None:
    with socket.create_connection(("127.0.0.1", port_of(limited))) as sock:
        started = time.monotonic()
        assert _closed_within(sock, 5)
        assert 0.8 < time.monotonic() - started < 4


def test_slowloris_headers_are_cut(limited: SecuredGateway) -> None:
    with socket.create_connection(("127.0.0.1", port_of(limited))) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /dicomweb/studies HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        closed = False
        for i in range(40):  # one header line every 0.2 s would hold it for 8 s
            try:
                sock.sendall(f"X-Slow-{i}: y\r\n".encode())
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            time.sleep(0.2)
            if time.monotonic() - started > 1.5:
                closed = _closed_within(sock, 2)
                break
        assert closed
        assert time.monotonic() - started < 4


def test_idle_keep_alive_connection_is_closed(limited: SecuredGateway) -> None:
    with socket.create_connection(("127.0.0.1", port_of(limited))) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        sock.settimeout(5)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        assert _closed_within(sock, 6)
        assert 1.5 < time.monotonic() - started < 5


def test_keep_alive_requests_still_work(limited: SecuredGateway) -> None:
    with httpx.Client(timeout=10) as client:
        for _ in range(3):
            assert client.get(limited.url + "/studies").status_code == 200
            time.sleep(0.5)  # each request restarts neither deadline early


def test_stalled_body_gets_408(limited: SecuredGateway) -> None:
    head = (
        b"POST /dicomweb/studies HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b'Content-Type: multipart/related; type="application/dicom"; boundary=b\r\n'
        b"Content-Length: 100000\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", port_of(limited))) as sock:
        sock.sendall(head + b"--b\r\nContent-Type: application/dicom\r\n\r\nDICM")
        sock.settimeout(10)
        started = time.monotonic()
        answer = sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
        assert 1.0 < time.monotonic() - started < 6
    assert not [p for p in (limited.gw.data_dir / "spool").rglob("*") if p.is_file()]  # no spool file kept


# --- rate limit ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rate_limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SecuredGateway, str, str]]:
    tmp = tmp_path_factory.mktemp("rate")
    keys = tmp / "keys.json"
    first, second = create_api_key(keys, "first", "read"), create_api_key(keys, "second", "read")
    config = f'[auth]\napi_keys_file = "{keys}"\n[limits]\nrate_per_second = 1.0\nrate_burst = 3\n'
    sg = start_secured_gateway(tmp, config)
    try:
        yield sg, first, second
    finally:
        stop_gateway(sg.gw)


def test_rate_limit_per_key(rate_limited: tuple[SecuredGateway, str, str]) -> None:
    sg, first, second = rate_limited
    statuses = [httpx.get(sg.url + "/studies", headers=bearer(first)).status_code for _ in range(3)]
    assert statuses == [200, 200, 200]
    refused = httpx.get(sg.url + "/studies", headers=bearer(first))
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["retry-after"]) <= 2
    # Another key has its own bucket; the probes are not limited.
    assert httpx.get(sg.url + "/studies", headers=bearer(second)).status_code == 200
    assert httpx.get(sg.root + "/healthz").status_code == 200
    time.sleep(1.1)
    assert httpx.get(sg.url + "/studies", headers=bearer(first)).status_code == 200


def test_limits_are_settings(tmp_path: Path) -> None:
    from gateway.settings import load_settings

    s = load_settings(
        environ={"DICOMWEB_GATEWAY_LIMITS__HEADER_TIMEOUT": "2.5", "DICOMWEB_GATEWAY_LIMITS__RATE_BURST": "7"}
    )
    assert (s.limits.header_timeout, s.limits.rate_burst) == (2.5, 7)
