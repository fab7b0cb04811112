"""WADO-URI (issue #5, part 5; PS3.18 9), following the examples of PS3.18 9 with this test's
UIDs: a plain JPEG, a scaled and windowed region with a list of content types, an SR asked as
HTML, and a DICOM object in a named transfer syntax (de-identification refused)."""

from __future__ import annotations

import io
from collections.abc import Iterator

import httpx
import numpy as np
import pydicom
import pytest
from PIL import Image

from gateway.dicom.media import EXPLICIT_VR_LITTLE_ENDIAN, JPEG_BASELINE_8BIT, JPEG_LS_LOSSLESS
from tests import factory
from tests.fixtures_gateway import RunningGateway, start_gateway, stop_gateway
from tests.http_helpers import stow, uids_of

CT = factory.image_instance(
    (factory.gradient(100, 100, 2000)).astype(np.int16),
    seed=61,
    bits_stored=12,
    attrs={"RescaleIntercept": -1024, "RescaleSlope": 1, "WindowCenter": 40, "WindowWidth": 400},
    modality="CT",
)
CT_JLS = factory.ct_instance(seed=62, rows=64, cols=64)
MONO8 = factory.image_instance(
    np.stack([factory.gradient(32, 48, 255 - 60 * f) for f in range(3)]).astype(np.uint8),
    attrs={"WindowCenter": 128, "WindowWidth": 256},
)
SR = factory.sr_instance(seed=63)


def _jls(data: bytes) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(data))
    factory._compress(ds, JPEG_LS_LOSSLESS, "")
    return factory.to_part10_bytes(ds, JPEG_LS_LOSSLESS)


CT_JLS = _jls(CT_JLS)


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    gateway = start_gateway(tmp_path_factory.mktemp("wado-uri"))
    try:
        assert stow(gateway.url, [CT, CT_JLS, MONO8, SR]).status_code == 200
        yield gateway
    finally:
        stop_gateway(gateway)


def wado(gw: RunningGateway, data: bytes, query: str = "") -> httpx.Response:
    s, se, i = uids_of(data)
    url = f"{gw.url}/wado?requestType=WADO&studyUID={s}&seriesUID={se}&objectUID={i}" + query
    return httpx.get(url, timeout=30)


def picture(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.asarray(Image.open(io.BytesIO(response.content)))


def test_example_plain_image_is_a_jpeg(gw: RunningGateway) -> None:
    """PS3.18 9: ``?requestType=WADO&studyUID=..&seriesUID=..&objectUID=..``."""
    response = wado(gw, CT)
    assert response.headers["content-type"] == "image/jpeg"
    assert picture(response).shape == (100, 100)


def test_example_region_scaled_and_windowed(gw: RunningGateway) -> None:
    """PS3.18 9: ``contentType=image/jp2;level=1,image/jpeg;q=0.5&annotation=patient,technique
    &columns=400&rows=300&region=0.3,0.4,0.5,0.5&windowCenter=-1000&windowWidth=2500``."""
    query = (
        "&contentType=image%2Fjp2;level=1,image%2Fjpeg;q=0.5&annotation=patient,technique"
        "&columns=400&rows=300&region=0.3,0.4,0.5,0.5&windowCenter=-1000&windowWidth=2500"
    )
    response = wado(gw, CT, query)
    assert response.headers["content-type"] == "image/jpeg"  # JPEG 2000 is not produced: the next choice
    got = picture(response)
    # region: columns 30..50, rows 40..50 of 100 x 100 (20 x 10), scaled to fit 400 x 300
    assert got.shape == (200, 400)
    # the same region as PNG: exact values, from the window given (HU = stored - 1024)
    exact = picture(wado(gw, CT, query.replace("image%2Fjpeg;q=0.5", "image%2Fpng") + "&columns=20&rows=10"))
    hu = factory.gradient(100, 100, 2000)[40:50, 30:50].astype(np.float64) - 1024
    expected = np.clip((hu - (-1000 - 0.5)) / (2500 - 1) + 0.5, 0, 1) * 255
    assert np.abs(exact.astype(np.float64) - expected).max() <= 1
    assert abs(got.mean() - exact.mean()) < 3


def test_example_sr_as_html_is_not_acceptable(gw: RunningGateway) -> None:
    """PS3.18 9: an SR asked as ``contentType=text/html``: not produced here (406); as DICOM it is."""
    assert wado(gw, SR, "&contentType=text%2Fhtml").status_code == 406
    response = wado(gw, SR)  # no pixel data: application/dicom by default
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/dicom")
    assert pydicom.dcmread(io.BytesIO(response.content)).SOPInstanceUID == uids_of(SR)[2]


def test_example_dicom_in_a_named_transfer_syntax(gw: RunningGateway) -> None:
    """PS3.18 9: ``contentType=application/dicom&anonymize=yes&transferSyntax=1.2.840.10008.1.2.4.50``."""
    query = f"&contentType=application%2Fdicom&anonymize=yes&transferSyntax={JPEG_BASELINE_8BIT}"
    assert wado(gw, MONO8, query).status_code == 406  # no de-identification here
    response = wado(gw, MONO8, query.replace("&anonymize=yes", ""))
    assert response.status_code == 200, response.text
    ds = pydicom.dcmread(io.BytesIO(response.content))
    assert ds.file_meta.TransferSyntaxUID == JPEG_BASELINE_8BIT
    assert ds.LossyImageCompression == "01"
    # JPEG Baseline is 8-bit only
    assert wado(gw, CT, query.replace("&anonymize=yes", "")).status_code == 406


def test_dicom_defaults_to_explicit_vr_little_endian(gw: RunningGateway) -> None:
    response = wado(gw, CT_JLS, "&contentType=application/dicom")
    assert response.status_code == 200
    assert response.headers["content-type"] == f"application/dicom; transfer-syntax={EXPLICIT_VR_LITTLE_ENDIAN}"
    ds = pydicom.dcmread(io.BytesIO(response.content))
    assert ds.file_meta.TransferSyntaxUID == EXPLICIT_VR_LITTLE_ENDIAN
    assert np.array_equal(ds.pixel_array, pydicom.dcmread(io.BytesIO(CT_JLS)).pixel_array)
    as_stored = wado(gw, CT_JLS, f"&contentType=application/dicom&transferSyntax={JPEG_LS_LOSSLESS}")
    assert as_stored.content == CT_JLS
    jls = wado(gw, CT, f"&contentType=application/dicom&transferSyntax={JPEG_LS_LOSSLESS}")
    assert np.array_equal(
        pydicom.dcmread(io.BytesIO(jls.content)).pixel_array, pydicom.dcmread(io.BytesIO(CT)).pixel_array
    )


def test_frames_sizes_and_png(gw: RunningGateway) -> None:
    first = picture(wado(gw, MONO8, "&contentType=image/png"))
    third = picture(wado(gw, MONO8, "&contentType=image/png&frameNumber=3"))
    assert first.shape == third.shape == (32, 48)
    assert first.mean() != third.mean()
    assert picture(wado(gw, MONO8, "&contentType=image/png&rows=16")).shape == (16, 24)
    assert picture(wado(gw, MONO8, "&contentType=image/png&columns=96")).shape == (64, 96)
    low = wado(gw, CT, "&imageQuality=5")
    high = wado(gw, CT, "&imageQuality=100")
    assert len(low.content) < len(high.content)


@pytest.mark.parametrize(
    ("query", "status"),
    [
        ("&windowCenter=40", 400),
        ("&frameNumber=0", 400),
        ("&frameNumber=4", 404),
        ("&region=0.5,0.5,0.4,0.9", 400),
        ("&imageQuality=0", 400),
        ("&rows=-3", 400),
        ("&contentType=video/mpeg", 406),
        ("&contentType=application/dicom&transferSyntax=1.2.3.999", 406),
        ("&contentType=application/dicom&transferSyntax=not-a-uid", 400),
    ],
)
def test_errors(gw: RunningGateway, query: str, status: int) -> None:
    assert wado(gw, MONO8, query).status_code == status


def test_required_parameters_and_unknown_objects(gw: RunningGateway) -> None:
    s, se, i = uids_of(CT)
    base = f"{gw.url}/wado"
    assert httpx.get(f"{base}?studyUID={s}&seriesUID={se}&objectUID={i}").status_code == 400
    assert httpx.get(f"{base}?requestType=WADO&studyUID={s}&seriesUID={se}").status_code == 400
    assert httpx.get(f"{base}?requestType=WADO&studyUID={s}&seriesUID={se}&objectUID=1.2.3").status_code == 404
    assert httpx.get(f"{base}?requestType=WADO&studyUID=x&seriesUID={se}&objectUID={i}").status_code == 400
