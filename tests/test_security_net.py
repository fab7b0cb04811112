"""Network-facing limits and policies over real HTTP: request head size and header count (431),
open connections, the minimum body rate (408), response headers (nosniff, no-store, HSTS),
trusted Host headers, the metrics scope, JWT subjects in the audit, and NumericDate claims."""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import factory
from tests.fixtures_gateway import stop_gateway
from tests.fixtures_security import (
    Issuer,
    JwksServer,
    SecuredGateway,
    bearer,
    create_api_key,
    oidc_config,
    raw_request,
    start_secured_gateway,
)
from tests.http_helpers import stow_body, uids_of

pytestmark = pytest.mark.timeout(300)

NET_LIMITS = """
[limits]
max_header_fields = 50
body_timeout = 1.0
min_body_rate = 1000
"""


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    keys_file = tmp_path_factory.mktemp("netkeys") / "apikeys.json"
    return keys_file, {
        "rw": create_api_key(keys_file, "rw", "read", "write"),
        "scraper": create_api_key(keys_file, "scraper", "metrics"),
        "restricted": create_api_key(keys_file, "restricted", "read", "metrics", restriction={"PatientID": ["P"]}),
    }


@pytest.fixture(scope="module")
def net(
    tmp_path_factory: pytest.TempPathFactory, jwks_server: JwksServer, keys: tuple[Path, dict[str, str]]
) -> Iterator[SecuredGateway]:
    tmp = tmp_path_factory.mktemp("net")
    audit = tmp / "audit.jsonl"
    config = oidc_config(jwks_server.url, keys_file=keys[0]) + f'[audit]\ndestination = "{audit}"\n' + NET_LIMITS
    sg = start_secured_gateway(tmp, config)
    sg.extra["audit"] = audit
    try:
        yield sg
    finally:
        stop_gateway(sg.gw)


def port_of(sg: SecuredGateway) -> int:
    return int(sg.root.rsplit(":", 1)[1])


def status_of(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/1.1 "), answer[:200]
    return int(answer[9:12])


# --- request head --------------------------------------------------------------------------


def test_a_one_megabyte_head_gets_431_and_the_connection_closed(net: SecuredGateway) -> None:
    head = b"GET /dicomweb/studies HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * (1 << 20) + b"\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port_of(net)), timeout=30) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(head)  # the server may stop reading before the whole megabyte is sent
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
    assert status_of(answer) == 431
    assert b"connection: close" in answer.lower()
    assert b"exceeds 65536 bytes" in answer
    assert net.gw.process.poll() is None


def test_many_small_header_lines_get_431(net: SecuredGateway) -> None:
    lines = b"".join(b"X-%d: y\r\n" % i for i in range(60))  # 60 lines, well under 64 KiB
    answer = raw_request(port_of(net), b"GET /dicomweb/studies HTTP/1.1\r\nHost: 127.0.0.1\r\n" + lines + b"\r\n")
    assert status_of(answer) == 431
    assert b"more than 50 header fields" in answer


def test_heads_under_the_caps_are_served(net: SecuredGateway, keys: tuple[Path, dict[str, str]]) -> None:
    headers = {**bearer(keys[1]["rw"]), **{f"X-Filler-{i}": "v" * 1000 for i in range(40)}}
    with httpx.Client(timeout=30) as client:
        for _ in range(2):  # a keep-alive connection: the count starts again for each head
            assert client.get(net.url + "/studies", headers=headers).status_code == 200


@pytest.fixture(scope="module")
def capped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredGateway]:
    sg = start_secured_gateway(
        tmp_path_factory.mktemp("capped"), "[limits]\nmax_connections = 3\nheader_timeout = 60\n"
    )
    try:
        yield sg
    finally:
        stop_gateway(sg.gw)


def test_connections_past_the_cap_are_refused(capped: SecuredGateway) -> None:
    port = port_of(capped)
    held = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(3)]
    try:
        for sock in held:  # each is open and served (the server answers on it)
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        with socket.create_connection(("127.0.0.1", port), timeout=10) as extra:
            answer = b""
            try:
                while chunk := extra.recv(65536):
                    answer += chunk
            except ConnectionResetError:
                pass
        assert answer == b"" or status_of(answer) == 503  # refused without reading a request
    finally:
        for sock in held:
            sock.close()
    deadline = time.monotonic() + 10  # the closed connections are counted out as they go
    while time.monotonic() < deadline:
        try:
            if httpx.get(capped.root + "/healthz", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    pytest.fail("the gateway did not serve again after the held connections closed")


# --- request body rate ------------------------------------------------------------------------


def test_a_trickled_body_gets_408(net: SecuredGateway, keys: tuple[Path, dict[str, str]]) -> None:
    head = (
        b"POST /dicomweb/studies HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Authorization: Bearer " + keys[1]["rw"].encode() + b"\r\n"
        b'Content-Type: multipart/related; type="application/dicom"; boundary=b\r\n'
        b"Content-Length: 100000\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", port_of(net)), timeout=30) as sock:
        sock.sendall(head)
        answer = b""
        # One byte every 0.3 s: each gap is well inside body_timeout (1 s), the rate is not.
        for _ in range(200):
            try:
                sock.sendall(b"-")
            except (BrokenPipeError, ConnectionResetError):
                break
            sock.settimeout(0.3)
            try:
                answer = sock.recv(65536)
            except TimeoutError:
                continue
            break
        # The head and the body of the answer may come in separate segments: read to the close.
        sock.settimeout(10)
        with contextlib.suppress(ConnectionResetError, TimeoutError):
            while chunk := sock.recv(65536):
                answer += chunk
    assert status_of(answer) == 408
    assert b"slower than 1000 bytes per second" in answer


def test_a_steady_upload_is_not_cut(net: SecuredGateway, keys: tuple[Path, dict[str, str]]) -> None:
    body, content_type = stow_body([factory.ct_instance(seed=4711, rows=64, cols=64)])
    headers = {**bearer(keys[1]["rw"]), "Content-Type": content_type}
    assert httpx.post(net.url + "/studies", content=body, headers=headers, timeout=30).status_code == 200


# --- response headers ----------------------------------------------------------------------


def test_every_kind_of_response_carries_nosniff_and_no_store(
    net: SecuredGateway, keys: tuple[Path, dict[str, str]]
) -> None:
    auth = bearer(keys[1]["rw"])
    data = factory.ct_instance(seed=4712, rows=16, cols=16)
    body, content_type = stow_body([data])
    stored = httpx.post(net.url + "/studies", content=body, headers={**auth, "Content-Type": content_type})
    assert stored.status_code == 200
    s, se, i = uids_of(data)
    inst = f"/studies/{s}/series/{se}/instances/{i}"
    dicom, octets = "multipart/related; type=application/dicom", "multipart/related; type=application/octet-stream"
    answers = {
        "stow": stored,
        "qido": httpx.get(net.url + "/studies", headers=auth),
        "metadata": httpx.get(net.url + f"/studies/{s}/metadata", headers=auth),
        "instance": httpx.get(net.url + inst, headers={**auth, "Accept": dicom}),
        "frames": httpx.get(net.url + inst + "/frames/1", headers={**auth, "Accept": octets}),
        "rendered": httpx.get(net.url + inst + "/rendered", headers={**auth, "Accept": "image/jpeg"}),
        "thumbnail": httpx.get(net.url + f"/studies/{s}/thumbnail", headers={**auth, "Accept": "image/jpeg"}),
        "wado-uri": httpx.get(
            net.url + f"/wado?requestType=WADO&studyUID={s}&seriesUID={se}&objectUID={i}", headers=auth
        ),
        "capabilities": httpx.request("OPTIONS", net.url + "/studies", headers=auth),
        "401": httpx.get(net.url + "/studies"),
        "404": httpx.get(net.url + f"/studies/{factory.new_uid('absent')}/metadata", headers=auth),
        "healthz": httpx.get(net.root + "/healthz"),
    }  # fmt: skip
    for kind, response in answers.items():
        assert response.status_code in (200, 204, 401, 404), (kind, response.status_code, response.text[:200])
        assert response.headers.get("x-content-type-options") == "nosniff", kind
        assert "no-store" in response.headers.get("cache-control", ""), (kind, response.headers.get("cache-control"))
        assert "strict-transport-security" not in response.headers, kind  # plain HTTP
    assert answers["rendered"].headers["cache-control"] == "private, no-store"


@pytest.fixture(scope="module")
def proxied(tmp_path_factory: pytest.TempPathFactory, keys: tuple[Path, dict[str, str]]) -> Iterator[SecuredGateway]:
    config = (
        f'trusted_proxies = ["127.0.0.1"]\ntrusted_hosts = ["imaging.example.org"]\n'
        f'[auth]\napi_keys_file = "{keys[0]}"\n'
    )
    sg = start_secured_gateway(tmp_path_factory.mktemp("proxied"), config)
    try:
        yield sg
    finally:
        stop_gateway(sg.gw)


def test_hsts_when_the_trusted_proxy_says_https(proxied: SecuredGateway, keys: tuple[Path, dict[str, str]]) -> None:
    auth = bearer(keys[1]["rw"])
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "imaging.example.org"}
    response = httpx.get(proxied.url + "/studies", headers={**auth, **forwarded})
    assert response.status_code == 200
    assert response.headers["strict-transport-security"] == "max-age=31536000"
    plain = httpx.get(proxied.url + "/studies", headers={**auth, "X-Forwarded-Host": "imaging.example.org"})
    assert "strict-transport-security" not in plain.headers


# --- trusted hosts ---------------------------------------------------------------------------


def test_a_foreign_host_gets_400(net: SecuredGateway, keys: tuple[Path, dict[str, str]]) -> None:
    auth = bearer(keys[1]["rw"])
    for host in ("evil.example", "evil.example:443", "127.0.0.1.evil.example", "[::2]"):
        response = httpx.get(net.url + "/studies", headers={**auth, "Host": host})
        assert response.status_code == 400, host
        assert "Host header" in response.json()["reason"]
    for host in (f"127.0.0.1:{port_of(net)}", "localhost", "LOCALHOST:1", "[::1]:8080"):
        assert httpx.get(net.url + "/studies", headers={**auth, "Host": host}).status_code == 200, host
    # The probes emit no URLs: orchestrators reach them by the pod's address.
    assert httpx.get(net.root + "/healthz", headers={"Host": "10.1.2.3:8080"}).status_code == 200


def test_a_redirect_never_points_at_a_foreign_host(net: SecuredGateway, keys: tuple[Path, dict[str, str]]) -> None:
    auth = bearer(keys[1]["rw"])
    foreign = httpx.get(net.url + "/studies/", headers={**auth, "Host": "evil.example"})
    assert foreign.status_code == 400
    assert "location" not in foreign.headers
    own = httpx.get(net.url + "/studies/", headers=auth)
    assert own.status_code == 307  # Starlette's trailing-slash redirect, to the trusted host
    assert own.headers["location"] == net.url + "/studies"


def test_behind_a_proxy_the_forwarded_host_must_be_trusted(
    proxied: SecuredGateway, keys: tuple[Path, dict[str, str]]
) -> None:
    auth = bearer(keys[1]["rw"])
    good = httpx.get(proxied.url + "/studies", headers={**auth, "X-Forwarded-Host": "imaging.example.org"})
    assert good.status_code == 200
    bad = httpx.get(proxied.url + "/studies", headers={**auth, "X-Forwarded-Host": "evil.example"})
    assert bad.status_code == 400
    assert httpx.get(proxied.url + "/studies", headers=auth).status_code == 400  # Host 127.0.0.1 not listed


# --- metrics scope ---------------------------------------------------------------------------


def test_metrics_need_the_metrics_scope_and_no_restriction(
    net: SecuredGateway, keys: tuple[Path, dict[str, str]], issuer: Issuer
) -> None:
    url = net.root + "/metrics"
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers=bearer(keys[1]["rw"])).status_code == 403
    refused = httpx.get(url, headers=bearer(keys[1]["restricted"]))
    assert refused.status_code == 403
    assert 'scope="metrics"' in refused.headers["www-authenticate"]
    assert httpx.get(url, headers=bearer(issuer.token(scope="read write admin"))).status_code == 403
    scraped = httpx.get(url, headers=bearer(keys[1]["scraper"]))
    assert scraped.status_code == 200
    assert "dicomweb_gateway_" in scraped.text
    assert httpx.get(url, headers=bearer(issuer.token(scope="metrics"))).status_code == 200
    # The metrics scope alone reads nothing else.
    assert httpx.get(net.url + "/studies", headers=bearer(keys[1]["scraper"])).status_code == 403


# --- JWT subjects and NumericDate claims -------------------------------------------------------


def test_a_jwt_cannot_pass_for_an_api_key_in_the_audit(net: SecuredGateway, issuer: Issuer) -> None:
    probe = factory.new_uid("sub-probe")
    token = issuer.token(sub="apikey:rw", scope="read")
    assert httpx.get(net.url + f"/studies/{probe}/metadata", headers=bearer(token)).status_code == 404
    audit: Path = net.extra["audit"]
    deadline = time.monotonic() + 10
    lines: list[dict[str, Any]] = []
    while not lines and time.monotonic() < deadline:
        lines = [json.loads(x) for x in audit.read_text().splitlines() if probe in x]
        time.sleep(0.05)
    assert [line["ActiveParticipant"][0]["UserID"] for line in lines] == ["jwt:apikey:rw"]


@pytest.mark.parametrize("claim", ["exp", "nbf", "iat"])
@pytest.mark.parametrize("value", ["string", True, [1]])
def test_numeric_date_claims_must_be_json_numbers(
    net: SecuredGateway, issuer: Issuer, claim: str, value: object
) -> None:
    now = int(time.time())
    good = {"exp": now + 600, "nbf": now - 10, "iat": now - 10}[claim]
    bad: object = str(good) if value == "string" else value
    response = httpx.get(net.url + "/studies", headers=bearer(issuer.token(**{claim: bad})))
    assert response.status_code == 401
    challenge = response.headers["www-authenticate"]
    assert f'error_description="token {claim} claim is not a NumericDate (a JSON number)"' in challenge
    assert httpx.get(net.url + "/studies", headers=bearer(issuer.token(**{claim: good}))).status_code == 200
