"""Study-level restrictions on what comes from a PACS: a real Orthanc holds three studies of two
patients that the gateway has never stored; a secured gateway federates it ([[pacs]] node
``orthanc``). Tokens restricted to one PatientID or one StudyInstanceUID see only their PACS
studies in QIDO (federated and per PACS, at every level) and WADO (retrieve, metadata, frames)
answers 404 for the others, before and after the study was cached by an unrestricted token."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests import factory
from tests.fixtures_gateway import stop_gateway
from tests.fixtures_pacs import GATEWAY_AET, load_orthanc, node, pacs_toml
from tests.fixtures_security import (
    RESTRICTION_CLAIM,
    Issuer,
    JwksServer,
    SecuredGateway,
    bearer,
    oidc_config,
    start_secured_gateway,
)
from tests.http_helpers import split_multipart, uids_of
from tests.peers.orthanc import OrthancPeer, orthanc_available, run_orthanc

pytestmark = pytest.mark.timeout(120)

PACS = "orthanc"
STUDY_UID = "0020000D"
SERIES_UID = "0020000E"
SOP_UID = "00080018"
AS_STORED = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}
FRAME = {"Accept": "multipart/related; type=application/octet-stream; transfer-syntax=*"}
JSON = {"Accept": "application/dicom+json"}


@dataclass(frozen=True)
class Study:
    patient_id: str
    data: bytes

    @property
    def uids(self) -> tuple[str, str, str]:
        return uids_of(self.data)

    @property
    def uid(self) -> str:
        return self.uids[0]


def _instance(seed: int, name: str, pid: str) -> bytes:
    return factory.ct_instance(seed=seed, patient=factory.Patient(name, pid))


# PACS-only studies: A and C of patient PAT-PA, B of patient PAT-PB.
STUDIES = {
    "A": Study("PAT-PA", _instance(701, "PACS^ALPHA", "PAT-PA")),
    "B": Study("PAT-PB", _instance(702, "PACS^BRAVO", "PAT-PB")),
    "C": Study("PAT-PA", _instance(703, "PACS^ALPHA", "PAT-PA")),
}

TOKENS: dict[str, dict[str, Any]] = {
    "read-only": {"scope": "read"},
    "patient A": {"scope": "read", RESTRICTION_CLAIM: {"PatientID": ["PAT-PA"]}},
    "study B": {"scope": "read", RESTRICTION_CLAIM: {"StudyInstanceUID": [STUDIES["B"].uid]}},
}
VISIBLE = {"read-only": {"A", "B", "C"}, "patient A": {"A", "C"}, "study B": {"B"}}
RESTRICTED = ["patient A", "study B"]


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory, scp_port: int) -> Iterator[OrthancPeer]:
    if not orthanc_available():
        pytest.skip("Orthanc is not installed (apt-get install orthanc orthanc-dicomweb)")
    with run_orthanc(
        tmp_path_factory.mktemp("orthanc-restricted"), gateway_aet=GATEWAY_AET, gateway_port=scp_port
    ) as peer:
        load_orthanc(peer, [s.data for s in STUDIES.values()])
        yield peer


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory,
    jwks_server: JwksServer,
    orthanc: OrthancPeer,
    scp_port: int,
) -> Iterator[SecuredGateway]:
    # Top-level settings and the [[pacs]] node first, then the [auth] tables.
    pacs = pacs_toml(
        [node(PACS, orthanc.dicom_port, orthanc.aet, dimse_timeout=10)],
        ae_title=GATEWAY_AET,
        scp_port=scp_port,
        scp_host="127.0.0.1",
    )
    sg = start_secured_gateway(tmp_path_factory.mktemp("pacs-restriction"), pacs + oidc_config(jwks_server.url))
    try:
        yield sg
    finally:
        stop_gateway(sg.gw)


@pytest.fixture(scope="module")
def headers(issuer: Issuer) -> dict[str, dict[str, str]]:
    return {who: bearer(issuer.token(sub=who.replace(" ", "-"), **claims)) for who, claims in TOKENS.items()}


def rows(url: str, auth: dict[str, str], **params: str) -> list[dict[str, Any]]:
    response = httpx.get(url, params=params, headers={**JSON, **auth}, timeout=30)
    assert response.status_code in (200, 204), f"{url}: {response.status_code} {response.text}"
    if response.status_code == 204 or not response.content:
        return []
    found: list[dict[str, Any]] = response.json()
    return found


def studies_in(found: list[dict[str, Any]]) -> set[str]:
    """The labels (A, B, C) of the studies the rows belong to; fails on a row of no known study."""
    by_uid = {s.uid: label for label, s in STUDIES.items()}
    labels = set()
    for row in found:
        uid = row[STUDY_UID]["Value"][0]
        assert uid in by_uid, f"row of an unknown study {uid}"
        labels.add(by_uid[uid])
    return labels


def urls(gateway: SecuredGateway, study: Study) -> dict[str, tuple[str, dict[str, str]]]:
    """WADO-RS URLs of one study (federated and through the PACS selector), with their Accept."""
    st, se, sop = study.uids
    out = {}
    for prefix in ("", f"/pacs/{PACS}"):
        base = f"{gateway.url}{prefix}/studies/{st}"
        out |= {
            f"{prefix}/studies": (base, AS_STORED),
            f"{prefix}/series": (f"{base}/series/{se}", AS_STORED),
            f"{prefix}/instance": (f"{base}/series/{se}/instances/{sop}", AS_STORED),
            f"{prefix}/study metadata": (f"{base}/metadata", JSON),
            f"{prefix}/instance metadata": (f"{base}/series/{se}/instances/{sop}/metadata", JSON),
            f"{prefix}/frame": (f"{base}/series/{se}/instances/{sop}/frames/1", FRAME),
        }
    return out


def wado_statuses(gateway: SecuredGateway, auth: dict[str, str], label: str) -> dict[str, int]:
    """Status of every WADO URL of study ``label``; a 200 must carry that study's data only."""
    study = STUDIES[label]
    statuses = {}
    with httpx.Client(timeout=60) as client:
        for what, (url, accept) in urls(gateway, study).items():
            response = client.get(url, headers={**accept, **auth})
            statuses[what] = response.status_code
            if response.status_code != 200:
                # The error may echo the requested UID, but nothing the PACS holds about it.
                assert study.patient_id.encode() not in response.content, f"{what}: {response.text}"
                continue
            if accept is JSON:
                assert {r[STUDY_UID]["Value"][0] for r in response.json()} == {study.uid}, what
            elif accept is AS_STORED:
                assert [uids_of(body) for _, body in split_multipart(response)] == [study.uids], what
            else:
                assert len(split_multipart(response)) == 1, what
    return statuses


# --- QIDO ------------------------------------------------------------------------------------


@pytest.mark.parametrize("who", list(TOKENS))
@pytest.mark.parametrize("prefix", ["", f"/pacs/{PACS}"])
@pytest.mark.parametrize("level", ["studies", "series", "instances"])
def test_qido_sees_only_permitted_pacs_studies(
    gateway: SecuredGateway, headers: dict[str, dict[str, str]], who: str, prefix: str, level: str
) -> None:
    found = rows(f"{gateway.url}{prefix}/{level}", headers[who])
    assert studies_in(found) == VISIBLE[who]
    if level != "studies":
        tag = SERIES_UID if level == "series" else SOP_UID
        index = 1 if level == "series" else 2
        assert {r[tag]["Value"][0] for r in found} == {STUDIES[s].uids[index] for s in VISIBLE[who]}


@pytest.mark.parametrize("who", RESTRICTED)
@pytest.mark.parametrize("prefix", ["", f"/pacs/{PACS}"])
def test_qido_matching_and_study_scoped_searches_stay_restricted(
    gateway: SecuredGateway, headers: dict[str, dict[str, str]], who: str, prefix: str
) -> None:
    auth = headers[who]
    base = f"{gateway.url}{prefix}"
    for label, study in STUDIES.items():
        expected = {label} if label in VISIBLE[who] else set()
        # Asking for a study by its UID or PatientID does not get around the restriction.
        assert studies_in(rows(base + "/studies", auth, StudyInstanceUID=study.uid)) == expected
        same_patient = {s for s, other in STUDIES.items() if other.patient_id == study.patient_id}
        assert studies_in(rows(base + "/studies", auth, PatientID=study.patient_id)) == same_patient & VISIBLE[who]
        for level in ("series", "instances"):
            assert studies_in(rows(f"{base}/studies/{study.uid}/{level}", auth)) == expected, (label, level)
        st, se, _ = study.uids
        assert studies_in(rows(f"{base}/studies/{st}/series/{se}/instances", auth)) == expected, label


# --- WADO ------------------------------------------------------------------------------------


@pytest.mark.parametrize("who", RESTRICTED)
def test_wado_of_pacs_studies_outside_the_restriction_is_404(
    gateway: SecuredGateway, headers: dict[str, dict[str, str]], who: str
) -> None:
    """Before anything is cached: the denied studies first (so no retrieve has happened)."""
    for label in sorted(STUDIES, key=lambda s: s in VISIBLE[who]):
        want = 200 if label in VISIBLE[who] else 404
        statuses = wado_statuses(gateway, headers[who], label)
        assert statuses == dict.fromkeys(statuses, want), (label, statuses)


def test_unrestricted_token_sees_and_retrieves_every_study(
    gateway: SecuredGateway, headers: dict[str, dict[str, str]]
) -> None:
    assert studies_in(rows(gateway.url + "/studies", headers["read-only"])) == set(STUDIES)
    for label in STUDIES:
        statuses = wado_statuses(gateway, headers["read-only"], label)
        assert statuses == dict.fromkeys(statuses, 200), (label, statuses)


@pytest.mark.parametrize("who", RESTRICTED)
def test_restriction_holds_once_the_pacs_studies_are_cached(
    gateway: SecuredGateway, headers: dict[str, dict[str, str]], who: str
) -> None:
    """After the unrestricted token pulled every study into the cache (the test above, and again
    here so this test stands alone), QIDO and WADO answer from the cache: still restricted."""
    for label in STUDIES:
        statuses = wado_statuses(gateway, headers["read-only"], label)
        assert statuses == dict.fromkeys(statuses, 200), (label, statuses)
    for prefix in ("", f"/pacs/{PACS}"):
        for level in ("studies", "series", "instances"):
            assert studies_in(rows(f"{gateway.url}{prefix}/{level}", headers[who])) == VISIBLE[who]
    for label in STUDIES:
        want = 200 if label in VISIBLE[who] else 404
        statuses = wado_statuses(gateway, headers[who], label)
        assert statuses == dict.fromkeys(statuses, want), (label, statuses)
