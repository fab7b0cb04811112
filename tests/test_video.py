"""Video instances (issue #17, part 6): MPEG-2, H.264 and HEVC bitstreams served as stored.

Clips made by ``ffmpeg`` and wrapped as Video Photographic Images (tests/video_factory.py), in
three fragments each, uploaded by STOW-RS to the real gateway process (file store, and S3):
``/rendered`` and the BulkDataURI the metadata hands out for Pixel Data answer the stream,
byte for byte, as ``video/mp4`` (``video/mpeg`` for MPEG-2), whole or by byte ranges as a browser
seeking asks; nothing is transcoded, so a rendered image type is a 406. A ``<video>`` element in
Debian's Chromium plays the H.264 clip from both URLs, and the real OHIF viewer's video viewport
plays it from ``/rendered`` (``readyState >= 2``: frames decoded).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests import video_factory as vf
from tests.fixtures_gateway import RunningGateway, start_gateway, stop_gateway
from tests.fixtures_s3 import S3Bucket
from tests.http_helpers import split_multipart, stow, uids_of
from tests.peers import ohif

pytestmark = pytest.mark.skipif(not vf.have_ffmpeg(), reason="ffmpeg is not installed (scripts/test.sh installs it)")

SYNTAXES = [vf.MPEG2_MPML, vf.MPEG2_MPHL, vf.MPEG4_HP41, vf.MPEG4_HP42_2D, vf.HEVC_MP51, vf.HEVC_M10P51]
MEDIA_TYPE = {ts: "video/mpeg" if ts in (vf.MPEG2_MPML, vf.MPEG2_MPHL) else "video/mp4" for ts in SYNTAXES}
INSTANCES = {ts: vf.video_instance(ts, seed=80 + i) for i, ts in enumerate(SYNTAXES)}


def stream_of(ts: str) -> bytes:
    """The clip as the instance stores it: PS3.5 A.4 pads an odd-length value with one zero byte."""
    clip = vf.clip(ts)
    return clip + b"\0" * (len(clip) % 2)


@pytest.fixture(scope="module", params=["file", "s3"])
def loaded(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    s3 = None
    if request.param == "s3":
        seaweed = request.getfixturevalue("seaweed")
        name = f"video-{uuid.uuid4().hex[:16]}"
        request.getfixturevalue("s3_admin").create_bucket(Bucket=name)
        s3 = S3Bucket(
            endpoint_url=seaweed.endpoint_url,
            access_key=seaweed.access_key,
            secret_key=seaweed.secret_key,
            region=seaweed.region,
            bucket=name,
        )
    gw = start_gateway(tmp_path_factory.mktemp("video"), store_kind=request.param, s3=s3)
    try:
        response = stow(gw.url, list(INSTANCES.values()))
        assert response.status_code == 200, response.text
        yield gw
    finally:
        stop_gateway(gw)


def instance_url(gw: RunningGateway, ts: str) -> str:
    study, series, sop = uids_of(INSTANCES[ts])
    return f"{gw.url}/studies/{study}/series/{series}/instances/{sop}"


def pixel_data_uri(gw: RunningGateway, ts: str) -> str:
    metadata = httpx.get(instance_url(gw, ts) + "/metadata").json()[0]
    uri: str = metadata["7FE00010"]["BulkDataURI"]
    assert uri == instance_url(gw, ts) + "/bulkdata/7FE00010"
    return uri


@pytest.mark.parametrize("ts", SYNTAXES)
def test_rendered_and_bulkdata_are_the_stream(loaded: RunningGateway, ts: str) -> None:
    expected = stream_of(ts)
    for url in (instance_url(loaded, ts) + "/rendered", pixel_data_uri(loaded, ts)):
        for accept in (None, "*/*", "video/*", MEDIA_TYPE[ts]):
            response = httpx.get(url, headers={"Accept": accept} if accept else {})
            assert response.status_code == 200, (url, accept, response.text)
            assert response.headers["content-type"] == MEDIA_TYPE[ts], (url, accept)
            assert response.headers["accept-ranges"] == "bytes"
            assert response.content == expected, (url, accept)
        # The accept query parameter (OHIF adds ?accept=video/mp4 to a BulkDataURI) wins over the header.
        response = httpx.get(url, params={"accept": MEDIA_TYPE[ts]}, headers={"Accept": "image/jpeg"})
        assert response.status_code == 200, response.text
        assert response.content == expected


@pytest.mark.parametrize("ts", [vf.MPEG2_MPML, vf.MPEG4_HP41, vf.HEVC_MP51])
def test_byte_ranges_of_the_stream(loaded: RunningGateway, ts: str) -> None:
    expected = stream_of(ts)
    n = len(expected)
    forms = {
        "bytes=0-1": slice(0, 2),  # what Chromium asks first is "bytes=0-": see below
        "bytes=0-": slice(0, n),
        "bytes=100-4999": slice(100, 5000),
        f"bytes={n - 10}-": slice(n - 10, n),
        "bytes=-300": slice(n - 300, n),
        f"bytes=7-{n + 1000}": slice(7, n),  # past the end: clamped
    }
    for url in (instance_url(loaded, ts) + "/rendered", pixel_data_uri(loaded, ts)):
        for header, part in forms.items():
            response = httpx.get(url, headers={"Range": header})
            assert response.status_code == 206, (url, header, response.text)
            assert response.headers["content-type"] == MEDIA_TYPE[ts]
            assert response.headers["content-range"] == f"bytes {part.start}-{part.stop - 1}/{n}", header
            assert response.content == expected[part], (url, header)
        response = httpx.get(url, headers={"Range": f"bytes={n}-"})
        assert response.status_code == 416, response.text
        assert response.headers["content-range"] == f"bytes */{n}"


def test_bulkdata_octet_stream_and_multipart(loaded: RunningGateway) -> None:
    """From the BulkDataURI the same stream may be asked for as octet-stream, or in a multipart
    body (which ignores Range: it is sent whole)."""
    ts = vf.MPEG4_HP41
    uri = pixel_data_uri(loaded, ts)
    response = httpx.get(uri, headers={"Accept": "application/octet-stream", "Range": "bytes=0-9"})
    assert response.status_code == 206
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.content == stream_of(ts)[:10]
    for accept in ("multipart/related; type=application/octet-stream", 'multipart/related; type="video/mp4"'):
        response = httpx.get(uri, headers={"Accept": accept, "Range": "bytes=0-9"})
        assert response.status_code == 200, response.text
        parts = split_multipart(response)
        assert len(parts) == 1
        headers, body = parts[0]
        assert headers["content-type"] == accept.split("type=")[1].strip('"')
        assert body == stream_of(ts)


def test_video_is_not_transcoded(loaded: RunningGateway) -> None:
    """A rendered image of a video, or the wrong video type, is a 406 naming what is offered."""
    url = instance_url(loaded, vf.MPEG4_HP41)
    for path, accept in (("/rendered", "image/jpeg"), ("/rendered", "video/mpeg"), ("/bulkdata/7FE00010", "image/png")):
        response = httpx.get(url + path, headers={"Accept": accept})
        assert response.status_code == 406, (path, accept, response.text)
        assert "video/mp4" in response.json()["reason"]
    hevc = instance_url(loaded, vf.HEVC_MP51)
    # PS3.18 Table 8.7.3-5 names HEVC video/H265: asked for so, it is labelled so.
    response = httpx.get(hevc + "/rendered", headers={"Accept": "video/H265"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "video/H265"
    assert response.content == stream_of(vf.HEVC_MP51)


PLAY = """
const { chromium } = require('playwright-core');
(async () => {
  const payload = JSON.parse(require('fs').readFileSync(0, 'utf8'));
  const browser = await chromium.launch({ executablePath: payload.chromium, args: payload.flags, headless: true });
  const report = { videos: [], ranges: [] };
  try {
    const page = await browser.newPage();
    page.on('request', (r) => { if (r.headers()['range']) report.ranges.push(r.headers()['range']); });
    await page.goto(payload.page);
    for (const src of payload.sources) {
      const state = await page.evaluate(async (src) => {
        const v = document.createElement('video');
        v.muted = true;
        v.src = src;
        document.body.appendChild(v);
        const t0 = Date.now();
        while (v.readyState < 2 && !v.error && Date.now() - t0 < 20000) await new Promise((r) => setTimeout(r, 100));
        return { readyState: v.readyState, error: v.error && v.error.code, width: v.videoWidth,
                 height: v.videoHeight, duration: v.duration };
      }, src);
      report.videos.push(state);
    }
  } catch (e) {
    report.error = String(e);
  } finally {
    await browser.close();
  }
  process.stdout.write(JSON.stringify(report) + '\\n');
})();
"""


def test_chromium_plays_the_video(viewer_dist: Path, tmp_path: Path) -> None:
    """A ``<video>`` element on a page of another origin plays the H.264 instance from its
    rendered URL and from its BulkDataURI: the browser asks with Range, decodes frames."""
    server = ohif.ViewerServer(viewer_dist, "", headers={})
    config = tmp_path / "gateway.toml"
    config.write_text(f'[cors]\norigins = ["{server.url}"]\n')
    gw = start_gateway(tmp_path, extra_args=("--config", str(config)))
    try:
        assert stow(gw.url, [INSTANCES[vf.MPEG4_HP41]]).status_code == 200
        sources = [instance_url(gw, vf.MPEG4_HP41) + "/rendered", pixel_data_uri(gw, vf.MPEG4_HP41)]
        script = tmp_path / "play.js"
        script.write_text(PLAY)
        payload = {"chromium": ohif.CHROMIUM, "flags": list(ohif.CHROMIUM_FLAGS), "page": server.url + "/app-config.js"}
        report = ohif.run_driver(script, {**payload, "sources": sources}, timeout=120)
        assert report.get("error") is None, report
        assert len(report["videos"]) == 2, report
        for video in report["videos"]:
            assert video["error"] is None, report
            assert video["readyState"] >= 2, report
            assert (video["width"], video["height"]) == (vf.COLUMNS, vf.ROWS), report
            assert video["duration"] == pytest.approx(vf.FRAMES / vf.FPS, abs=0.1), report
        assert report["ranges"], report  # the browser fetched the media by byte ranges
    finally:
        stop_gateway(gw)
        server.close()


def test_ohif_plays_the_video(viewer_dist: Path, tmp_path: Path) -> None:
    """OHIF's video viewport (its dicom-video extension takes Video Photographic Images) plays
    the H.264 instance from the gateway: with ``singlepart: "video"`` it points a ``<video>``
    element at the instance's ``/rendered`` URL, which reaches ``readyState >= 2``."""
    server = ohif.ViewerServer(viewer_dist, "")
    config = tmp_path / "gateway.toml"
    config.write_text(f'[cors]\norigins = ["{server.url}"]\ncorp = "cross-origin"\n')
    gw = start_gateway(tmp_path, extra_args=("--config", str(config)))
    try:
        assert stow(gw.url, [INSTANCES[vf.MPEG4_HP41]]).status_code == 200
        server.config_js = ohif.app_config(gw.url).encode()
        study = uids_of(INSTANCES[vf.MPEG4_HP41])[0]
        payload = {
            "viewer": server.url,
            "chromium": ohif.CHROMIUM,
            "flags": list(ohif.CHROMIUM_FLAGS),
            "open": [study],
            "videos": [study],
            "list": False,
            "timeoutMs": 60_000,
        }
        report = ohif.run_driver(Path(__file__).with_name("ohif_driver.js"), payload, timeout=240)
        context = f"report: {report}\ngateway log (tail):\n{gw.log()[-4000:]}"
        assert report.get("error") is None, context
        assert report["failed"] == [], context
        video = report["opened"][0]["video"]
        assert video["readyState"] >= 2, context
        assert (video["width"], video["height"]) == (vf.COLUMNS, vf.ROWS), context
        assert video["src"] == instance_url(gw, vf.MPEG4_HP41) + "/rendered", context
        # The one refusal: OHIF asks for a JPEG thumbnail of the video, which the gateway cannot
        # make without decoding video (it transcodes none): 406.
        assert all(line.startswith("406 GET ") and "/thumbnail" in line for line in report["bad"]), context
    finally:
        stop_gateway(gw)
        server.close()
