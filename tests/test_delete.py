"""DELETE {base}/studies/{study}[/series/{series}[/instances/{sop}]] over a real gateway process
with OIDC tokens: the admin scope only, a restricted principal only inside its restriction (else
the 404 of an absent study), rows first and objects after the grace, one audit object per
instance, a change-feed entry per instance, and a re-STOW that works afterwards."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from dicomweb_client import DICOMwebClient

from tests import factory
from tests.fixtures_gateway import stop_gateway
from tests.fixtures_pacs import GatewayFactory, PacsData, node
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
from tests.peers.orthanc import OrthancPeer
from tests.test_pacs_cache_expiry import wait_until
from tests.test_pacs_wado import by_sop, retrieve

pytestmark = pytest.mark.timeout(300)

GRACE = 0.5  # delete_grace: seconds between a row leaving the index and its objects going


@contextmanager
def audited_gateway(where: Path, jwks_server: JwksServer) -> Iterator[SecuredGateway]:
    """A gateway with OIDC tokens, a short delete grace and its audit trail in a file."""
    config = f'delete_grace = {GRACE}\n[audit]\ndestination = "{where / "audit.jsonl"}"\n' + oidc_config(
        jwks_server.url
    )
    running = start_secured_gateway(where, config)
    running.extra["audit"] = where / "audit.jsonl"
    try:
        yield running
    finally:
        stop_gateway(running.gw)


@pytest.fixture(scope="module")
def sg(tmp_path_factory: pytest.TempPathFactory, jwks_server: JwksServer) -> Iterator[SecuredGateway]:
    with audited_gateway(tmp_path_factory.mktemp("delete"), jwks_server) as running:
        yield running


def token(issuer: Issuer, scope: str, restriction: dict[str, Any] | None = None, sub: str = "ops") -> dict[str, str]:
    claims: dict[str, Any] = {"scope": scope}
    if restriction is not None:
        claims[RESTRICTION_CLAIM] = restriction
    return bearer(issuer.token(sub=sub, **claims))


def store(sg: SecuredGateway, issuer: Issuer, instances: list[bytes]) -> None:
    body, content_type = stow_body(instances)
    headers = {**token(issuer, "read write"), "Content-Type": content_type, "Accept": "application/dicom+json"}
    response = httpx.post(sg.url + "/studies", content=body, headers=headers, timeout=60)
    assert response.status_code == 200, response.text


def stored_sops(sg: SecuredGateway, issuer: Issuer, study: str) -> list[str]:
    response = httpx.get(f"{sg.url}/studies/{study}/instances", headers=token(issuer, "read"), timeout=30)
    assert response.status_code in (200, 204), response.text
    return sorted(row["00080018"]["Value"][0] for row in response.json()) if response.status_code == 200 else []


def objects_of(sg: SecuredGateway, sop: str) -> list[Path]:
    return [p for p in (sg.gw.data_dir / "objects").rglob(f"{sop}.*") if p.is_file()]


def wait_until_gone(sg: SecuredGateway, sop: str) -> None:
    deadline = time.monotonic() + 30
    while objects_of(sg, sop):
        assert time.monotonic() < deadline, f"the objects of {sop} are still there"
        time.sleep(0.1)


def audit_events(sg: SecuredGateway) -> list[dict[str, Any]]:
    path: Path = sg.extra["audit"]
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def test_delete_a_study_with_dicomweb_client(sg: SecuredGateway, issuer: Issuer) -> None:
    instances = factory.ct_series(3, 64, 64, seed=171)
    store(sg, issuer, instances)
    study = uids_of(instances[0])[0]
    sops = sorted(uids_of(data)[2] for data in instances)
    assert all(objects_of(sg, sop) for sop in sops)

    DICOMwebClient(sg.url, headers=token(issuer, "admin", sub="erasure-officer")).delete_study(study)

    assert stored_sops(sg, issuer, study) == []
    retrieve = httpx.get(f"{sg.url}/studies/{study}", headers=token(issuer, "read"), timeout=30)
    assert retrieve.status_code == 404
    for sop in sops:
        wait_until_gone(sg, sop)
    # The audit trail names every instance deleted, and who deleted them.
    (event,) = [e for e in audit_events(sg) if e["http"]["method"] == "DELETE" and study in e["http"]["path"]]
    assert event["EventIdentification"]["EventActionCode"] == "D"
    assert event["ActiveParticipant"][0]["UserID"] == "jwt:erasure-officer"
    deleted = [o for o in event["ParticipantObjectIdentification"] if o.get("ParticipantObjectDescription")]
    assert sorted(o["ParticipantObjectID"] for o in deleted) == sops
    assert {o["ParticipantObjectDescription"] for o in deleted} == {"deleted"}
    # One change-feed entry per instance.
    entries = httpx.get(sg.url + "/changefeed", params={"limit": 200}, headers=token(issuer, "read"), timeout=30)
    mine = [e for e in entries.json() if e["StudyInstanceUid"] == study and e["Action"] == "delete"]
    assert sorted(e["SopInstanceUid"] for e in mine) == sops
    assert {e["Origin"] for e in mine} == {"delete"}


def test_delete_a_series_and_an_instance(sg: SecuredGateway, issuer: Issuer) -> None:
    study = factory.new_uid("delete-levels", 1)
    first = factory.ct_series(2, 64, 64, seed=172, study_uid=study)
    second = factory.ct_series(2, 64, 64, seed=173, study_uid=study, series_number=2)
    store(sg, issuer, first + second)
    admin = token(issuer, "admin")
    _, series, _ = uids_of(first[0])
    assert httpx.delete(f"{sg.url}/studies/{study}/series/{series}", headers=admin, timeout=30).status_code == 204
    assert stored_sops(sg, issuer, study) == sorted(uids_of(data)[2] for data in second)
    _, series2, sop = uids_of(second[0])
    url = f"{sg.url}/studies/{study}/series/{series2}/instances/{sop}"
    assert httpx.delete(url, headers=admin, timeout=30).status_code == 204
    assert stored_sops(sg, issuer, study) == [uids_of(second[1])[2]]
    # Nothing left to match: 404, at every level.
    assert httpx.delete(url, headers=admin, timeout=30).status_code == 404
    assert httpx.delete(f"{sg.url}/studies/{study}/series/{series}", headers=admin, timeout=30).status_code == 404
    assert httpx.delete(f"{sg.url}/studies/1.2.3.4.5", headers=admin, timeout=30).status_code == 404


def test_only_admin_may_delete_and_a_restricted_one_only_its_own(sg: SecuredGateway, issuer: Issuer) -> None:
    mine = factory.ct_series(1, 64, 64, seed=174)
    theirs = factory.ct_series(1, 64, 64, seed=175)
    store(sg, issuer, mine + theirs)
    my_study, their_study = uids_of(mine[0])[0], uids_of(theirs[0])[0]
    writer = token(issuer, "read write")
    refused = httpx.delete(f"{sg.url}/studies/{my_study}", headers=writer, timeout=30)
    assert refused.status_code == 403
    assert "admin" in refused.json()["reason"]
    restricted = token(issuer, "read admin", {"StudyInstanceUID": [my_study]}, sub="ward-admin")
    # Another study: the answer of an absent one, and the study stays.
    hidden = httpx.delete(f"{sg.url}/studies/{their_study}", headers=restricted, timeout=30)
    absent = httpx.delete(f"{sg.url}/studies/1.2.3.4.5.6", headers=restricted, timeout=30)
    assert (hidden.status_code, hidden.json()["reason"]) == (absent.status_code, absent.json()["reason"])
    assert hidden.status_code == 404
    assert stored_sops(sg, issuer, their_study) == [uids_of(theirs[0])[2]]
    assert httpx.delete(f"{sg.url}/studies/{my_study}", headers=restricted, timeout=30).status_code == 204
    assert stored_sops(sg, issuer, my_study) == []


def test_a_restricted_reader_follows_only_its_studies_in_the_change_feed(sg: SecuredGateway, issuer: Issuer) -> None:
    mine = factory.ct_series(2, 64, 64, seed=177)
    theirs = factory.ct_series(1, 64, 64, seed=178)
    store(sg, issuer, mine + theirs)
    my_study = uids_of(mine[0])[0]
    admin = token(issuer, "admin")
    assert httpx.delete(f"{sg.url}/studies/{my_study}", headers=admin, timeout=30).status_code == 204
    store(sg, issuer, theirs)  # an identical re-send: no entry, and not mine anyway
    reader = token(issuer, "read", {"StudyInstanceUID": [my_study]}, sub="ward-reader")
    response = httpx.get(sg.url + "/changefeed", params={"limit": 200}, headers=reader, timeout=30)
    assert response.status_code == 200, response.text
    entries = response.json()
    assert {e["StudyInstanceUid"] for e in entries} == {my_study}
    assert sorted((e["Action"], e["SopInstanceUid"]) for e in entries) == sorted(
        (action, uids_of(data)[2]) for action in ("create", "delete") for data in mine
    )
    # offset counts its entries only.
    second = httpx.get(sg.url + "/changefeed", params={"offset": 1, "limit": 1}, headers=reader, timeout=30)
    assert second.json() == entries[1:2]
    latest = httpx.get(sg.url + "/changefeed/latest", headers=reader, timeout=30)
    assert latest.json() == entries[-1]


def test_bad_uids_are_400(sg: SecuredGateway, issuer: Issuer) -> None:
    response = httpx.delete(f"{sg.url}/studies/1.02.3", headers=token(issuer, "admin"), timeout=30)
    assert response.status_code == 400


def test_a_deleted_instance_can_be_stored_again(sg: SecuredGateway, issuer: Issuer) -> None:
    instances = factory.ct_series(2, 64, 64, seed=176)
    study, _, sop = uids_of(instances[0])
    other = uids_of(instances[1])[2]
    admin = token(issuer, "admin")
    accept = {**token(issuer, "read"), "Accept": "multipart/related; type=application/dicom"}
    store(sg, issuer, instances)
    assert httpx.delete(f"{sg.url}/studies/{study}", headers=admin, timeout=30).status_code == 204
    wait_until_gone(sg, sop)
    store(sg, issuer, instances[:1])
    assert stored_sops(sg, issuer, study) == [sop]
    assert httpx.get(f"{sg.url}/studies/{study}", headers=accept, timeout=30).status_code == 200
    # Stored again while its objects wait for the grace: the deferred deletion, which takes the
    # instances in series order, finds the first indexed again and keeps its objects; once the
    # second's objects are gone, the first's turn has passed.
    store(sg, issuer, instances[1:])
    assert httpx.delete(f"{sg.url}/studies/{study}", headers=admin, timeout=30).status_code == 204
    store(sg, issuer, instances[:1])
    wait_until_gone(sg, other)
    assert objects_of(sg, sop)
    assert httpx.get(f"{sg.url}/studies/{study}", headers=accept, timeout=30).status_code == 200


def test_deleting_a_copy_cached_from_a_pacs_leaves_the_pacs_alone(
    pacs_gateway_factory: GatewayFactory, orthanc_pacs: OrthancPeer, pacs_data: PacsData
) -> None:
    gw = pacs_gateway_factory([node("orthanc", orthanc_pacs.dicom_port, orthanc_pacs.aet)], delete_grace=GRACE)
    study, series, _ = uids_of(pacs_data.catalog[0])
    in_series = {uids_of(d)[2] for d in pacs_data.catalog if uids_of(d)[1] == series}
    url = f"{gw.url}/studies/{study}/series/{series}"
    assert set(by_sop(retrieve(url))) == in_series
    assert wait_until(lambda: f"retrieved series {series}" in gw.log(), 30), gw.log()[-3000:]
    entries = httpx.get(gw.url + "/changefeed", params={"includeMetadata": "false"}, timeout=30).json()
    assert {(e["SopInstanceUid"], e["Action"], e["Origin"]) for e in entries} == {
        (sop, "create", "pacs:orthanc") for sop in in_series
    }

    response = httpx.delete(url, timeout=30)
    assert response.status_code == 204, response.text
    assert "PACS orthanc" in response.headers["warning"]
    assert "still holds" in response.headers["warning"]
    entries = httpx.get(gw.url + "/changefeed", params={"offset": len(in_series)}, timeout=30).json()
    assert {(e["SopInstanceUid"], e["Action"], e["Origin"]) for e in entries} == {
        (sop, "delete", "delete") for sop in in_series
    }
    # The PACS still has the series: asked again, the gateway fetches it from the PACS anew.
    assert set(by_sop(retrieve(url))) == in_series
    assert gw.log().count(f"retrieving series {series}") == 2
