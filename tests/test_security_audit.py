"""What the audit trail records of failures (issue #12, finding 6): why credentials were refused,
which instances a refused or partly failed STOW did not store, and which object a WADO-URI
request retrieved. Each case reads the audit lines a real gateway wrote."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import factory
from tests.fixtures_gateway import stop_gateway
from tests.fixtures_security import (
    RESTRICTION_CLAIM,
    Issuer,
    JwksServer,
    SecuredGateway,
    apikey_command,
    b64json,
    bearer,
    create_api_key,
    hmac_token,
    oidc_config,
    start_secured_gateway,
)
from tests.http_helpers import stow_body, uids_of

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def audited(
    tmp_path_factory: pytest.TempPathFactory, jwks_server: JwksServer
) -> Iterator[tuple[SecuredGateway, dict[str, str]]]:
    tmp = tmp_path_factory.mktemp("audit")
    keys_file = tmp / "apikeys.json"
    keys = {"writer": create_api_key(keys_file, "writer", "write", "read")}
    keys["revoked"] = create_api_key(keys_file, "gone", "read")
    assert apikey_command("revoke", "gone", "--keys-file", str(keys_file)).returncode == 0
    extra = f'[audit]\ndestination = "{tmp / "audit.jsonl"}"\n'
    sg = start_secured_gateway(tmp, oidc_config(jwks_server.url, keys_file=keys_file, extra=extra))
    sg.extra["audit"] = tmp / "audit.jsonl"
    try:
        yield sg, keys
    finally:
        stop_gateway(sg.gw)


def audit_lines(sg: SecuredGateway) -> list[dict[str, Any]]:
    path: Path = sg.extra["audit"]
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def wait_for(sg: SecuredGateway, wanted: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """The one audit line ``wanted`` picks (each is written just after its response is sent)."""
    deadline = time.monotonic() + 10
    while not (lines := [x for x in audit_lines(sg) if wanted(x)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(lines) == 1, lines
    return lines[0]


def object_ids(line: dict[str, Any]) -> list[str]:
    return [o["ParticipantObjectID"] for o in line["ParticipantObjectIdentification"]]


def test_refused_credentials_say_why(audited: tuple[SecuredGateway, dict[str, str]], issuer: Issuer) -> None:
    sg, keys = audited
    now = int(time.time())
    claims = issuer.claims()
    head, payload, signature = issuer.token().split(".")
    flipped = signature[:-4] + ("AAAA" if not signature.endswith("AAAA") else "BBBB")
    cases = {
        "expired": issuer.token(exp=now - 120),
        "bad_signature": f"{head}.{payload}.{flipped}",
        "unknown_kid": issuer.token(kid="attacker"),
        "alg_not_allowed": f"{b64json({'alg': 'none', 'typ': 'JWT'})}.{b64json(claims)}.",
        "malformed": "not-a-token",
        "unknown_key": "dwgk_000000000000_" + "A" * 43,
        "revoked_key": keys["revoked"],
        "bad_secret": keys["writer"][:-5] + ("AAAAA" if not keys["writer"].endswith("AAAAA") else "BBBBB"),
        "no_credentials": None,
    }
    # HMAC with the RSA public key as the secret: the key confusion is refused by algorithm too.
    hs256 = hmac_token(issuer.public_pem("rsa-1"), {"alg": "HS256", "kid": "rsa-1"}, claims)
    probes: dict[str, tuple[str, str]] = {}
    for name, token in [*cases.items(), ("alg_not_allowed", hs256)]:
        probe = factory.new_uid("audit-401", name, token)
        headers = bearer(token) if token else {}
        response = httpx.get(sg.url + f"/studies/{probe}/metadata", headers=headers)
        assert response.status_code == 401, (name, response.text)
        probes[probe] = (name, response.headers["www-authenticate"])
    for probe, (reason, challenge) in probes.items():
        line = wait_for(sg, lambda x, p=probe: p in x["http"]["path"])  # type: ignore[misc]
        event = line["EventIdentification"]
        assert event["EventID"]["code"] == "110114"
        assert event["EventOutcomeIndicator"] == 4
        assert event["EventOutcomeDescription"] == reason
        assert line["ActiveParticipant"][0]["UserID"] == "unauthenticated"
        assert reason not in ("revoked_key", "bad_secret") or "revoked" not in challenge  # not told to the client


def test_wado_uri_names_the_object(audited: tuple[SecuredGateway, dict[str, str]]) -> None:
    sg, keys = audited
    data = factory.ct_instance(seed=1201, rows=8, cols=8)
    body, content_type = stow_body([data])
    writer = bearer(keys["writer"])
    assert httpx.post(sg.url + "/studies", content=body, headers={**writer, "Content-Type": content_type}).is_success
    s, se, i = uids_of(data)
    params = {"requestType": "WADO", "studyUID": s, "seriesUID": se, "objectUID": i, "contentType": "application/dicom"}
    assert httpx.get(sg.url + "/wado", params=params, headers=writer).status_code == 200
    line = wait_for(sg, lambda x: x["http"]["path"].endswith("/wado") and i in object_ids(x))
    assert line["EventIdentification"]["EventID"]["code"] == "110104"
    assert line["EventIdentification"]["EventActionCode"] == "R"
    assert object_ids(line) == [s, se, i]
    types = [o["ParticipantObjectIDTypeCode"]["code"] for o in line["ParticipantObjectIdentification"]]
    assert types == ["110180", "112002", "110183"]


def test_partly_failed_stow_names_the_instances_not_stored(audited: tuple[SecuredGateway, dict[str, str]]) -> None:
    sg, keys = audited
    writer = bearer(keys["writer"])
    first = factory.ct_instance(seed=1301, rows=8, cols=8)
    s, se, i = uids_of(first)
    clash = factory.ct_instance(seed=1302, rows=8, cols=8, study_uid=s, series_uid=se, sop_uid=i)  # other bytes
    fresh = factory.ct_instance(seed=1303, rows=8, cols=8)
    garbage = b"\0" * 200
    body, content_type = stow_body([first])
    assert httpx.post(sg.url + "/studies", content=body, headers={**writer, "Content-Type": content_type}).is_success
    body, content_type = stow_body([clash, fresh, garbage])
    response = httpx.post(sg.url + "/studies", content=body, headers={**writer, "Content-Type": content_type})
    assert response.status_code == 202, response.text
    fresh_sop = uids_of(fresh)[2]
    line = wait_for(sg, lambda x: fresh_sop in object_ids(x))
    assert line["EventIdentification"]["EventOutcomeIndicator"] == 0
    stored, refused, unnamed = line["ParticipantObjectIdentification"]
    assert stored["ParticipantObjectID"] == fresh_sop
    assert "ParticipantObjectDescription" not in stored
    assert refused["ParticipantObjectID"] == i
    assert refused["ParticipantObjectDescription"] == "not stored"
    assert refused["ParticipantObjectDetail"] == {"StudyInstanceUID": s, "FailureReason": "0111"}
    assert unnamed["ParticipantObjectID"] == ""
    assert unnamed["ParticipantObjectDetail"]["FailureReason"] == ["C000"]


def test_refused_stow_leaves_a_trace(audited: tuple[SecuredGateway, dict[str, str]], issuer: Issuer) -> None:
    """A principal probing studies outside its restriction: every attempt is named."""
    sg, _ = audited
    allowed = factory.new_uid("audit-allowed-study")
    prober = bearer(issuer.token(sub="prober", scope="write", **{RESTRICTION_CLAIM: {"StudyInstanceUID": [allowed]}}))
    outside = [factory.ct_instance(seed=1400 + n, rows=8, cols=8) for n in range(2)]
    body, content_type = stow_body(outside)
    response = httpx.post(sg.url + "/studies", content=body, headers={**prober, "Content-Type": content_type})
    assert response.status_code == 409, response.text
    line = wait_for(sg, lambda x: x["ActiveParticipant"][0]["UserID"] == "jwt:prober")
    assert line["EventIdentification"]["EventActionCode"] == "C"
    assert line["EventIdentification"]["EventOutcomeIndicator"] == 4
    expected = [{"StudyInstanceUID": uids_of(d)[0], "FailureReason": "0124", "sop": uids_of(d)[2]} for d in outside]
    seen = [
        {**o["ParticipantObjectDetail"], "sop": o["ParticipantObjectID"]}
        for o in line["ParticipantObjectIdentification"]
        if o.get("ParticipantObjectDescription") == "not stored"
    ]
    assert seen == expected
