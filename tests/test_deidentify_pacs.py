"""De-identified views of what a PACS holds (issue #18 part 4): a real Orthanc holds a series the
gateway has never stored; a principal marked for de-identified views finds it by QIDO and
retrieves it by WADO-RS under the replacement UIDs, each instance de-identified and sent as it
arrives from the PACS (as a plain answer is), not once the whole retrieve is over."""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest

from gateway.dicom.deidentify import Deidentifier
from tests.fixtures_pacs import GatewayFactory, PacsData, node
from tests.fixtures_security import bearer, create_api_key
from tests.http_helpers import split_multipart, uids_of
from tests.peers.orthanc import OrthancPeer

pytestmark = pytest.mark.timeout(180)

SITE_KEY = "site-secret-for-pacs-tests"
AS_STORED = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}


def _replacement(rows: list[dict[str, Any]], tag: str, uid: str) -> str:
    wanted = Deidentifier(SITE_KEY.encode()).uid(uid)
    found = [row[tag]["Value"][0] for row in rows if row[tag]["Value"][0] == wanted]
    assert found, f"{uid} is not among the de-identified rows"
    return wanted


def test_a_pacs_series_is_streamed_deidentified_as_it_arrives(
    pacs_gateway_factory: GatewayFactory, orthanc_pacs: OrthancPeer, pacs_data: PacsData, tmp_path: Path
) -> None:
    keys = tmp_path / "keys.json"
    deid = bearer(create_api_key(keys, "research", "read", deidentify="basic"))
    gw = pacs_gateway_factory(
        [node("orthanc", orthanc_pacs.dicom_port, orthanc_pacs.aet, dimse_timeout=10)],
        auth={"api_keys_file": str(keys)},
        deidentify={"key": SITE_KEY},
    )
    study, series = pacs_data.series_uids
    # As a viewer finds it: the PACS's studies, then the series of one (replacement UIDs).
    found = httpx.get(f"{gw.url}/pacs/orthanc/studies", headers=deid, timeout=60)
    assert found.status_code == 200, found.text
    study_id = _replacement(found.json(), "0020000D", study)
    found = httpx.get(f"{gw.url}/pacs/orthanc/studies/{study_id}/series", headers=deid, timeout=60)
    assert found.status_code == 200, found.text
    series_id = _replacement(found.json(), "0020000E", series)

    total = len(pacs_data.series)
    started = time.monotonic()
    url = f"{gw.url}/pacs/orthanc/studies/{study_id}/series/{series_id}"
    with httpx.stream("GET", url, headers={**deid, **AS_STORED}, timeout=120) as response:
        assert response.status_code == 200, response.read()
        chunks = response.iter_raw()
        first = next(chunks)
        first_at = time.monotonic() - started
        cached_at_first_byte = sum(1 for _ in (gw.data_dir / "objects").rglob("*.dcm"))
        body = first + b"".join(chunks)
    assert cached_at_first_byte < total, "the response started only after the whole series was received"
    assert first_at < time.monotonic() - started

    parts = split_multipart(
        httpx.Response(200, headers={"content-type": response.headers["content-type"]}, content=body)
    )
    assert len(parts) == total
    originals = {uids_of(data)[2]: pydicom.dcmread(io.BytesIO(data)) for data in pacs_data.series}
    by_replacement = {Deidentifier(SITE_KEY.encode()).uid(sop): ds for sop, ds in originals.items()}
    for _, data in parts:
        ds = pydicom.dcmread(io.BytesIO(data))
        original = by_replacement[ds.SOPInstanceUID]  # a replacement UID, never the original
        assert ds.PatientIdentityRemoved == "YES"
        assert ds.StudyInstanceUID == study_id
        assert ds.PatientName == ""  # Z in the profile
        assert ds.AccessionNumber == ""
        assert "STREAM" not in data.decode("latin-1")  # the patient's name nowhere in the instance
        assert ds.PixelData == original.PixelData  # the pixels as the PACS holds them
