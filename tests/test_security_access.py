"""Who may do what, on every route: anonymous, read-only, write-only and restricted tokens
(PatientID / StudyInstanceUID claims) against one gateway holding three studies of two
patients. No response outside a token's restriction carries its data. CORS and the audit
trail are checked on the same gateway."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.http.routes import dicomweb_routes
from tests import factory
from tests.fixtures_gateway import stop_gateway
from tests.fixtures_security import (
    RESTRICTION_CLAIM,
    Issuer,
    JwksServer,
    SecuredGateway,
    bearer,
    oidc_config,
    start_secured_gateway,
)
from tests.http_helpers import stow_body, uids_of

pytestmark = pytest.mark.timeout(300)
VIEWER = "https://viewer.example.org"


@dataclass(frozen=True)
class Study:
    patient_id: str
    patient_name: str
    data: bytes

    @property
    def uids(self) -> tuple[str, str, str]:
        return uids_of(self.data)


STUDIES = {
    "A": Study("PAT-A", "ALPHA^ANNA", factory.rle_instance(seed=501, patient=factory.Patient("ALPHA^ANNA", "PAT-A"))),
    "B": Study("PAT-B", "BRAVO^BERT", factory.rle_instance(seed=502, patient=factory.Patient("BRAVO^BERT", "PAT-B"))),
    "C": Study("PAT-A", "ALPHA^ANNA", factory.ct_instance(seed=503, patient=factory.Patient("ALPHA^ANNA", "PAT-A"))),
}


@pytest.fixture(scope="module")
def access_gateway(
    tmp_path_factory: pytest.TempPathFactory, jwks_server: JwksServer, issuer: Issuer
) -> Iterator[SecuredGateway]:
    tmp = tmp_path_factory.mktemp("access")
    extra = (
        f'[cors]\norigins = ["{VIEWER}"]\nmax_age = 600\ncorp = "cross-origin"\n'
        f'[audit]\ndestination = "{tmp / "audit.jsonl"}"\n'
    )
    sg = start_secured_gateway(tmp, oidc_config(jwks_server.url, extra=extra))
    sg.extra["audit"] = tmp / "audit.jsonl"
    writer = bearer(issuer.token(scope="write", sub="uploader"))
    for study in STUDIES.values():
        body, content_type = stow_body([study.data])
        response = httpx.post(sg.url + "/studies", content=body, headers={**writer, "Content-Type": content_type})
        assert response.status_code == 200, response.text
    try:
        yield sg
    finally:
        stop_gateway(sg.gw)


# --- principals and routes -------------------------------------------------------------------

PRINCIPALS: dict[str, dict[str, Any] | None] = {
    "anonymous": None,
    "read-only": {"scope": "read"},
    "write-only": {"scope": "write"},
    "restricted to patient A": {"scope": "read", RESTRICTION_CLAIM: {"PatientID": ["PAT-A"]}},
    "restricted to study B": {"scope": "read", RESTRICTION_CLAIM: {"StudyInstanceUID": [STUDIES["B"].uids[0]]}},
    "restricted to nothing": {"scope": "read write", RESTRICTION_CLAIM: {}},
}
VISIBLE = {
    "read-only": {"A", "B", "C"},
    "restricted to patient A": {"A", "C"},
    "restricted to study B": {"B"},
    "restricted to nothing": set(),
}

# Every DICOMweb route (method, template), with how to fill it in for one study.
ROUTES = [
    ("GET", "/studies"),
    ("POST", "/studies"),
    ("GET", "/series"),
    ("GET", "/instances"),
    ("GET", "/wado"),  # WADO-URI: the UIDs are query parameters (see url_for)
    ("OPTIONS", "/{path:path}"),  # Capabilities of any resource (a plain OPTIONS, not a preflight)
    ("GET", "/studies/{study}"),
    ("POST", "/studies/{study}"),
    ("GET", "/studies/{study}/metadata"),
    ("GET", "/studies/{study}/series"),
    ("GET", "/studies/{study}/instances"),
    ("GET", "/studies/{study}/series/{series}"),
    ("GET", "/studies/{study}/series/{series}/metadata"),
    ("GET", "/studies/{study}/series/{series}/instances"),
    ("GET", "/studies/{study}/series/{series}/instances/{instance}"),
    ("GET", "/studies/{study}/series/{series}/instances/{instance}/metadata"),
    ("GET", "/studies/{study}/series/{series}/instances/{instance}/frames/{frames}"),
    ("GET", "/studies/{study}/series/{series}/instances/{instance}/bulkdata/{path:path}"),
    *(
        ("GET", level + kind)
        for level in (
            "/studies/{study}",
            "/studies/{study}/series/{series}",
            "/studies/{study}/series/{series}/instances/{instance}",
            "/studies/{study}/series/{series}/instances/{instance}/frames/{frames}",
        )
        for kind in ("/rendered", "/thumbnail")
    ),
    ("GET", "/changefeed"),
    ("GET", "/changefeed/latest"),
    ("GET", "/studies/{study}/protected"),
    ("PUT", "/studies/{study}/protected"),
    # Metadata corrections: admin, for reading what they did and replaced too.
    ("POST", "/studies/$bulkUpdate"),
    ("GET", "/operations/{operation}"),
    ("GET", "/studies/{study}/series/{series}/instances/{instance}/original"),
    *(
        route
        for level in (
            "/studies/{study}",
            "/studies/{study}/series/{series}",
            "/studies/{study}/series/{series}/instances/{instance}",
        )
        for route in (("DELETE", level), ("POST", level + "/reject/{code}"))
    ),
]
# Reading what corrections did needs admin, which is checked before routing: left out here.
ADMIN_READS = ("/operations/{operation}", "/original")
PACS_ROUTES = [(m, t) for m, t in ROUTES if m == "GET" and not t.endswith(ADMIN_READS)]
ACCEPT = {
    "frames": "multipart/related; type=application/octet-stream; transfer-syntax=*",
    "bulkdata": "application/octet-stream",
    "rendered": "image/jpeg",
}


# The read-only per-PACS mirror of the routes (gateway.services.federation); no PACS is
# configured here, so a PACS name is unknown: 404 once authorised, never data.
PACS_PREFIX = "/pacs/{pacs}"


def _flatten(routes: list[Any], prefix: str = "") -> set[tuple[str, str]]:
    table: set[tuple[str, str]] = set()
    for r in routes:
        if hasattr(r, "routes") and not hasattr(r, "methods"):
            table |= _flatten(r.routes, prefix + r.path)
        else:
            table |= {(m, prefix + r.path) for m in (r.methods or ()) if m != "HEAD"}
    return table


def test_the_matrix_covers_every_route() -> None:
    table = _flatten(dicomweb_routes())
    own = {(m, p) for m, p in table if not p.startswith(PACS_PREFIX)}
    assert own == set(ROUTES), "add new routes (rendered, thumbnail, ...) to the access matrix"
    pacs = {(m, p[len(PACS_PREFIX) :]) for m, p in table if p.startswith(PACS_PREFIX)}
    assert pacs <= set(ROUTES)
    assert all(m == "GET" for m, _ in pacs)


def headers_for(issuer: Issuer, principal: str) -> dict[str, str]:
    claims = PRINCIPALS[principal]
    return {} if claims is None else bearer(issuer.token(sub=principal.replace(" ", "-"), **claims))


def url_for(template: str, study: Study) -> str:
    s, se, i = study.uids
    if template == "/{path:path}":
        return f"/studies/{s}/series/{se}"
    if template.endswith("/wado"):
        return f"{template}?requestType=WADO&studyUID={s}&seriesUID={se}&objectUID={i}"
    return (
        template.replace("{study}", s)
        .replace("{series}", se)
        .replace("{instance}", i)
        .replace("{frames}", "1")
        .replace("{path:path}", "7FE00010")
        .replace("{code}", "113039^DCM")
        .replace("{operation}", "0" * 32)
    )


def request(sg: SecuredGateway, method: str, template: str, study: Study, headers: dict[str, str]) -> httpx.Response:
    url = sg.url + url_for(template, study)
    kind = (
        "rendered"
        if template.endswith(("/rendered", "/thumbnail"))
        else "frames"
        if "frames" in template
        else "bulkdata"
        if "bulkdata" in template
        else None
    )
    if method == "DELETE" or template.endswith("/reject/{code}"):
        return httpx.request(method, url, headers=headers, timeout=30)
    if method == "PUT":  # protect the study from retention sweeps
        return httpx.put(url, content=b"1", headers=headers, timeout=30)
    if template.endswith("$bulkUpdate"):
        change = {"studyInstanceUids": [study.uids[0]], "changeDataset": {"00100010": {"vr": "PN"}}}
        return httpx.post(url, json=change, headers=headers, timeout=30)
    if method == "POST":
        body, content_type = stow_body([study.data])
        return httpx.post(url, content=body, headers={**headers, "Content-Type": content_type}, timeout=30)
    if method == "OPTIONS":
        return httpx.request("OPTIONS", url, headers=headers, timeout=30)
    return httpx.get(url, headers={**headers, "Accept": ACCEPT.get(kind or "", "*/*")}, timeout=30)


def forbidden_markers(principal: str) -> list[bytes]:
    """What must never appear in a response to ``principal``: data of the studies it cannot see."""
    hidden = {"A", "B", "C"} - VISIBLE.get(principal, {"A", "B", "C"})
    markers: set[bytes] = set()
    for name in hidden:
        study = STUDIES[name]
        markers.update(uid.encode() for uid in study.uids)
        visible_patients = {STUDIES[v].patient_id for v in VISIBLE.get(principal, set())}
        if study.patient_id not in visible_patients:
            markers.update({study.patient_id.encode(), study.patient_name.split("^")[0].encode()})
    return sorted(markers)


@pytest.mark.parametrize("principal", list(PRINCIPALS))
def test_access_matrix(access_gateway: SecuredGateway, issuer: Issuer, principal: str) -> None:
    headers = headers_for(issuer, principal)
    markers = forbidden_markers(principal)
    problems = []
    for method, template in ROUTES:
        for name, study in STUDIES.items():
            response = request(access_gateway, method, template, study, headers)
            status = response.status_code
            expected = _expected(principal, method, template, name)
            if status != expected:
                problems.append(f"{method} {template} study {name}: {status}, expected {expected}")
            raw = response.content + repr(response.headers.raw).encode()
            # A 404 may repeat the UIDs the client itself sent; anything else is a leak.
            asked = url_for(template, study).encode() + (study.data if method == "POST" else b"")
            leaked = [m for m in markers if m in raw and m not in asked]
            if leaked:
                problems.append(f"{method} {template} study {name}: leaks {leaked}")
    for method, template in PACS_ROUTES:
        response = request(access_gateway, method, "/pacs/nope" + template, STUDIES["A"], headers)
        expected = {"anonymous": 401, "write-only": 403}.get(principal, 404)
        if response.status_code != expected:
            problems.append(f"{method} /pacs/nope{template}: {response.status_code}, expected {expected}")
    assert problems == []


def _expected(principal: str, method: str, template: str, study: str) -> int:
    if principal == "anonymous":
        return 401
    # No principal here has admin: deleting, rejecting and protecting are refused before anything
    # is looked up.
    destructive = method in ("DELETE", "PUT") or template.endswith(("/reject/{code}", "$bulkUpdate", *ADMIN_READS))
    needed = "admin" if destructive else "write" if method == "POST" else "read"
    scopes = str((PRINCIPALS[principal] or {}).get("scope", "")).split()
    if needed not in scopes:
        return 403
    if method == "OPTIONS":
        return 200  # Capabilities describe path templates, never a study's data
    if template == "/changefeed/latest" and not VISIBLE[principal]:
        return 204  # no entry of its studies: the feed is empty as far as it can tell
    if method == "POST":
        # An identical re-upload; outside a restriction it is refused (0124 Not Authorized).
        return 200 if study in VISIBLE.get(principal, {"A", "B", "C"}) else 409
    path_has_study = "{study}" in template or template == "/wado"
    if path_has_study and study not in VISIBLE[principal]:
        return 404 if not _is_qido(template) else 200  # QIDO under a hidden study: an empty list
    return 200


def _is_qido(template: str) -> bool:
    return template.endswith(("/series", "/instances", "/studies"))


@pytest.mark.parametrize("principal", ["read-only", "restricted to patient A", "restricted to study B"])
def test_qido_lists_only_visible_studies(access_gateway: SecuredGateway, issuer: Issuer, principal: str) -> None:
    headers = headers_for(issuer, principal)
    visible = {STUDIES[n].uids[0] for n in VISIBLE[principal]}
    for level, tag in (("/studies", "0020000D"), ("/series", "0020000D"), ("/instances", "0020000D")):
        rows = httpx.get(access_gateway.url + level, headers=headers).json()
        assert {r[tag]["Value"][0] for r in rows} == visible, level
    # Hidden studies cannot be found by naming them either.
    for name, study in STUDIES.items():
        rows = httpx.get(access_gateway.url + f"/studies?StudyInstanceUID={study.uids[0]}", headers=headers).json()
        assert len(rows) == (1 if name in VISIBLE[principal] else 0)
        rows = httpx.get(access_gateway.url + f"/studies?PatientID={study.patient_id}", headers=headers).json()
        assert {r["0020000D"]["Value"][0] for r in rows} <= visible


def test_restricted_paging_counts_visible_rows_only(access_gateway: SecuredGateway, issuer: Issuer) -> None:
    headers = headers_for(issuer, "restricted to patient A")
    url = access_gateway.url + "/studies"
    first = httpx.get(url + "?limit=1", headers=headers)
    second = httpx.get(url + "?limit=1&offset=1", headers=headers)
    assert len(first.json()) == len(second.json()) == 1
    assert "warning" in first.headers  # one more visible row exists
    assert "warning" not in second.headers  # and none after it, though study B exists
    assert first.json()[0]["0020000D"] != second.json()[0]["0020000D"]
    assert httpx.get(url + "?offset=2", headers=headers).json() == []


# --- CORS (OHIF from another origin) ---------------------------------------------------------


def test_preflight_is_answered_without_credentials(access_gateway: SecuredGateway) -> None:
    s, se, i = STUDIES["A"].uids
    url = f"{access_gateway.url}/studies/{s}/series/{se}/instances/{i}/frames/1"
    response = httpx.options(
        url,
        headers={
            "Origin": VIEWER,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "accept, authorization, content-type, range",
        },
    )
    assert response.status_code == 200
    h = response.headers
    assert h["access-control-allow-origin"] == VIEWER
    assert {"GET", "POST"} <= {m.strip() for m in h["access-control-allow-methods"].split(",")}
    allowed = {x.strip().lower() for x in h["access-control-allow-headers"].split(",")}
    assert {"accept", "authorization", "content-type", "range"} <= allowed  # range: progressive loading
    assert h["access-control-max-age"] == "600"
    assert "Origin" in h["vary"]
    assert h["cross-origin-resource-policy"] == "cross-origin"


def test_cors_on_responses(access_gateway: SecuredGateway, issuer: Issuer) -> None:
    ok = httpx.get(access_gateway.url + "/studies", headers={"Origin": VIEWER, **headers_for(issuer, "read-only")})
    assert ok.headers["access-control-allow-origin"] == VIEWER
    assert "Origin" in ok.headers["vary"]
    assert ok.headers["cross-origin-resource-policy"] == "cross-origin"
    exposed = ok.headers["access-control-expose-headers"].lower()
    assert {"warning", "content-range"} <= {x.strip() for x in exposed.split(",")}
    # A 401 carries CORS headers too, so the viewer can read it and log in again.
    denied = httpx.get(access_gateway.url + "/studies", headers={"Origin": VIEWER})
    assert denied.status_code == 401
    assert denied.headers["access-control-allow-origin"] == VIEWER


def test_other_origins_are_not_allowed(access_gateway: SecuredGateway, issuer: Issuer) -> None:
    evil = "https://evil.example.org"
    preflight = httpx.options(
        access_gateway.url + "/studies", headers={"Origin": evil, "Access-Control-Request-Method": "GET"}
    )
    assert "access-control-allow-origin" not in preflight.headers
    response = httpx.get(access_gateway.url + "/studies", headers={"Origin": evil, **headers_for(issuer, "read-only")})
    assert "access-control-allow-origin" not in response.headers
    assert "Origin" in response.headers["vary"]


# --- audit trail -----------------------------------------------------------------------------


def audit_lines(sg: SecuredGateway) -> list[dict[str, Any]]:
    path: Path = sg.extra["audit"]
    return [json.loads(line) for line in path.read_text().splitlines()]


def wait_for_audit(sg: SecuredGateway, wanted: Callable[[dict[str, Any]], bool], count: int) -> list[dict[str, Any]]:
    """The audit lines ``wanted`` picks, once there are ``count`` of them: each line is written
    just after its response is sent, and other tests' lines may arrive in between."""
    deadline = time.monotonic() + 10
    while len(lines := [x for x in audit_lines(sg) if wanted(x)]) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    return lines


def test_audit_trail(access_gateway: SecuredGateway, issuer: Issuer) -> None:
    reader = bearer(issuer.token(sub="auditor", scope="read"))
    s, se, _ = STUDIES["A"].uids
    probe = factory.new_uid("audit-probe")
    httpx.get(access_gateway.url + "/studies?PatientName=ALPHA*&limit=5", headers=reader)
    httpx.get(access_gateway.url + f"/studies/{s}/series/{se}/metadata", headers=reader)
    httpx.get(access_gateway.url + f"/studies/{probe}/metadata", headers={"Authorization": "Bearer not-a-token"})

    def ours(line: dict[str, Any]) -> bool:
        return line["ActiveParticipant"][0]["UserID"] == "jwt:auditor" or probe in line["http"]["path"]

    lines = wait_for_audit(access_gateway, ours, 3)
    assert len(lines) == 3
    query, retrieve, refused = lines
    for line in lines:
        assert set(line) >= {"EventIdentification", "ActiveParticipant", "AuditSourceIdentification"}
        assert line["ActiveParticipant"][0]["NetworkAccessPointID"] == "127.0.0.1"
    assert query["EventIdentification"]["EventID"]["code"] == "110112"
    assert query["ParticipantObjectIdentification"][-1]["ParticipantObjectQuery"] == ["PatientName", "limit"]
    assert "ALPHA" not in json.dumps(query)  # query values are patient data: kept out by default
    assert retrieve["EventIdentification"]["EventID"]["code"] == "110104"
    assert retrieve["EventIdentification"]["EventOutcomeIndicator"] == 0
    ids = [o["ParticipantObjectID"] for o in retrieve["ParticipantObjectIdentification"]]
    assert ids == [s, se]
    assert retrieve["http"]["bytes_sent"] > 0
    assert refused["EventIdentification"]["EventID"]["code"] == "110114"
    assert refused["EventIdentification"]["EventOutcomeIndicator"] == 4
    assert refused["ActiveParticipant"][0]["UserID"] == "unauthenticated"


def test_audit_of_stores_names_the_instances(access_gateway: SecuredGateway, issuer: Issuer) -> None:
    data = factory.ct_instance(seed=777, rows=8, cols=8, patient=factory.Patient("AUDIT^ME", "PAT-Z"))
    body, content_type = stow_body([data])
    writer = bearer(issuer.token(scope="write", sub="uploader"))
    response = httpx.post(
        access_gateway.url + "/studies", content=body, headers={**writer, "Content-Type": content_type}
    )
    assert response.status_code == 200
    sop = uids_of(data)[2]

    def names_it(line: dict[str, Any]) -> bool:
        return any(o.get("ParticipantObjectID") == sop for o in line["ParticipantObjectIdentification"])

    (line,) = wait_for_audit(access_gateway, names_it, 1)
    assert line["EventIdentification"]["EventActionCode"] == "C"
    assert line["ActiveParticipant"][0]["UserID"] == "jwt:uploader"
    s, se, i = uids_of(data)
    stored = line["ParticipantObjectIdentification"][0]
    assert stored["ParticipantObjectID"] == i
    assert stored["ParticipantObjectDetail"] == {"StudyInstanceUID": s, "SeriesInstanceUID": se}
    assert line["http"]["bytes_received"] == len(body)
