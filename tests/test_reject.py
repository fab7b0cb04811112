"""Rejection as OHIF sends it (``supportsReject``): POST .../reject/{code}^{scheme} at study,
series and instance level, over a real gateway process with OIDC tokens. A rejection deletes at
once through the DELETE path: the instances leave QIDO and WADO, the audit trail and the change
feed record the code and who rejected, and the same instances can be stored again."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from tests import factory
from tests.fixtures_security import Issuer, JwksServer, SecuredGateway
from tests.http_helpers import uids_of
from tests.test_delete import audited_gateway, store, stored_sops, token

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def sg(tmp_path_factory: pytest.TempPathFactory, jwks_server: JwksServer) -> Iterator[SecuredGateway]:
    with audited_gateway(tmp_path_factory.mktemp("reject"), jwks_server) as running:
        yield running


def feed_of(sg: SecuredGateway, issuer: Issuer, study: str) -> list[dict[str, Any]]:
    response = httpx.get(sg.url + "/changefeed", params={"limit": 200}, headers=token(issuer, "read"), timeout=30)
    assert response.status_code == 200, response.text
    return [e for e in response.json() if e["StudyInstanceUid"] == study]


def test_ohif_rejects_a_series_with_a_percent_encoded_code(sg: SecuredGateway, issuer: Issuer) -> None:
    study = factory.new_uid("reject-series", 1)
    kept = factory.ct_series(1, 64, 64, seed=181, study_uid=study)
    rejected = factory.ct_series(2, 64, 64, seed=182, study_uid=study, series_number=2)
    store(sg, issuer, kept + rejected)
    series = uids_of(rejected[0])[1]
    # As OHIF's data source sends it: the caret percent-encoded, no body.
    url = f"{sg.url}/studies/{study}/series/{series}/reject/113039%5EDCM"
    response = httpx.post(url, headers=token(issuer, "read write admin", sub="radiologist"), timeout=30)
    assert response.status_code == 204, response.text
    assert response.content == b""
    assert stored_sops(sg, issuer, study) == [uids_of(kept[0])[2]]
    metadata = httpx.get(f"{sg.url}/studies/{study}/series/{series}/metadata", headers=token(issuer, "read"))
    assert metadata.status_code == 404
    entries = [e for e in feed_of(sg, issuer, study) if e["Action"] == "delete"]
    assert sorted(e["SopInstanceUid"] for e in entries) == sorted(uids_of(data)[2] for data in rejected)
    assert {(e["Origin"], e["Reason"]) for e in entries} == {("reject", "113039^DCM")}
    events = [orjson.loads(line) for line in sg.extra["audit"].read_bytes().splitlines()]
    (event,) = [e for e in events if e["http"]["path"].endswith("/reject/113039^DCM")]
    assert event["EventIdentification"]["EventActionCode"] == "D"
    assert event["ActiveParticipant"][0]["UserID"] == "jwt:radiologist"
    objects = [o for o in event["ParticipantObjectIdentification"] if o.get("ParticipantObjectDescription")]
    assert {(o["ParticipantObjectDescription"], o["ParticipantObjectDetail"]["RejectionCode"]) for o in objects} == {
        ("rejected", "113039^DCM")
    }
    # Stored again after the rejection: back in QIDO and in the feed as current.
    store(sg, issuer, rejected)
    assert len(stored_sops(sg, issuer, study)) == 3
    latest = [e for e in feed_of(sg, issuer, study) if e["SopInstanceUid"] == uids_of(rejected[0])[2]][-1]
    assert (latest["Action"], latest["State"]) == ("create", "current")


@pytest.mark.parametrize("code", ["113001^DCM", "113037^DCM", "113038^DCM"])
def test_every_known_code_at_study_and_instance_level(sg: SecuredGateway, issuer: Issuer, code: str) -> None:
    instances = factory.ct_series(2, 64, 64, seed=183 + int(code[3:6]))
    store(sg, issuer, instances)
    study, series, sop = uids_of(instances[0])
    admin = token(issuer, "admin")
    # Percent-encoded as OHIF sends it at one level, the caret as is at the other.
    url = f"{sg.url}/studies/{study}/series/{series}/instances/{sop}/reject/{code.replace('^', '%5E')}"
    assert httpx.post(url, headers=admin, timeout=30).status_code == 204
    assert stored_sops(sg, issuer, study) == [uids_of(instances[1])[2]]
    assert httpx.post(f"{sg.url}/studies/{study}/reject/{code}", headers=admin, timeout=30).status_code == 204
    assert stored_sops(sg, issuer, study) == []


def test_refusals(sg: SecuredGateway, issuer: Issuer) -> None:
    instances = factory.ct_series(1, 64, 64, seed=190)
    store(sg, issuer, instances)
    study = uids_of(instances[0])[0]
    admin = token(issuer, "admin")
    for code in ("113040^DCM", "113039^99X", "113039", "%20"):
        response = httpx.post(f"{sg.url}/studies/{study}/reject/{code}", headers=admin, timeout=30)
        assert response.status_code == 400, code
        assert "rejection code" in response.json()["reason"]
    # write alone does not let one reject (a rejection deletes).
    writer = httpx.post(f"{sg.url}/studies/{study}/reject/113039%5EDCM", headers=token(issuer, "read write"))
    assert writer.status_code == 403
    restricted = token(issuer, "admin", {"StudyInstanceUID": ["1.2.3.4"]})
    hidden = httpx.post(f"{sg.url}/studies/{study}/reject/113039%5EDCM", headers=restricted, timeout=30)
    assert hidden.status_code == 404
    assert httpx.post(f"{sg.url}/studies/1.2.3.4/reject/113039%5EDCM", headers=admin).status_code == 404
    assert stored_sops(sg, issuer, study) == [uids_of(instances[0])[2]]
