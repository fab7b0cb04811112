"""Security settings (one clear line per mistake, the loopback rule) and the small pure parts:
rate limiter, restriction claims, API key file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.security.access import Restriction, RestrictionError, parse_restriction
from gateway.security.apikeys import ApiKeyError, ApiKeyStore, create_key, revoke_key
from gateway.security.ratelimit import RateLimiter, retry_after_header
from gateway.settings import SettingsError, load_settings

E = "DICOMWEB_GATEWAY_"


def test_embedded_default_has_auth_off_on_loopback() -> None:
    s = load_settings(environ={})
    assert not s.auth_required
    assert s.audit_destination == "off"
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        assert not load_settings(environ={E + "HOST": host}).auth_required


def test_configuring_a_method_turns_auth_on(tmp_path: Path) -> None:
    s = load_settings(environ={E + "HOST": "0.0.0.0", E + "AUTH__API_KEYS_FILE": str(tmp_path / "keys.json")})
    assert s.auth_required
    assert s.audit_destination == "stdout"


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({E + "HOST": "0.0.0.0"}, "refusing to serve on 0.0.0.0 without authentication"),
        ({E + "HOST": "192.0.2.1", E + "AUTH__MODE": "none"}, "refusing to serve on 192.0.2.1"),
        ({E + "AUTH__MODE": "required"}, "neither auth.oidc nor auth.api_keys_file"),
        ({E + "AUTH__MODE": "maybe"}, "auth.mode"),
        ({E + "AUTH__OIDC__ISSUER": "https://idp"}, "auth.oidc.audience is required"),
        (
            {
                E + "AUTH__OIDC__ISSUER": "i",
                E + "AUTH__OIDC__AUDIENCE": "a",
                E + "AUTH__OIDC__JWKS_URL": "http://idp/k",
            },
            "must be an https:// URL",
        ),
        ({E + "AUTH__OIDC__ALGORITHMS": "RS256,HS256"}, "'HS256' is not allowed"),
        ({E + "AUTH__OIDC__ALGORITHMS": "none"}, "'none' is not allowed"),
        ({E + "AUTH__OIDC__LEEWAY": "3600"}, "leeway"),
        ({E + "AUTH__API_KEYS_FILE": "/no/such/dir/keys.json"}, "its directory does not exist"),
        ({E + "CORS__ORIGINS": "*", E + "CORS__ALLOW_CREDENTIALS": "true"}, "cannot be combined"),
        ({E + "CORS__ORIGINS": "https://viewer.example.org/path"}, "must be an origin"),
        ({E + "CORS__CORP": "anyone"}, "cors.corp"),
        ({E + "TLS__CERT_FILE": "/etc/hostname"}, "must be given together"),
        ({E + "TLS__CERT_FILE": "/no/cert", E + "TLS__KEY_FILE": "/no/key"}, "does not exist"),
        ({E + "TLS__MIN_VERSION": "1.1"}, "tls.min_version"),
        ({E + "TRUSTED_PROXIES": "10.0.0.0/8,proxy.example.org"}, "trusted_proxies entry"),
        ({E + "AUDIT__DESTINATION": "/no/such/dir/audit.jsonl"}, "audit.destination"),
        ({E + "LIMITS__HEADER_TIMEOUT": "nan"}, "limits.header_timeout"),
        ({E + "LIMITS__RATE_PER_SECOND": "0"}, "limits.rate_per_second must be positive"),
    ],
)
def test_wrong_security_settings(environ: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        load_settings(environ=environ)


def test_lists_from_toml_and_env(tmp_path: Path) -> None:
    config = tmp_path / "gw.toml"
    config.write_text('[cors]\norigins = ["https://a.example.org", "http://localhost:3000"]\n')
    assert load_settings(config_file=config, environ={}).cors.origins == (
        "https://a.example.org",
        "http://localhost:3000",
    )
    env = {E + "TRUSTED_PROXIES": "10.0.0.1, 192.168.0.0/16"}
    assert load_settings(environ=env).trusted_proxies == ("10.0.0.1", "192.168.0.0/16")


def test_cli_refuses_public_bind_without_auth(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--host", "0.0.0.0", "--data", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("dicomweb-gateway: refusing to serve on 0.0.0.0 without authentication")


# --- pure parts --------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket() -> None:
    clock = Clock()
    limiter = RateLimiter(2.0, 3, clock=clock)
    assert [limiter.acquire("k") for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = limiter.acquire("k")
    assert wait == pytest.approx(0.5)
    assert retry_after_header(wait) == "1"
    assert limiter.acquire("other") == 0.0
    clock.now += 0.5
    assert limiter.acquire("k") == 0.0
    clock.now += 100
    assert [limiter.acquire("k") for _ in range(3)] == [0.0, 0.0, 0.0]  # refills to the burst, no more
    assert limiter.acquire("k") > 0


def test_restriction_claims() -> None:
    r = parse_restriction({"PatientID": ["P1"], "StudyInstanceUID": "1.2.3"})
    assert r == Restriction(frozenset({"P1"}), frozenset({"1.2.3"}))
    assert r.allows("1.2.3", None)
    assert r.allows("9.9", "P1")
    assert not r.allows("9.9", "P2")
    assert not parse_restriction({}).allows("1.2.3", "P1")
    for bad in (["P1"], "P1", {"PatientID": [1]}, {"PatientID": [""]}, {"Other": []}, {"PatientID": ["x"] * 1001}):
        with pytest.raises(RestrictionError):
            parse_restriction(bad)


def test_api_key_file(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    entry, key = create_key(path, "uploader", frozenset({"write"}), {"StudyInstanceUID": ["1.2.3"]})
    assert key not in path.read_text()
    store = ApiKeyStore(path)
    principal = store.authenticate(key)
    assert principal is not None
    assert (principal.subject, principal.scopes, principal.kind) == ("uploader", frozenset({"write"}), "apikey")
    assert principal.restriction == Restriction(study_uids=frozenset({"1.2.3"}))
    assert store.authenticate(key[:-1] + ("A" if key[-1] != "A" else "B")) is None
    assert store.authenticate("dwgk_" + entry.id + "_" + "x" * 43) is None
    with pytest.raises(ApiKeyError, match="active key named"):
        create_key(path, "uploader", frozenset({"read"}))
    with pytest.raises(ApiKeyError, match="scopes"):
        create_key(path, "other", frozenset({"superuser"}))
    with pytest.raises(ApiKeyError, match="name"):
        create_key(path, "../evil", frozenset({"read"}))
    assert revoke_key(path, "uploader") == 1
    assert ApiKeyStore(path).authenticate(key) is None
    path.write_text("{broken")
    with pytest.raises(ApiKeyError, match="unreadable"):
        ApiKeyStore(path).authenticate(key)
