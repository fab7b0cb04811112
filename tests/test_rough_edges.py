"""Small rough edges a newcomer met (issue #12, finding 10): the start-up log names the DICOMweb
base URL, the base path answers (not a 404 after a redirect), ``--version``, a DICOM reason for a
JPEG-LS frame the encoder cannot make, and RLE Lossless of 32-bit data (PS3.5 Annex G)."""

from __future__ import annotations

import io
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import RLELossless

from gateway import package_version
from gateway.dicom import transcode
from tests import factory
from tests.fixtures_gateway import BASE_PATH, RunningGateway, start_gateway, stop_gateway
from tests.http_helpers import stow, uids_of

TINY = factory.image_instance(np.arange(9, dtype=np.uint16).reshape(3, 3) * 1000, seed=1901)
WIDE = (np.arange(6 * 7, dtype=np.uint32).reshape(6, 7) * 0x01020304 + 0x80000001).astype(np.uint32)
BITS32 = factory.image_instance(WIDE, seed=1902)


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    gateway = start_gateway(tmp_path_factory.mktemp("rough-edges"))
    try:
        assert stow(gateway.url, [TINY, BITS32]).status_code == 200
        yield gateway
    finally:
        stop_gateway(gateway)


def test_start_up_log_names_the_base_url(gw: RunningGateway) -> None:
    deadline = time.monotonic() + 5
    while "DICOMweb base URL" not in gw.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert f"DICOMweb base URL: {gw.url}" in gw.log()
    assert gw.url.endswith(BASE_PATH)


@pytest.mark.parametrize("suffix", ["", "/"])
def test_the_base_path_answers(gw: RunningGateway, suffix: str) -> None:
    response = httpx.get(gw.url + suffix, follow_redirects=False, timeout=10)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["service"] == "dicomweb-gateway"
    assert body["version"] == package_version()
    assert body["base_url"] == gw.url
    assert body["endpoints"]["QIDO-RS"][0] == gw.url + "/studies"


def test_version_flag() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "--version"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"dicomweb-gateway {package_version()}"


def test_jpeg_ls_of_a_tiny_frame_is_refused_in_dicom_terms(gw: RunningGateway) -> None:
    s, se, i = uids_of(TINY)
    url = f"{gw.url}/studies/{s}/series/{se}/instances/{i}/frames/1"
    response = httpx.get(url, headers={"Accept": "image/jls"}, timeout=30)
    assert response.status_code == 406, response.text
    reason = response.json()["reason"]
    assert "3x3 frame cannot be encoded in JPEG-LS Lossless (1.2.840.10008.1.2.4.80)" in reason
    assert "RLE Lossless" in reason
    assert "pyjpegls" not in reason
    assert "\n" not in reason
    rle = httpx.get(url, headers={"Accept": "image/dicom-rle"}, timeout=30)  # the alternative offered works
    assert rle.status_code == 200


def _decode_rle(frame: bytes, rows: int, columns: int) -> np.ndarray:
    """pydicom's own RLE decoder (not pylibjpeg-rle, which encoded it)."""
    decoder = get_decoder(RLELossless)
    arr, _ = decoder.as_array(
        encapsulate([frame]),
        decoding_plugin="pydicom",
        rows=rows,
        columns=columns,
        samples_per_pixel=1,
        bits_allocated=32,
        bits_stored=32,
        pixel_representation=0,
        photometric_interpretation="MONOCHROME2",
        number_of_frames=1,
    )
    return np.asarray(arr)


def test_rle_of_32_bit_data_round_trips(gw: RunningGateway) -> None:
    out = pydicom.dcmread(io.BytesIO(transcode.transcode_instance(BITS32, RLELossless)))
    assert out.file_meta.TransferSyntaxUID == RLELossless
    assert out.BitsAllocated == 32
    assert (out.pixel_array == WIDE).all()
    s, se, i = uids_of(BITS32)
    url = f"{gw.url}/studies/{s}/series/{se}/instances/{i}/frames/1"
    response = httpx.get(url, headers={"Accept": "image/dicom-rle"}, timeout=30)
    assert response.status_code == 200, response.text
    assert response.content[:4] == b"\x04\x00\x00\x00"  # four segments: one per byte of a 32-bit sample
    assert (_decode_rle(response.content, 6, 7) == WIDE).all()
