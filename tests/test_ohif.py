"""The real OHIF viewer against the gateway (issue #5, part 1), in Debian's headless Chromium.

OHIF 3.13.2's prebuilt ``dist/`` is served next to a gateway on free ports (tests/peers/ohif.py)
and driven with playwright-core (tests/ohif_driver.js). Three deployments, same checks:

* same origin: a reverse proxy serves the viewer and passes ``/dicomweb`` to the gateway;
* cross origin: the viewer on one port, the gateway on another with a CORS allowlist naming
  the viewer (and ``Cross-Origin-Resource-Policy``, since the viewer sets COEP);
* bearer token: the cross-origin setup with OIDC authentication on, OHIF given the token
  (its ``?token=`` parameter), so every request is preflighted and carries it.

Checks: the study list shows every uploaded study with patient name, date, modalities,
description and instance count; the patient filter finds a study typed in lower case;
opening a study renders real pixels (read back from the canvas) for an uncompressed CT, a
JPEG-LS and a JPEG 2000 lossless CT, and a multi-frame instance; and not one response is a
4xx or 5xx. The test installs what it needs (Chromium from apt, the npm packages into
``.peers/``) when missing.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless

from tests import factory
from tests.fixtures_gateway import RunningGateway, start_gateway, stop_gateway
from tests.fixtures_security import Issuer, JwksServer, bearer, oidc_config, start_secured_gateway
from tests.http_helpers import stow_body
from tests.peers import ohif

pytestmark = pytest.mark.timeout(600)
DRIVER = Path(__file__).with_name("ohif_driver.js")
DRIVER_TIMEOUT = 240  # seconds for one whole browser session


@dataclass(frozen=True)
class Study:
    uid: str
    patient: str  # as OHIF shows it
    modality: str
    description: str
    instances: int
    data: tuple[bytes, ...]


def _compressed_series(seed: int, syntax: str, n: int, **identity: Any) -> tuple[bytes, ...]:
    out = []
    for i in range(n):
        ds = factory.ct_dataset(seed=seed, rows=128, cols=128, index=i, **identity)
        factory._compress(ds, syntax, "" if syntax == JPEGLSLossless else "pylibjpeg")
        out.append(factory.to_part10_bytes(ds, syntax))
    return tuple(out)


def _studies() -> list[Study]:
    def who(name: str, pid: str) -> factory.Patient:
        return factory.Patient(name, pid)

    ct = tuple(
        factory.ct_series(
            5,
            128,
            128,
            seed=41,
            patient=who("SMITH^ANNA", "OHIF-1"),
            patient_name="SMITH^ANNA",
            study_description="CT HEAD",
            series_description="AXIAL NATIVE",
        )
    )
    jls = _compressed_series(
        42,
        JPEGLSLossless,
        3,
        patient=who("JONES^BOB", "OHIF-2"),
        study_description="CT JPEG-LS",
        series_description="AXIAL JLS",
    )
    j2k = _compressed_series(
        43,
        JPEG2000Lossless,
        3,
        patient=who("MILLER^DAN", "OHIF-3"),
        study_description="CT JPEG 2000",
        series_description="AXIAL J2K",
    )
    xa = (factory.multiframe_xa(seed=44, frames=12, rows=128, cols=128, patient=who("BROWN^CARL", "OHIF-4")),)
    return [
        Study(factory.new_uid("study", 41), "SMITH, ANNA", "CT", "CT HEAD", 5, ct),
        Study(factory.new_uid("study", 42), "JONES, BOB", "CT", "CT JPEG-LS", 3, jls),
        Study(factory.new_uid("study", 43), "MILLER, DAN", "CT", "CT JPEG 2000", 3, j2k),
        Study(factory.new_uid("study", 44), "BROWN, CARL", "XA", "CORONARY ANGIO", 1, xa),
    ]  # fmt: skip


STUDIES = _studies()


def _upload(url: str, headers: dict[str, str] | None = None) -> None:
    body, content_type = stow_body([d for s in STUDIES for d in s.data])
    response = httpx.post(
        url + "/studies", content=body, headers={**(headers or {}), "Content-Type": content_type}, timeout=120
    )
    assert response.status_code == 200, response.text


def _drive(viewer: str, *, token: str | None = None, studies: Sequence[Study] = STUDIES) -> dict[str, Any]:
    payload = {
        "viewer": viewer,
        "chromium": ohif.CHROMIUM,
        "flags": list(ohif.CHROMIUM_FLAGS),
        "token": token,
        "open": [s.uid for s in studies],
        "list": True,
        "expectRows": len(studies),
        "filter": {"text": "smith", "expect": "SMITH, ANNA"},
        "timeoutMs": 60_000,
    }
    return ohif.run_driver(DRIVER, payload, timeout=DRIVER_TIMEOUT)


def _check(report: dict[str, Any], gateway_log: str, studies: Sequence[Study] = STUDIES) -> None:
    context = f"report: {report}\ngateway log (tail):\n{gateway_log[-4000:]}"
    assert report.get("error") is None, context
    assert report["bad"] == [], "4xx/5xx responses: " + context
    assert report["failed"] == [], "failed requests: " + context
    # The study list: every study with name, date, modalities, description and count.
    rows = {row[0]: row for row in report["rows"]}
    assert set(rows) == {s.patient for s in studies}, context
    for study in studies:
        _name, date, modalities, description, _accession, count = rows[study.patient][:6]
        assert date.startswith("15-Jan-2024"), rows[study.patient]
        assert modalities == study.modality, rows[study.patient]
        assert description == study.description, rows[study.patient]
        assert count == str(study.instances), rows[study.patient]
    # The patient filter typed in lower case.
    assert [r[0] for r in report["filtered"]] == ["SMITH, ANNA"], context
    # Real pixels for every study: uncompressed CT, JPEG-LS, JPEG 2000 and multi-frame.
    assert [o["study"] for o in report["opened"]] == [s.uid for s in studies]
    for opened in report["opened"]:
        canvas = opened["canvas"]
        assert canvas["std"] > 10, opened
        assert canvas["nonBlack"] > 0.02, opened
    print({s.description: o["firstImageMs"] for s, o in zip(studies, report["opened"], strict=True)})


@pytest.fixture
def same_origin(viewer_dist: Path, tmp_path: Path) -> Iterator[tuple[ohif.ViewerServer, RunningGateway]]:
    gw = start_gateway(tmp_path)
    server = ohif.ViewerServer(viewer_dist, "", proxy=("/dicomweb", gw.root))
    server.config_js = ohif.app_config(server.url + "/dicomweb").encode()
    try:
        _upload(gw.url)
        yield server, gw
    finally:
        server.close()
        stop_gateway(gw)


def test_ohif_same_origin(same_origin: tuple[ohif.ViewerServer, RunningGateway]) -> None:
    server, gw = same_origin
    _check(_drive(server.url), gw.log())


CORS = '[cors]\norigins = ["{origin}"]\ncorp = "cross-origin"\nmax_age = 600\n'


def test_ohif_cross_origin(viewer_dist: Path, tmp_path: Path) -> None:
    server = ohif.ViewerServer(viewer_dist, "")
    config = tmp_path / "gateway.toml"
    config.write_text(CORS.format(origin=server.url))
    gw = start_gateway(tmp_path, extra_args=("--config", str(config)))
    try:
        server.config_js = ohif.app_config(gw.url).encode()
        _upload(gw.url)
        _check(_drive(server.url), gw.log())
    finally:
        server.close()
        stop_gateway(gw)


# Cornerstone3D's sequential stages with byte ranges (docs/dicomweb.md, "Progressive loading in
# OHIF"): the first 64 KiB of each frame, then the rest. ``accept=`` makes the answer a single-part
# frame (the loader's own Accept header asks for multipart, which ignores Range).
BYTE_RANGE_STAGES = {
    "$set": {
        "stages": [
            {"id": "lossySequential", "retrieveType": "singleFast"},
            {"id": "finalSequential", "retrieveType": "singleFinal"},
        ],
        "retrieveOptions": {
            "singleFast": {"rangeIndex": 0, "chunkSize": 65536, "urlArguments": "accept=image/jls"},
            "singleFinal": {"rangeIndex": -1, "urlArguments": "accept=image/jls"},
        },
    }
}


def test_ohif_progressive_byte_ranges_cross_origin(viewer_dist: Path, tmp_path: Path) -> None:
    """OHIF with byte-range stages, from another origin: every frame request carries a Range and
    the ``accept`` query parameter, is answered 206 with Content-Range, and the images render
    (uncompressed, JPEG 2000 and multi-frame transcoded to JPEG-LS, JPEG-LS as stored). The frames are
    smaller than the first range, so one request brings each whole; partial decoding of the first
    bytes is for HTJ2K frames only (Cornerstone3D decodes no other syntax from a prefix)."""
    server = ohif.ViewerServer(viewer_dist, "")
    config = tmp_path / "gateway.toml"
    config.write_text(CORS.format(origin=server.url))
    gw = start_gateway(tmp_path, extra_args=("--config", str(config)))
    try:
        server.config_js = ohif.app_config(gw.url, stack_retrieve_options=BYTE_RANGE_STAGES).encode()
        _upload(gw.url)
        report = _drive(server.url)
        _check(report, gw.log())
        ranged = report["ranged"]
        assert ranged, report
        for line in ranged:
            status, range_header, unit, span, url = line.split(" ")
            assert (status, range_header, unit) == ("206", "bytes=0-65535", "bytes"), line
            first_last, length = span.split("/")
            assert first_last == f"0-{int(length) - 1}", line  # the whole frame: smaller than the range
            assert "/frames/" in url, line
            assert url.endswith("?accept=image/jls"), line
    finally:
        server.close()
        stop_gateway(gw)


def test_ohif_with_a_bearer_token(viewer_dist: Path, tmp_path: Path, jwks_server: JwksServer, issuer: Issuer) -> None:
    server = ohif.ViewerServer(viewer_dist, "")
    sg = start_secured_gateway(tmp_path, oidc_config(jwks_server.url, extra=CORS.format(origin=server.url)))
    try:
        server.config_js = ohif.app_config(sg.url).encode()
        _upload(sg.url, bearer(issuer.token(scope="write", sub="uploader")))
        # Without the token the gateway refuses the viewer (so the run below proves OHIF sent it).
        assert httpx.get(sg.url + "/studies", headers={"Origin": server.url}).status_code == 401
        token = issuer.token(scope="read", sub="ohif-user")
        _check(_drive(server.url, token=token), sg.gw.log())
    finally:
        server.close()
        stop_gateway(sg.gw)


def test_ohif_from_a_pacs(viewer_dist: Path, tmp_path: Path, pacs_gateway_factory: Any, scp_port: int) -> None:
    """The studies live only in a PACS (Orthanc, by DIMSE): QIDO by C-FIND, the opened study
    retrieved by C-GET into the gateway's cache, its frames served from there.

    The JPEG 2000 study included: Orthanc 1.10's DCMTK has no JPEG 2000 codec, so it can only
    send it as stored, which the gateway's C-GET allows by proposing a JPEG 2000 context for the
    study's SOP Classes (gateway.adapters.dimse_contexts).
    """
    from tests.fixtures_pacs import GATEWAY_AET, load_orthanc, node
    from tests.peers.orthanc import run_orthanc

    with run_orthanc(tmp_path / "orthanc", gateway_aet=GATEWAY_AET, gateway_port=scp_port) as orthanc:
        studies = list(STUDIES)
        assert any(s.description == "CT JPEG 2000" for s in studies)
        load_orthanc(orthanc, [d for s in studies for d in s.data])
        gw = pacs_gateway_factory([node("orthanc", orthanc.dicom_port, orthanc.aet, dimse_timeout=20)])
        server = ohif.ViewerServer(viewer_dist, "", proxy=("/dicomweb", gw.root))
        server.config_js = ohif.app_config(server.url + "/dicomweb").encode()
        try:
            _check(_drive(server.url, studies=studies), gw.log(), studies)
        finally:
            server.close()


def test_ohif_opens_deidentified_studies(
    viewer_dist: Path, tmp_path: Path, jwks_server: JwksServer, issuer: Issuer
) -> None:
    """A token with the de-identification claim (docs/security.md): OHIF lists the studies under
    their replacement UIDs without the patients' names and opens each with real pixels."""
    from gateway.dicom.deidentify import Deidentifier

    server = ohif.ViewerServer(viewer_dist, "")
    key = "ohif-deidentify-key"
    extra = 'deidentify_claim = "deid"\n' + CORS.format(origin=server.url) + f'[deidentify]\nkey = "{key}"\n'
    sg = start_secured_gateway(tmp_path, oidc_config(jwks_server.url, extra=extra))
    try:
        server.config_js = ohif.app_config(sg.url).encode()
        _upload(sg.url, bearer(issuer.token(scope="write", sub="uploader")))
        token = issuer.token(scope="read", sub="research", deid="basic")
        mapped = [Deidentifier(key.encode()).uid(s.uid) for s in STUDIES]
        payload = {
            "viewer": server.url,
            "chromium": ohif.CHROMIUM,
            "flags": list(ohif.CHROMIUM_FLAGS),
            "token": token,
            "open": mapped,
            "list": True,
            "expectRows": len(STUDIES),
            "timeoutMs": 60_000,
        }
        report = ohif.run_driver(DRIVER, payload, timeout=DRIVER_TIMEOUT)
        context = f"report: {report}\ngateway log (tail):\n{sg.gw.log()[-4000:]}"
        assert report.get("error") is None, context
        assert report["bad"] == [], "4xx/5xx responses: " + context
        assert report["failed"] == [], "failed requests: " + context
        assert len(report["rows"]) == len(STUDIES), context
        shown = str(report["rows"])
        for study in STUDIES:
            assert study.patient not in shown, shown
        assert [o["study"] for o in report["opened"]] == mapped
        for opened in report["opened"]:
            assert opened["canvas"]["std"] > 10, opened
            assert opened["canvas"]["nonBlack"] > 0.02, opened
    finally:
        server.close()
        stop_gateway(sg.gw)
