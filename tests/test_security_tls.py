"""HTTPS served by the gateway itself, checked with real client handshakes: TLS 1.2 and 1.3
work, older protocols, CBC suites and suites without forward secrecy are refused. And the
URLs the gateway emits behind a TLS-terminating proxy (X-Forwarded-*, trusted proxies only)."""

from __future__ import annotations

import socket
import ssl
import warnings
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trustme

from tests import factory
from tests.fixtures_gateway import stop_gateway
from tests.fixtures_security import SecuredGateway, start_secured_gateway
from tests.http_helpers import stow_body

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def tls_gateway(tmp_path_factory: pytest.TempPathFactory, ca: trustme.CA) -> Iterator[SecuredGateway]:
    tmp = tmp_path_factory.mktemp("tls")
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_file, key_file = tmp / "cert.pem", tmp / "key.pem"
    cert.private_key_pem.write_to_path(str(key_file))
    cert_file.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    client = ssl.create_default_context()
    ca.configure_trust(client)
    sg = start_secured_gateway(
        tmp, "", scheme="https", verify=client, extra_args=("--tls-cert", str(cert_file), "--tls-key", str(key_file))
    )
    try:
        yield sg
    finally:
        stop_gateway(sg.gw)


def handshake(sg: SecuredGateway, ca: trustme.CA, configure: object) -> ssl.SSLSocket:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ca.configure_trust(ctx)
    configure(ctx)  # type: ignore[operator]
    port = int(sg.root.rsplit(":", 1)[1])
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    return ctx.wrap_socket(raw, server_hostname="127.0.0.1")


def only(minimum: ssl.TLSVersion, maximum: ssl.TLSVersion, ciphers: str | None = None) -> object:
    def configure(ctx: ssl.SSLContext) -> None:
        if ciphers:
            ctx.set_ciphers(ciphers)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # TLS 1.0/1.1: offered on purpose
            ctx.minimum_version, ctx.maximum_version = minimum, maximum

    return configure


def test_tls12_negotiates_forward_secret_aead(tls_gateway: SecuredGateway, ca: trustme.CA) -> None:
    with handshake(tls_gateway, ca, only(ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_2)) as tls:
        assert tls.version() == "TLSv1.2"
        name, _, _ = tls.cipher()  # type: ignore[misc]
        assert name.startswith("ECDHE-")
        assert "GCM" in name or "CHACHA20" in name


def test_tls13_works(tls_gateway: SecuredGateway, ca: trustme.CA) -> None:
    with handshake(tls_gateway, ca, only(ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_3)) as tls:
        assert tls.version() == "TLSv1.3"
        assert tls.cipher()[0] in {"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"}


@pytest.mark.parametrize(
    ("what", "configure"),
    [
        ("TLS 1.0", only(ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1, "ALL:@SECLEVEL=0")),
        ("TLS 1.1", only(ssl.TLSVersion.TLSv1_1, ssl.TLSVersion.TLSv1_1, "ALL:@SECLEVEL=0")),
        ("CBC suites", only(ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_2, "ECDHE+AES128+SHA:ECDHE+AES256+SHA")),
        ("CBC SHA-2 suites", only(ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_2, "ECDHE+SHA256:ECDHE+SHA384:!AESGCM")),
        ("RSA key exchange", only(ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_2, "kRSA")),
        ("finite-field DHE", only(ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_2, "kDHE")),
    ],
)
def test_weak_handshakes_are_refused(tls_gateway: SecuredGateway, ca: trustme.CA, what: str, configure: object) -> None:
    with pytest.raises((ssl.SSLError, ConnectionResetError)) as refused:
        handshake(tls_gateway, ca, configure).close()
    # Refused by the server (an alert), not unsendable by this client.
    assert "NO_PROTOCOLS_AVAILABLE" not in str(refused.value)
    assert "NO_CIPHER_MATCH" not in str(refused.value)


def test_https_urls(tls_gateway: SecuredGateway) -> None:
    body, content_type = stow_body([factory.ct_instance(seed=11, rows=8, cols=8)])
    with tls_gateway.client() as client:
        response = client.post(tls_gateway.url + "/studies", content=body, headers={"Content-Type": content_type})
    assert response.status_code == 200
    assert response.json()["00081190"]["Value"][0].startswith(tls_gateway.url)  # https://...
    assert response.headers["strict-transport-security"] == "max-age=31536000"
    with pytest.raises(httpx.HTTPError):  # plain HTTP on the TLS port gets nowhere
        httpx.get(tls_gateway.url.replace("https:", "http:") + "/studies", timeout=5)


def test_bad_certificate_is_one_line(tmp_path: Path, ca: trustme.CA) -> None:
    import subprocess
    import sys

    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_text("not a certificate")
    key_file.write_text("not a key")
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--data", str(tmp_path / "d"), "--tls-cert", str(cert_file),
         "--tls-key", str(key_file), "--port", "1"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "TLS" in result.stderr


# --- behind a TLS-terminating reverse proxy ----------------------------------------------------

FORWARDED = {
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Host": "imaging.example.org",
    "X-Forwarded-Prefix": "/pacs",
    "X-Forwarded-For": "203.0.113.7",
}


@pytest.mark.parametrize(("trusted", "expected"), [(True, "https://imaging.example.org/pacs/dicomweb"), (False, None)])
def test_forwarded_headers_only_from_trusted_proxies(tmp_path: Path, trusted: bool, expected: str | None) -> None:
    # Behind a proxy the public name is what the Host check sees (gateway.http.middleware.hosts).
    config = 'trusted_proxies = ["127.0.0.0/8"]\ntrusted_hosts = ["imaging.example.org"]\n' if trusted else ""
    sg = start_secured_gateway(tmp_path, config)
    try:
        body, content_type = stow_body([factory.ct_instance(seed=12, rows=8, cols=8)])
        response = httpx.post(
            sg.url + "/studies", content=body, headers={**FORWARDED, "Content-Type": content_type}, timeout=30
        )
        url = response.json()["00081190"]["Value"][0]
        assert url.startswith(expected or sg.url)
        rows = httpx.get(sg.url + "/instances", headers=FORWARDED).json()
        assert rows[0]["00081190"]["Value"][0].startswith(expected or sg.url)
    finally:
        stop_gateway(sg.gw)
