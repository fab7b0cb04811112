"""The real OHIF viewer rejects a series through its own DICOMweb data source (issue #16), in
Debian's headless Chromium, against a gateway with OIDC tokens from another origin.

OHIF 3.13.2 with ``supportsReject: true`` gives its data source ``reject.series``; no menu item
of the viewer calls it. As shipped, the call fails in the browser before any request
("getAuthrorizationHeader is not a function": the data source binds its authorization helper
before defining it), which the test checks so that an OHIF upgrade that fixes it is noticed.
OHIF's own ``reject.series``, bound again with that helper (tests/ohif_driver.js,
``rejectSeries``), then sends its request: ``POST .../series/{series}/reject/113001%5EDCM`` with
the user's bearer token, preflighted.

Checks: the gateway answers that POST 204 (the only POST the page sent); the series is gone
from QIDO; reopened, the viewer's study browser shows only the kept series and renders it; the
study stays in the study list with the kept series' instance count.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests import factory
from tests.fixtures_gateway import stop_gateway
from tests.fixtures_security import Issuer, JwksServer, bearer, oidc_config, start_secured_gateway
from tests.http_helpers import stow_body, uids_of
from tests.peers import ohif
from tests.test_ohif import CORS, DRIVER, DRIVER_TIMEOUT

pytestmark = pytest.mark.timeout(600)

PATIENT = factory.Patient("REJECT^RITA", "OHIF-R")
STUDY = factory.new_uid("study", 191)
KEPT = factory.ct_series(
    3,
    128,
    128,
    study_uid=STUDY,
    seed=191,
    patient=PATIENT,
    patient_name=PATIENT.name,
    study_description="CT REJECT",
    series_description="AXIAL KEPT",
)
REJECTED = factory.ct_series(
    2,
    128,
    128,
    study_uid=STUDY,
    seed=192,
    patient=PATIENT,
    patient_name=PATIENT.name,
    study_description="CT REJECT",
    series_description="AXIAL REJECTED",
    series_number=2,
)
# What OHIF 3.13.2's data source sends: Rejected for Quality Reasons (PS3.16 CID 7011), the caret
# percent-encoded.
REJECT_SUFFIX = "/reject/113001%5EDCM"


def _series_in_study(url: str, headers: dict[str, str]) -> list[str]:
    response = httpx.get(f"{url}/studies/{STUDY}/series", headers=headers, timeout=30)
    assert response.status_code in (200, 204), response.text
    return sorted(row["0020000E"]["Value"][0] for row in response.json()) if response.status_code == 200 else []


def test_ohif_rejects_a_series_through_its_data_source(
    viewer_dist: Path, tmp_path: Path, jwks_server: JwksServer, issuer: Issuer
) -> None:
    server = ohif.ViewerServer(viewer_dist, "")
    sg = start_secured_gateway(tmp_path, oidc_config(jwks_server.url, extra=CORS.format(origin=server.url)))
    try:
        server.config_js = ohif.app_config(sg.url, supports_reject=True).encode()
        body, content_type = stow_body(KEPT + REJECTED)
        headers = {**bearer(issuer.token(scope="write", sub="uploader")), "Content-Type": content_type}
        assert httpx.post(sg.url + "/studies", content=body, headers=headers, timeout=60).status_code == 200
        reader = bearer(issuer.token(scope="read", sub="checker"))
        kept, rejected = uids_of(KEPT[0])[1], uids_of(REJECTED[0])[1]
        assert _series_in_study(sg.url, reader) == sorted([kept, rejected])

        payload = {
            "viewer": server.url,
            "chromium": ohif.CHROMIUM,
            "flags": list(ohif.CHROMIUM_FLAGS),
            # Rejecting deletes, so it takes the admin scope (docs/security.md).
            "token": issuer.token(scope="read admin", sub="radiologist"),
            "open": [STUDY],
            "reject": {"study": STUDY, "series": rejected},
            "list": True,
            "expectRows": 1,
            "timeoutMs": 60_000,
        }
        report = ohif.run_driver(DRIVER, payload, timeout=DRIVER_TIMEOUT)
        context = f"report: {report}\ngateway log (tail):\n{sg.gw.log()[-4000:]}"
        assert report.get("error") is None, context
        assert report["bad"] == [], "4xx/5xx responses: " + context
        assert report["failed"] == [], "failed requests: " + context

        (opened,) = report["opened"]
        assert sorted(opened["thumbnails"]) == ["AXIAL KEPT", "AXIAL REJECTED"], context
        outcome = report["reject"]
        # As shipped, OHIF 3.13.2 fails before sending anything.
        assert "getAuthrorizationHeader is not a function" in outcome["shipped"], context
        assert outcome["postsBefore"] == 0, context
        # Its own reject.series with the helper bound: one POST, with the token, answered 204.
        assert outcome["completed"] == "resolved", context
        (post,) = report["posts"]
        assert post["url"] == f"{sg.url}/studies/{STUDY}/series/{rejected}{REJECT_SUFFIX}", context
        assert post["status"] == 204, context
        assert post["authorization"] == f"Bearer {payload['token']}", context

        assert _series_in_study(sg.url, reader) == [kept]
        reopened = outcome["reopened"]
        assert reopened["thumbnails"] == ["AXIAL KEPT"], context
        assert reopened["canvas"]["std"] > 10, reopened
        (row,) = report["rows"]
        assert row[0] == "REJECT, RITA", row
        assert row[5] == str(len(KEPT)), row  # the study list's instance count
    finally:
        server.close()
        stop_gateway(sg.gw)
