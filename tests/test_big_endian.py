"""An instance stored in Explicit VR Big Endian (1.2.840.10008.1.2.2, retired but still sent by
old modalities) is accepted by STOW and served converted to little endian by every retrieve
that does not ask for it as stored (issue #12, finding 8): WADO-RS, WADO-URI, frames and
rendered. The pixels and an OW overlay are compared with the source, decoded independently."""

from __future__ import annotations

import io
from collections.abc import Iterator

import httpx
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.encaps import encapsulate
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, RLELossless

from gateway.dicom import transcode
from tests import factory
from tests.fixtures_gateway import RunningGateway, start_gateway, stop_gateway
from tests.http_helpers import split_multipart, stow, uids_of

ROWS, COLS = 24, 40  # not square: a transposed image would not match


def big_endian_ct() -> tuple[bytes, np.ndarray, np.ndarray]:
    """A CT with 16-bit signed OW pixel data and a 1-bit OW overlay, in Explicit VR Big Endian,
    and the pixel and overlay arrays it holds."""
    ds = factory.ct_dataset(seed=1801, rows=ROWS, cols=COLS)
    pixels = np.frombuffer(ds.PixelData, dtype="<i2").reshape(ROWS, COLS).copy()
    pixels[0, :4] = [-1024, -1, 0x0123, 0x07FF]  # byte patterns a missing or double swap would change
    overlay = np.zeros((ROWS, COLS), dtype=np.uint8)
    overlay[2:10, 3:30] = 1
    # pydicom writes OB/OW values as given: big-endian words are made here (PS3.5 7.3).
    ds.PixelData = pixels.astype(">i2").tobytes()
    ds["PixelData"].VR = "OW"
    packed = np.packbits(overlay.ravel(), bitorder="little")  # bit 0 of byte 0 is the first pixel
    ds.add_new(0x60000010, "US", ROWS)
    ds.add_new(0x60000011, "US", COLS)
    ds.add_new(0x60000040, "CS", "G")
    ds.add_new(0x60000050, "SS", [1, 1])
    ds.add_new(0x60000100, "US", 1)
    ds.add_new(0x60000102, "US", 0)
    ds.add_new(0x60003000, "OW", np.frombuffer(packed.tobytes(), dtype="<u2").astype(">u2").tobytes())
    data = factory.to_part10_bytes(ds, ExplicitVRBigEndian)
    check = pydicom.dcmread(io.BytesIO(data))
    assert check.file_meta.TransferSyntaxUID == ExplicitVRBigEndian
    assert (check.pixel_array == pixels).all()  # the source, decoded by pydicom itself
    # pydicom's overlay reader ignores the byte order, so the words are undone by hand here.
    words = np.frombuffer(check[0x60003000].value, dtype=">u2").astype("<u2").tobytes()
    bits = np.unpackbits(np.frombuffer(words, dtype=np.uint8), bitorder="little")[: ROWS * COLS]
    assert (bits.reshape(ROWS, COLS) == overlay).all()
    return data, pixels, overlay


BE_CT, PIXELS, OVERLAY = big_endian_ct()


def test_conversion_to_little_endian_keeps_pixels_and_overlay() -> None:
    out = pydicom.dcmread(io.BytesIO(transcode.instance_to_uncompressed(BE_CT, ExplicitVRLittleEndian)))
    assert out.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert out.SOPInstanceUID == uids_of(BE_CT)[2]
    assert (np.frombuffer(out.PixelData, dtype="<i2").reshape(ROWS, COLS) == PIXELS).all()
    assert (out.pixel_array == PIXELS).all()
    assert (out.overlay_array(0x6000) == OVERLAY).all()
    assert out.RescaleIntercept == -1024
    assert list(out[0x60000050].value) == [1, 1]
    rle = pydicom.dcmread(io.BytesIO(transcode.transcode_instance(BE_CT, RLELossless)))
    assert (rle.pixel_array == PIXELS).all()


def test_colour_by_plane_stays_by_plane() -> None:
    rgb = np.stack([np.full((4, 6), 10 * c + 1, dtype=np.uint16) for c in range(3)], axis=-1)
    rgb[0, 0] = [0x0102, 0x0304, 0x0506]
    ds = pydicom.dcmread(io.BytesIO(factory.image_instance(rgb, photometric="RGB", seed=1802)))
    ds.PlanarConfiguration = 1
    ds.PixelData = np.moveaxis(rgb, -1, 0).astype(">u2").tobytes()
    ds["PixelData"].VR = "OW"
    source = pydicom.Dataset(ds)
    source.file_meta = ds.file_meta
    data = factory.to_part10_bytes(source, ExplicitVRBigEndian)
    out = pydicom.dcmread(io.BytesIO(transcode.instance_to_uncompressed(data, ExplicitVRLittleEndian)))
    assert out.PlanarConfiguration == 1
    assert (np.frombuffer(out.PixelData, dtype="<u2").reshape(3, 4, 6) == np.moveaxis(rgb, -1, 0)).all()


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    gateway = start_gateway(tmp_path_factory.mktemp("big-endian"))
    try:
        response = stow(gateway.url, [BE_CT])
        assert response.status_code == 200, response.text
        yield gateway
    finally:
        stop_gateway(gateway)


def _little_endian_pixels(part: bytes) -> np.ndarray:
    ds = pydicom.dcmread(io.BytesIO(part))
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert (ds.overlay_array(0x6000) == OVERLAY).all()
    return np.asarray(ds.pixel_array)


def test_wado_rs_default_is_little_endian(gw: RunningGateway) -> None:
    s, se, i = uids_of(BE_CT)
    url = f"{gw.url}/studies/{s}/series/{se}/instances/{i}"
    for accept in ('multipart/related; type="application/dicom"', None):
        headers = {"Accept": accept} if accept else {}
        response = httpx.get(url, headers=headers, timeout=30)
        assert response.status_code == 200, response.text
        ((_, part),) = split_multipart(response)
        if accept:
            assert (_little_endian_pixels(part) == PIXELS).all()
        else:  # no Accept: the stored bytes (PS3.18 8.7.3.5)
            assert part == BE_CT
    as_stored = httpx.get(url, headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})
    assert split_multipart(as_stored)[0][1] == BE_CT


def test_wado_uri_is_little_endian(gw: RunningGateway) -> None:
    s, se, i = uids_of(BE_CT)
    query = f"requestType=WADO&studyUID={s}&seriesUID={se}&objectUID={i}&contentType=application/dicom"
    response = httpx.get(f"{gw.url}/wado?{query}", timeout=30)
    assert response.status_code == 200, response.text
    assert (_little_endian_pixels(response.content) == PIXELS).all()


def test_frames_are_little_endian_pixels(gw: RunningGateway) -> None:
    s, se, i = uids_of(BE_CT)
    url = f"{gw.url}/studies/{s}/series/{se}/instances/{i}/frames/1"
    response = httpx.get(url, headers={"Accept": 'multipart/related; type="application/octet-stream"'}, timeout=30)
    assert response.status_code == 200, response.text
    ((_, frame),) = split_multipart(response)
    assert (np.frombuffer(frame, dtype="<i2").reshape(ROWS, COLS) == PIXELS).all()
    rle = httpx.get(url, headers={"Accept": "image/dicom-rle"}, timeout=30)  # re-encoded from the swapped frame
    assert rle.status_code == 200, rle.text
    decoded, _ = get_decoder(RLELossless).as_array(
        encapsulate([rle.content]),
        rows=ROWS,
        columns=COLS,
        samples_per_pixel=1,
        bits_allocated=16,
        bits_stored=12,
        pixel_representation=1,
        photometric_interpretation="MONOCHROME2",
        number_of_frames=1,
    )
    assert (decoded == PIXELS).all()


def test_rendered_matches_the_source_window(gw: RunningGateway) -> None:
    s, se, i = uids_of(BE_CT)
    url = f"{gw.url}/studies/{s}/series/{se}/instances/{i}/rendered"
    response = httpx.get(url, params={"accept": "image/png", "window": "0,4096,LINEAR_EXACT"}, timeout=30)
    assert response.status_code == 200, response.text
    image = np.asarray(Image.open(io.BytesIO(response.content)).convert("L"), dtype=np.float64)
    # LINEAR_EXACT over [-2048, 2048) of HU = stored - 1024 (PS3.3 C.11.2.1.3.2)
    hu = PIXELS.astype(np.float64) - 1024
    expected = np.clip((hu + 2048) / 4096 * 255, 0, 255)
    assert image.shape == (ROWS, COLS)
    assert np.abs(image - expected).max() <= 1.0
