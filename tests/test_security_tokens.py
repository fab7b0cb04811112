"""Authentication end to end: OIDC JWTs against a JWKS on a local HTTP server, API keys made by
the real CLI, scopes (401 / 403 per RFC 6750), key rotation and revocation without restart."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.fixtures_gateway import stop_gateway
from tests.fixtures_security import (
    ISSUER,
    Issuer,
    JwksServer,
    SecuredGateway,
    apikey_command,
    b64json,
    b64url,
    bearer,
    create_api_key,
    hmac_token,
    oidc_config,
    start_secured_gateway,
)

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def keys_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("keys") / "apikeys.json"


@pytest.fixture(scope="module")
def api_keys(keys_file: Path) -> dict[str, str]:
    return {
        "reader": create_api_key(keys_file, "reader", "read"),
        "uploader": create_api_key(keys_file, "uploader", "write"),
        "revoked": create_api_key(keys_file, "to-revoke", "read"),
    }


@pytest.fixture(scope="module")
def secured(
    tmp_path_factory: pytest.TempPathFactory, jwks_server: JwksServer, keys_file: Path, api_keys: dict[str, str]
) -> Iterator[SecuredGateway]:
    sg = start_secured_gateway(tmp_path_factory.mktemp("gw"), oidc_config(jwks_server.url, keys_file=keys_file))
    try:
        yield sg
    finally:
        stop_gateway(sg.gw)


def studies(sg: SecuredGateway, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.get(sg.url + "/studies", headers=headers or {}, timeout=30)


# --- the good cases -----------------------------------------------------------------------


def test_valid_tokens_of_each_algorithm_are_accepted(secured: SecuredGateway, issuer: Issuer) -> None:
    for kid in ("rsa-1", "ec-1"):
        response = studies(secured, bearer(issuer.token(kid=kid)))
        assert response.status_code == 200, response.text


def test_leeway_tolerates_small_clock_skew(secured: SecuredGateway, issuer: Issuer) -> None:
    now = int(time.time())
    assert studies(secured, bearer(issuer.token(exp=now - 2, nbf=now + 2, iat=now + 2))).status_code == 200


def test_health_probes_need_no_credentials(secured: SecuredGateway) -> None:
    assert httpx.get(secured.root + "/healthz").status_code == 200
    assert httpx.get(secured.root + "/readyz").status_code == 200


# --- 401 without credentials: RFC 6750 3.1 -------------------------------------------------


def test_missing_credentials_get_a_bare_bearer_challenge(secured: SecuredGateway) -> None:
    response = studies(secured)
    assert response.status_code == 401
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith("Bearer ")
    assert "error=" not in challenge  # RFC 6750 3.1: no error code without credentials
    assert response.json() == {"status": 401, "reason": "authentication required"}


# --- the bad-token matrix ------------------------------------------------------------------


def _bad_tokens(issuer: Issuer, keys: dict[str, str]) -> dict[str, str]:
    now = int(time.time())
    good = issuer.token()
    head, payload, signature = good.split(".")
    rsa_pem = issuer.public_pem("rsa-1")
    claims = issuer.claims()
    flipped = signature[:-4] + ("AAAA" if not signature.endswith("AAAA") else "BBBB")
    return {
        "expired": issuer.token(exp=now - 120),
        "expired long ago": issuer.token(exp=now - 86400 * 365, iat=now - 86400 * 366, nbf=None),
        "not yet valid (nbf)": issuer.token(nbf=now + 120),
        "issued in the future (iat)": issuer.token(iat=now + 120),
        "wrong issuer": issuer.token(iss="https://evil.example.test/realms/imaging"),
        "issuer with a trailing slash": issuer.token(iss=ISSUER + "/"),
        "wrong audience": issuer.token(aud="another-api"),
        "audience list without ours": issuer.token(aud=["a", "b"]),
        "unknown kid": issuer.token(kid="no-such-key", signing_kid="rsa-1"),
        "no kid": _without_kid(issuer),
        "alg none, no signature": f"{b64json({'alg': 'none', 'typ': 'JWT'})}.{b64json(claims)}.",
        "alg none with a signature": f"{b64json({'alg': 'none', 'kid': 'rsa-1'})}.{b64json(claims)}.{signature}",
        "HS256 signed with the RSA public key": hmac_token(rsa_pem, {"alg": "HS256", "kid": "rsa-1"}, claims),
        "HS512 signed with the RSA public key": hmac_token(rsa_pem, {"alg": "HS512", "kid": "rsa-1"}, claims),
        "HS256 signed with the JWK modulus": hmac_token(
            issuer.public_jwk("rsa-1")["n"].encode(), {"alg": "HS256", "kid": "rsa-1"}, claims
        ),
        "bad signature": f"{head}.{payload}.{flipped}",
        "payload swapped under a valid signature": f"{head}.{b64json({**claims, 'sub': 'admin'})}.{signature}",
        "signed by another key with our kid": issuer.token(kid="rsa-1", signing_kid="attacker"),
        "EC signature under an RSA kid": issuer.token(kid="rsa-1", signing_kid="ec-1", alg="ES256"),
        "alg header changed to RS512": f"{b64json({'alg': 'RS512', 'kid': 'rsa-1'})}.{payload}.{signature}",
        "PS256 is not an allowed algorithm": issuer.token(alg="PS256"),
        "truncated": good[: len(good) // 2],
        "truncated signature": good[:-10],
        "two segments": f"{head}.{payload}",
        "four segments": f"{good}.{signature}",
        "JWE (five segments)": ".".join(
            [b64json({"alg": "RSA-OAEP-256", "enc": "A256GCM", "kid": "rsa-1"}), "a" * 20, "b" * 16, "c" * 30, "d" * 22]
        ),
        "JWE header in a JWS": f"{b64json({'alg': 'RS256', 'enc': 'A256GCM', 'kid': 'rsa-1'})}.{payload}.{signature}",
        "missing exp": issuer.token(exp=None),
        "missing sub": issuer.token(sub=None),
        "missing iss": issuer.token(iss=None),
        "missing aud": issuer.token(aud=None),
        "exp not a number": issuer.token(exp="tomorrow"),
        "jku to an attacker's keys": issuer.token(
            kid="attacker", headers={"jku": "http://127.0.0.1:9/jwks.json"}, signing_kid="attacker"
        ),
        "x5u to an attacker's certificate": issuer.token(
            kid="attacker", headers={"x5u": "http://127.0.0.1:9/cert.pem"}, signing_kid="attacker"
        ),
        "embedded jwk of an attacker": issuer.token(
            kid="attacker", headers={"jwk": issuer.public_jwk("attacker")}, signing_kid="attacker"
        ),
        "crit header": issuer.token(headers={"crit": ["exp"]}),
        "typ of another kind": issuer.token(headers={"typ": "secevent+jwt"}),
        "header not base64": "!!!." + payload + "." + signature,
        "header not JSON": f"{b64url(b'not json')}.{payload}.{signature}",
        "oversized": issuer.token(padding="x" * 9000),
        "restriction claim malformed": issuer.token(dicomweb_access=["P-1"]),
        "restriction claim unknown member": issuer.token(dicomweb_access={"AccessionNumber": ["A1"]}),
        "API key unknown": "dwgk_000000000000_" + "A" * 43,
        "API key with a wrong secret": keys["reader"][:-5] + "AAAAA",
        "API key revoked": keys["revoked"],
        "API key truncated": keys["reader"][:-1],
    }


def _without_kid(issuer: Issuer) -> str:
    import jwt

    return jwt.encode(issuer.claims(), issuer.private["rsa-1"], algorithm="RS256")


def test_bad_token_matrix_is_rejected_with_401(
    secured: SecuredGateway, issuer: Issuer, api_keys: dict[str, str], keys_file: Path
) -> None:
    result = apikey_command("revoke", "to-revoke", "--keys-file", str(keys_file))
    assert result.returncode == 0, result.stderr
    time.sleep(1.1)  # the key file is re-checked at most once a second
    bad = _bad_tokens(issuer, api_keys)
    assert len(bad) >= 24
    accepted = {}
    for name, token in bad.items():
        response = studies(secured, bearer(token))
        challenge = response.headers.get("www-authenticate", "")
        if response.status_code != 401 or 'error="invalid_token"' not in challenge:
            accepted[name] = (response.status_code, challenge)
        assert "Traceback" not in response.text
    assert accepted == {}
    # Other ways of presenting credentials are not accepted either.
    for headers in (
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "Bearer"},
        {"Authorization": "Token abc.def.ghi"},
    ):
        response = studies(secured, headers)
        assert response.status_code == 401
        assert 'error="invalid_request"' in response.headers["www-authenticate"]
    assert studies(secured, {"Authorization": f"Bearer {issuer.token()}"}).status_code == 200


# --- scopes: 403 insufficient_scope --------------------------------------------------------


@pytest.mark.parametrize(
    ("scope", "method", "expected"),
    [
        ("read", "GET", 200),
        ("read", "POST", 403),
        ("write", "GET", 403),
        ("write", "POST", 400),  # authorised; the (empty) body is then refused
        ("openid", "GET", 403),
        ("dicomweb.read", "GET", 403),  # no prefix is configured
        ("read write admin", "DELETE", 405),
        ("read write", "DELETE", 403),
    ],
)
def test_scopes(secured: SecuredGateway, issuer: Issuer, scope: str, method: str, expected: int) -> None:
    headers = {
        **bearer(issuer.token(scope=scope)),
        "Content-Type": 'multipart/related; type="application/dicom"; boundary=x',
    }
    response = httpx.request(method, secured.url + "/studies", headers=headers, content=b"", timeout=30)
    assert response.status_code == expected, response.text
    if expected == 403:
        challenge = response.headers["www-authenticate"]
        assert 'error="insufficient_scope"' in challenge
        assert 'scope="' in challenge


def test_scopes_as_a_list_claim(secured: SecuredGateway, issuer: Issuer) -> None:
    assert studies(secured, bearer(issuer.token(scope=["read"]))).status_code == 200


def test_api_keys_carry_their_scopes(secured: SecuredGateway, api_keys: dict[str, str]) -> None:
    assert studies(secured, bearer(api_keys["reader"])).status_code == 200
    assert studies(secured, bearer(api_keys["uploader"])).status_code == 403
    response = httpx.post(
        secured.url + "/studies",
        headers={**bearer(api_keys["reader"]), "Content-Type": "multipart/related; boundary=x"},
        content=b"",
    )
    assert response.status_code == 403


def test_api_key_cli_lists_without_secrets(secured: SecuredGateway, keys_file: Path, api_keys: dict[str, str]) -> None:
    result = apikey_command("list", "--keys-file", str(keys_file))
    assert result.returncode == 0, result.stderr
    assert "reader" in result.stdout
    for key in api_keys.values():
        assert key not in result.stdout
        # dwgk_<id>_<secret>: the secret itself may contain "_" (URL-safe base64).
        secret = key.split("_", 2)[2]
        assert secret
        assert secret not in keys_file.read_text()
    assert oct(keys_file.stat().st_mode & 0o777) == "0o600"


def test_api_key_revocation_without_restart(secured: SecuredGateway, keys_file: Path) -> None:
    key = create_api_key(keys_file, "short-lived", "read")
    time.sleep(1.1)
    assert studies(secured, bearer(key)).status_code == 200
    assert apikey_command("revoke", "short-lived", "--keys-file", str(keys_file)).returncode == 0
    time.sleep(1.1)
    assert studies(secured, bearer(key)).status_code == 401


# --- key rotation ----------------------------------------------------------------------------


@pytest.fixture
def rotating(tmp_path: Path) -> Iterator[tuple[Issuer, JwksServer, SecuredGateway]]:
    issuer = Issuer()
    issuer.add_key("2024")
    server = JwksServer(issuer)
    sg = start_secured_gateway(tmp_path, oidc_config(server.url))
    try:
        yield issuer, server, sg
    finally:
        stop_gateway(sg.gw)
        server.close()


def test_key_rotation_without_restart(rotating: tuple[Issuer, JwksServer, SecuredGateway]) -> None:
    issuer, _server, sg = rotating
    old = issuer.token(kid="2024")
    assert studies(sg, bearer(old)).status_code == 200
    # The provider publishes a new key and signs with it; the gateway has never seen its kid.
    issuer.add_key("2025")
    time.sleep(0.6)  # past jwks_min_refresh
    assert studies(sg, bearer(issuer.token(kid="2025"))).status_code == 200
    # The old key is retired; once the JWKS is refetched, tokens under it stop working.
    issuer.published.discard("2024")
    time.sleep(0.6)
    assert studies(sg, bearer(issuer.token(kid="unknown-kid", signing_kid="2025"))).status_code == 401
    assert studies(sg, bearer(old)).status_code == 401


def test_unknown_kids_do_not_flood_the_provider(rotating: tuple[Issuer, JwksServer, SecuredGateway]) -> None:
    issuer, server, sg = rotating
    assert studies(sg, bearer(issuer.token(kid="2024"))).status_code == 200
    before = server.hits
    started = time.monotonic()
    for i in range(40):
        assert studies(sg, bearer(issuer.token(kid=f"garbage-{i}", signing_kid="2024"))).status_code == 401
    elapsed = time.monotonic() - started
    # At most one refetch per jwks_min_refresh (0.5 s) however many garbage kids arrive.
    assert server.hits - before <= elapsed / 0.5 + 1
