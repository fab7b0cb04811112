"""Fixtures for the security tests: a token issuer with a JWKS served over real HTTP, API keys
made with the real ``dicomweb-gateway apikey`` command, and gateways started with auth on.

A secured gateway is module-scoped (one process per test module) and configured by TOML, the
way an operator would configure it; see :func:`start_secured_gateway`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.fixtures_gateway import BASE_PATH, RunningGateway, stop_gateway
from tests.peers.ports import free_port

ISSUER = "https://idp.example.test/realms/imaging"
AUDIENCE = "dicomweb"
RESTRICTION_CLAIM = "dicomweb_access"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64json(value: Any) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode())


class Issuer:
    """An OpenID provider's signing side: keys by kid, a JWKS of their public halves, tokens."""

    def __init__(self) -> None:
        self.private: dict[str, Any] = {}
        self.published: set[str] = set()

    def add_key(self, kid: str, kind: str = "RSA", *, publish: bool = True) -> None:
        self.private[kid] = (
            rsa.generate_private_key(public_exponent=65537, key_size=2048)
            if kind == "RSA"
            else ec.generate_private_key(ec.SECP256R1())
        )
        if publish:
            self.published.add(kid)

    def jwks(self) -> dict[str, Any]:
        return {"keys": [self.public_jwk(kid) for kid in sorted(self.published)]}

    def public_jwk(self, kid: str) -> dict[str, Any]:
        key = self.private[kid]
        if isinstance(key, rsa.RSAPrivateKey):
            jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
        else:
            jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
        jwk.update(kid=kid, use="sig")
        return jwk

    def public_pem(self, kid: str) -> bytes:
        return (
            self.private[kid]
            .public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        )

    def claims(self, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": "user-1",
            "iat": now,
            "nbf": now,
            "exp": now + 600,
            "scope": "openid read write",
        }
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def token(
        self,
        *,
        kid: str = "rsa-1",
        alg: str | None = None,
        headers: dict[str, Any] | None = None,
        signing_kid: str | None = None,
        **claims: Any,
    ) -> str:
        key = self.private[signing_kid or kid]
        alg = alg or ("RS256" if isinstance(key, rsa.RSAPrivateKey) else "ES256")
        return jwt.encode(self.claims(**claims), key, algorithm=alg, headers={"kid": kid, **(headers or {})})


def hmac_token(secret: bytes, header: dict[str, Any], claims: dict[str, Any]) -> str:
    """A token "signed" with HMAC under an arbitrary secret (e.g. the RSA public key PEM)."""
    signing_input = f"{b64json(header)}.{b64json(claims)}"
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[header["alg"]]
    return signing_input + "." + b64url(hmac.new(secret, signing_input.encode(), digest).digest())


class JwksServer:
    """The provider's JWKS endpoint on a local port (``/jwks.json``); counts fetches."""

    def __init__(self, issuer: Issuer) -> None:
        self.issuer = issuer
        self.hits = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.hits += 1
                body = json.dumps(outer.issuer.jwks()).encode()
                self.send_response(200 if self.path == "/jwks.json" else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/jwks.json"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def create_api_key(
    keys_file: Path,
    name: str,
    *scopes: str,
    restriction: dict[str, Any] | None = None,
    deidentify: str | None = None,
) -> str:
    """A key made by the real ``dicomweb-gateway apikey create`` command (stdout: the key alone)."""
    argv = [sys.executable, "-m", "gateway", "apikey", "create", name, "--keys-file", str(keys_file)]
    for scope in scopes:
        argv += ["--scope", scope]
    if restriction is not None:
        argv += ["--restriction", json.dumps(restriction)]
    if deidentify is not None:
        argv += ["--deidentify", deidentify]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False, env=_clean_env())
    assert result.returncode == 0, result.stderr
    key = result.stdout.strip()
    assert key.startswith("dwgk_")
    assert "\n" not in key
    return key


def apikey_command(*argv: str) -> subprocess.CompletedProcess[str]:
    """``dicomweb-gateway apikey ARGV...``."""
    return subprocess.run(
        [sys.executable, "-m", "gateway", "apikey", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=_clean_env(),
    )


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("DICOMWEB_GATEWAY_", "AWS_"))}


def oidc_config(jwks_url: str, *, keys_file: Path | None = None, extra: str = "") -> str:
    keys = f'api_keys_file = "{keys_file}"\n' if keys_file else ""
    return (
        f"[auth]\n{keys}"
        "[auth.oidc]\n"
        f'issuer = "{ISSUER}"\naudience = "{AUDIENCE}"\njwks_url = "{jwks_url}"\n'
        'algorithms = ["RS256", "ES256"]\nleeway = 5\n'
        f'restriction_claim = "{RESTRICTION_CLAIM}"\njwks_min_refresh = 0.5\n' + extra
    )


@dataclass
class SecuredGateway:
    gw: RunningGateway
    scheme: str = "http"
    verify: ssl.SSLContext | bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.gw.url

    @property
    def root(self) -> str:
        return self.gw.root

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(timeout=60, verify=self.verify, **kwargs)


def start_secured_gateway(
    tmp: Path,
    config: str,
    *,
    scheme: str = "http",
    verify: ssl.SSLContext | bool = False,
    extra_args: tuple[str, ...] = (),
) -> SecuredGateway:
    """``dicomweb-gateway serve --config`` with ``config`` (TOML), on a free port; waits for /readyz."""
    tmp.mkdir(parents=True, exist_ok=True)
    port = free_port()
    data = tmp / "data"
    config_path = tmp / "gateway.toml"
    config_path.write_text(config)
    log_path = tmp / f"gateway-{port}.log"
    common = ["--data", str(data), "--config", str(config_path)]
    env = _clean_env()
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--port", str(port), "--base-path", BASE_PATH, *common,
             *extra_args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )  # fmt: skip
    root = f"{scheme}://127.0.0.1:{port}"
    gw = RunningGateway(root + BASE_PATH, root, data, "file", process, log_path, env, common)
    deadline = time.monotonic() + 30
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"gateway exited with {process.returncode}:\n{gw.log()}")
        try:
            if httpx.get(root + "/readyz", timeout=1, verify=verify).status_code == 200:
                return SecuredGateway(gw, scheme, verify)
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            stop_gateway(gw)
            raise RuntimeError(f"gateway did not become ready:\n{gw.log()}")
        time.sleep(0.1)


@pytest.fixture(scope="session")
def issuer() -> Issuer:
    issuer = Issuer()
    issuer.add_key("rsa-1")
    issuer.add_key("ec-1", "EC")
    issuer.add_key("attacker", publish=False)
    return issuer


@pytest.fixture(scope="session")
def jwks_server(issuer: Issuer) -> Iterator[JwksServer]:
    server = JwksServer(issuer)
    try:
        yield server
    finally:
        server.close()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def leftovers(sg: SecuredGateway, headers: dict[str, str] | None = None) -> list[str]:
    """Objects, spool files and index rows the gateway holds (empty after refused uploads)."""
    found = [
        str(p.relative_to(sg.gw.data_dir))
        for sub in ("objects", "spool")
        for p in (sg.gw.data_dir / sub).rglob("*")
        if p.is_file()
    ]
    response = httpx.get(sg.url + "/instances", headers=headers or {}, timeout=30, verify=sg.verify)
    assert response.status_code == 200, response.text
    found += [f"index row {row['00080018']['Value'][0]}" for row in response.json()]
    return found


def raw_request(port: int, head: bytes, body: bytes = b"", *, timeout: float = 10.0) -> bytes:
    """Send bytes on a fresh socket and return everything the server sends until it closes."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head + body)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)
