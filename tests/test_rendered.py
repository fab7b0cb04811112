"""Rendered and thumbnail resources (issue #5, part 2; PS3.18 8.3.5, 10.4.1.1.3): the rendered
pixels of each Photometric Interpretation checked against values computed here from the
standard's formulas (PS3.3 C.11.1-2), the query parameters, representative instances, the
thumbnail cache, and errors."""

from __future__ import annotations

import io
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from PIL import Image

from gateway.dicom import render
from gateway.dicom.media import JPEG_LS_LOSSLESS
from gateway.errors import BadRequest
from tests import factory
from tests.fixtures_gateway import RunningGateway, start_gateway, stop_gateway
from tests.http_helpers import split_multipart, stow, uids_of

ROWS, COLS = 16, 64
STUDY = factory.new_uid("rendered-study")
SERIES = factory.new_uid("rendered-series")


def ramp(top: int) -> np.ndarray:
    return factory.gradient(ROWS, COLS, top)


CT_VALUES = ramp(2000).astype(np.int16)  # stored (12 bits signed); HU = stored - 1024
CT_ATTRS = {"RescaleIntercept": -1024, "RescaleSlope": 1, "WindowCenter": 40, "WindowWidth": 400}
RGB_VALUES = np.stack([ramp(255), np.full((ROWS, COLS), 90), 255 - ramp(255)], axis=-1).astype(np.uint8)


def ybr_of(rgb: np.ndarray) -> np.ndarray:
    """PS3.3 C.7.6.3.1.2 RGB -> YBR_FULL, computed independently of the gateway."""
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = -0.1687 * r - 0.3313 * g + 0.5 * b + 128
    cr = 0.5 * r - 0.4187 * g - 0.0813 * b + 128
    return np.clip(np.rint(np.stack([y, cb, cr], axis=-1)), 0, 255).astype(np.uint8)


def linear(x: np.ndarray, c: float, w: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1, written out as the standard's three cases."""
    y = ((x - (c - 0.5)) / (w - 1) + 0.5) * 255
    y = np.where(x <= c - 0.5 - (w - 1) / 2, 0, y)
    y = np.where(x > c - 0.5 + (w - 1) / 2, 255, y)
    return y


INSTANCES = {
    "ct": factory.image_instance(
        CT_VALUES, seed=1, bits_stored=12, attrs=CT_ATTRS, study_uid=STUDY, series_uid=SERIES, instance_number=1
    ),
    "ct-jls": factory.image_instance(
        CT_VALUES, seed=2, bits_stored=12, attrs=CT_ATTRS, transfer_syntax=JPEG_LS_LOSSLESS, study_uid=STUDY,
        series_uid=SERIES, instance_number=2, sop_uid=factory.new_uid("ct-jls"),
    ),
    "ct-third": factory.image_instance(
        (CT_VALUES // 2).astype(np.int16), seed=3, bits_stored=12, attrs=CT_ATTRS, study_uid=STUDY,
        series_uid=SERIES, instance_number=3, sop_uid=factory.new_uid("ct-third"),
    ),
    "mono1": factory.image_instance(CT_VALUES, photometric="MONOCHROME1", seed=4, bits_stored=12, attrs=CT_ATTRS),
    "plain": factory.image_instance(ramp(1000).astype(np.uint16), seed=5, bits_stored=12),
    "rgb": factory.image_instance(RGB_VALUES, photometric="RGB", seed=7),
    "ybr": factory.image_instance(ybr_of(RGB_VALUES), photometric="YBR_FULL", seed=8),
    "palette": factory.palette_instance(seed=9, rows=ROWS, cols=256),
    "multiframe": factory.image_instance(
        np.stack([np.full((ROWS, COLS), 50 * f, dtype=np.uint8) for f in range(5)]), seed=10,
        attrs={"WindowCenter": 128, "WindowWidth": 256},
    ),
}  # fmt: skip


def _voi_lut_instance() -> bytes:
    """No window; a VOI LUT Sequence mapping stored value v to 4095 - 16 v (an inverting LUT)."""
    from pydicom.dataset import Dataset

    item = Dataset()
    item.LUTDescriptor = [256, 0, 12]
    item.add_new(0x00283006, "US", [max(0, 4095 - 16 * v) for v in range(256)])  # LUT Data
    return factory.image_instance(ramp(255).astype(np.uint16), seed=6, bits_stored=12, attrs={"VOILUTSequence": [item]})


INSTANCES["voilut"] = _voi_lut_instance()


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    gateway = start_gateway(tmp_path_factory.mktemp("rendered"))
    try:
        response = stow(gateway.url, list(INSTANCES.values()))
        assert response.status_code == 200, response.text
        yield gateway
    finally:
        stop_gateway(gateway)


def url(gw: RunningGateway, name: str) -> str:
    s, se, i = uids_of(INSTANCES[name])
    return f"{gw.url}/studies/{s}/series/{se}/instances/{i}"


def image(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.asarray(Image.open(io.BytesIO(response.content)))


def png(gw: RunningGateway, name: str, suffix: str = "/rendered", **params: str) -> np.ndarray:
    response = httpx.get(url(gw, name) + suffix, params=params, headers={"Accept": "image/png"}, timeout=30)
    assert response.headers["content-type"] == "image/png"
    return image(response)


# --- pixel statistics per photometric interpretation -------------------------------------------


def test_monochrome2_applies_rescale_and_the_stored_window(gw: RunningGateway) -> None:
    got = png(gw, "ct")
    assert got.shape == (ROWS, COLS)
    expected = linear(CT_VALUES[0].astype(np.float64) - 1024, 40, 400)
    assert np.abs(got[0].astype(np.float64) - expected).max() <= 1
    assert (got == got[0]).all()  # every row alike
    # HU <= -160 black, >= 240 white: the window of the metadata
    hu = CT_VALUES[0] - 1024
    assert (got[0][hu <= -161] == 0).all()
    assert (got[0][hu >= 241] == 255).all()
    assert 0 < got[0][(hu > -100) & (hu < 200)].min() < got[0][(hu > -100) & (hu < 200)].max() < 255


def test_compressed_storage_renders_the_same(gw: RunningGateway) -> None:
    assert np.array_equal(png(gw, "ct-jls"), png(gw, "ct"))


def test_monochrome1_is_inverted(gw: RunningGateway) -> None:
    assert np.array_equal(png(gw, "mono1"), 255 - png(gw, "ct"))


def test_window_parameter_and_functions(gw: RunningGateway) -> None:
    hu = CT_VALUES[0].astype(np.float64) - 1024
    got = png(gw, "ct", window="500,1000")
    assert np.abs(got[0] - linear(hu, 500, 1000)).max() <= 1
    exact = png(gw, "ct", window="500,1000,linear_exact")
    assert np.abs(exact[0] - np.clip((hu - 500) / 1000 + 0.5, 0, 1) * 255).max() <= 1
    sigmoid = png(gw, "ct", window="500,1000,SIGMOID")
    assert np.abs(sigmoid[0] - 255 / (1 + np.exp(-4 * (hu - 500) / 1000))).max() <= 1


def test_without_window_the_value_range_is_used(gw: RunningGateway) -> None:
    got = png(gw, "plain")[0]
    assert got[0] == 0
    assert got[-1] == 255
    assert (np.diff(got.astype(int)) >= 0).all()


def test_voi_lut_sequence(gw: RunningGateway) -> None:
    got = png(gw, "voilut")[0].astype(np.float64)
    stored = ramp(255)[0]
    expected = np.maximum(0, 4095 - 16 * stored) * 255 / 4095
    assert np.abs(got - expected).max() <= 1


def test_rgb_is_passed_through(gw: RunningGateway) -> None:
    assert np.array_equal(png(gw, "rgb"), RGB_VALUES)


def test_ybr_full_is_converted_to_rgb(gw: RunningGateway) -> None:
    got = png(gw, "ybr").astype(int)
    assert got.shape == RGB_VALUES.shape
    assert np.abs(got - RGB_VALUES.astype(int)).max() <= 2


def test_palette_color(gw: RunningGateway) -> None:
    got = png(gw, "palette")
    index = factory.gradient(ROWS, 256, 255)[0]
    assert np.array_equal(got[0, :, 0], index)
    assert np.array_equal(got[0, :, 1], 255 - index)
    assert (got[..., 2] == 128).all()


def test_jpeg_output_is_close_to_png(gw: RunningGateway) -> None:
    for name in ("ct", "rgb", "palette"):
        response = httpx.get(url(gw, name) + "/rendered", headers={"Accept": "image/jpeg"})
        assert response.headers["content-type"] == "image/jpeg"
        jpeg = image(response).astype(np.float64)
        assert abs(jpeg.mean() - png(gw, name).mean()) < 3
    low = httpx.get(url(gw, "ct") + "/rendered", params={"quality": "5"})
    high = httpx.get(url(gw, "ct") + "/rendered", params={"quality": "100"})
    assert len(low.content) < len(high.content)


def test_default_media_type_and_accept_parameter(gw: RunningGateway) -> None:
    assert httpx.get(url(gw, "ct") + "/rendered").headers["content-type"] == "image/jpeg"
    assert httpx.get(url(gw, "ct") + "/rendered", headers={"Accept": "image/*"}).headers["content-type"] == "image/jpeg"
    # PS3.18 8.3.3.1: the accept query parameter wins over the header
    response = httpx.get(url(gw, "ct") + "/rendered?accept=image/png", headers={"Accept": "image/jpeg"})
    assert response.headers["content-type"] == "image/png"


def test_viewport(gw: RunningGateway) -> None:
    assert png(gw, "ct", viewport="32,32").shape == (8, 32)  # aspect ratio kept
    assert png(gw, "ct", viewport="640,20").shape == (20, 80)
    cropped = png(gw, "rgb", viewport="16,16,0,0,16,16")
    assert cropped.shape == (16, 16, 3)
    assert np.array_equal(cropped, RGB_VALUES[:16, :16])


# --- levels, frames, representative instances -----------------------------------------------


def test_frames_and_multiframe(gw: RunningGateway) -> None:
    assert (png(gw, "multiframe") == 0).all()  # rendered instance: the first frame
    one = png(gw, "multiframe", "/frames/2/rendered")
    four = png(gw, "multiframe", "/frames/5/rendered")
    assert one.mean() < four.mean()
    accept = {"Accept": "multipart/related; type=image/png"}
    response = httpx.get(url(gw, "multiframe") + "/frames/2,5/rendered", headers=accept)
    parts = split_multipart(response)
    assert [h["content-type"] for h, _ in parts] == ["image/png"] * 2
    assert parts[1][0]["content-location"].endswith("/frames/5/rendered")
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(parts[0][1]))), one)
    # several frames in one single-part image: not possible
    assert httpx.get(url(gw, "multiframe") + "/frames/2,5/rendered", headers={"Accept": "image/png"}).status_code == 406
    # the thumbnail of a multi-frame instance is its middle frame
    thumb = png(gw, "multiframe", "/thumbnail")
    assert np.array_equal(thumb, png(gw, "multiframe", "/frames/3/thumbnail"))


def test_series_and_study_use_the_middle_instance(gw: RunningGateway) -> None:
    series_thumb = image(
        httpx.get(f"{gw.url}/studies/{STUDY}/series/{SERIES}/thumbnail", params={"accept": "image/png"})
    )
    study_thumb = image(httpx.get(f"{gw.url}/studies/{STUDY}/thumbnail", params={"accept": "image/png"}))
    middle = png(gw, "ct-jls", "/thumbnail")
    assert np.array_equal(series_thumb, middle)
    assert np.array_equal(study_thumb, middle)
    assert not np.array_equal(middle, png(gw, "ct-third", "/thumbnail"))
    # default thumbnail size fits 128 x 128; OHIF asks for viewport=256,256
    assert max(series_thumb.shape) == 128
    assert max(png(gw, "ct", "/thumbnail", viewport="256,256").shape) == 256
    # rendered series: one image (the middle one), or every instance as multipart
    single = image(httpx.get(f"{gw.url}/studies/{STUDY}/series/{SERIES}/rendered?accept=image/png"))
    assert np.array_equal(single, png(gw, "ct-jls"))
    response = httpx.get(f"{gw.url}/studies/{STUDY}/rendered", headers={"Accept": "multipart/related; type=image/png"})
    assert len(split_multipart(response)) == 3


def test_thumbnails_are_cached(gw: RunningGateway) -> None:
    def hits() -> float:
        text = httpx.get(gw.root + "/metrics").text
        for line in text.splitlines():
            if line.startswith('dicomweb_gateway_cache_lookups_total{cache="rendered",result="hit"}'):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    target = url(gw, "palette") + "/thumbnail?viewport=64,64"
    first = httpx.get(target)
    before = hits()
    second = httpx.get(target)
    assert first.content == second.content
    assert hits() == before + 1


# --- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "status"),
    [
        ("window=abc", 400),
        ("window=40,0", 400),
        ("window=40,400,CUBIC", 400),
        ("viewport=0,10", 400),
        ("viewport=100000,10", 400),
        ("viewport=10,10,200,200,10,10", 400),
        ("quality=0", 400),
        ("quality=high", 400),
        ("accept=image/gif", 406),
    ],
)
def test_bad_parameters(gw: RunningGateway, query: str, status: int) -> None:
    response = httpx.get(url(gw, "ct") + "/rendered?" + query)
    assert response.status_code == status, response.text


def test_unknown_and_pixelless_instances(gw: RunningGateway) -> None:
    s, se, _ = uids_of(INSTANCES["ct"])
    missing = f"{gw.url}/studies/{s}/series/{se}/instances/{factory.new_uid('nope')}"
    assert httpx.get(missing + "/rendered").status_code == 404
    assert httpx.get(url(gw, "multiframe") + "/frames/9/rendered").status_code == 404
    sr = factory.sr_instance(seed=77)
    assert stow(gw.url, [sr]).status_code == 200
    s, se, i = uids_of(sr)
    assert httpx.get(f"{gw.url}/studies/{s}/series/{se}/instances/{i}/thumbnail").status_code == 404


def test_parsers() -> None:
    assert render.parse_window("40,400") == render.Window(40, 400, "LINEAR")
    assert render.parse_viewport("512,256") == render.Viewport(512, 256)
    with pytest.raises(BadRequest):
        render.parse_window("40,nan")


def test_enhanced_multiframe_functional_groups() -> None:
    """PS3.3 C.7.6.16.2.9-10: rescale and window per frame (or shared) in the functional groups."""
    from gateway.ports import PixelDescription

    pixel = PixelDescription(4, 4, 1, 16, 12, 0, "MONOCHROME2", 0, 2)

    def sq(*items: dict[str, object]) -> dict[str, object]:
        return {"vr": "SQ", "Value": list(items)}

    def ds(value: float) -> dict[str, object]:
        return {"vr": "DS", "Value": [value]}

    metadata = {
        "52009229": sq({"00289145": sq({"00281052": ds(-1000), "00281053": ds(2)})}),
        "52009230": sq(
            {"00289132": sq({"00281050": ds(10), "00281051": ds(20), "00281056": {"vr": "CS", "Value": ["SIGMOID"]}})},
            {},
        ),
    }
    first = render.attributes_from_json(metadata, pixel, frame=1)
    assert (first.slope, first.intercept) == (2.0, -1000.0)
    assert first.window == render.Window(10, 20, "SIGMOID")
    second = render.attributes_from_json(metadata, pixel, frame=2)
    assert (second.slope, second.window) == (2.0, None)
