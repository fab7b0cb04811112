"""HTJ2K progressive loading in the real OHIF viewer (issue #17, part 4), in headless Chromium.

OHIF runs with the byte-range stages docs/dicomweb.md documents ("Progressive loading in
OHIF"): each frame is asked for as ``accept=image/jphc;transfer-syntax=1.2.840.10008.1.2.4.202``
(HTJ2K with RPCL progression), first its first ``CHUNK`` bytes, then the rest. The chunk is
smaller than every frame, so each frame takes two ranged requests and Cornerstone3D draws a
sub-resolution image from the first before the full one.

One gateway's store holds two 512×512 CT series: one uploaded before ``storage_compression =
"htj2k"`` was turned on and kept uncompressed (each frame transcoded to HTJ2K on request,
through the frame cache), one uploaded after and stored as HTJ2K, whose frames are served as
stored, by ranged reads of the stored object.

Checks: both studies render (canvas pixels); every frame request is answered 206 with
``image/jphc; transfer-syntax=1.2.840.10008.1.2.4.202`` and a ``Content-Range``; each frame
was fetched in two ranges that together are the whole frame; the viewport showed at least one
image of each study at sub-resolution (Cornerstone3D's imageQualityStatus SUBRESOLUTION, which it
sets only for an image decoded from a prefix of the frame) before the full one.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import factory
from tests.fixtures_gateway import start_gateway, stop_gateway
from tests.http_helpers import stow_body
from tests.peers import ohif
from tests.test_ohif import CORS, DRIVER, DRIVER_TIMEOUT

pytestmark = pytest.mark.timeout(600)

HTJ2K_RPCL = "1.2.840.10008.1.2.4.202"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
ACCEPT = f"accept=image/jphc;transfer-syntax={HTJ2K_RPCL}"
# Much smaller than every frame (about 190 KB in HTJ2K): each frame takes two ranges. Cornerstone3D
# decodes the first at a resolution level it picks from the fraction received (about 2 %: an
# eighth of the full size), which the prefix must hold (docs/dicomweb.md).
CHUNK = 4096
SUBRESOLUTION, FULL_RESOLUTION = 6, 8  # Cornerstone3D's ImageQualityStatus

HTJ2K_STAGES = {
    "$set": {
        "stages": [
            {"id": "lossySequential", "retrieveType": "singleFast"},
            {"id": "finalSequential", "retrieveType": "singleFinal"},
        ],
        "retrieveOptions": {
            "singleFast": {"rangeIndex": 0, "chunkSize": CHUNK, "urlArguments": ACCEPT},
            "singleFinal": {"rangeIndex": -1, "urlArguments": ACCEPT},
        },
    }
}

STORAGE = 'storage_compression = "htj2k"\n'


def _series() -> dict[str, tuple[str, list[bytes]]]:
    native = factory.ct_series(4, 512, 512, seed=61, patient_name="NATIVE^CT", study_description="CT NATIVE")
    stored = factory.ct_series(4, 512, 512, seed=62, patient_name="HTJ2K^CT", study_description="CT HTJ2K")
    return {
        EXPLICIT_VR_LITTLE_ENDIAN: (factory.new_uid("study", 61), native),
        HTJ2K_RPCL: (factory.new_uid("study", 62), stored),
    }


def _stored_syntax(url: str, study: str) -> set[str]:
    """The transfer syntaxes the gateway says it holds the study's frames in (``transfer-syntax=*``)."""
    instances = httpx.get(f"{url}/studies/{study}/instances").json()
    syntaxes = set()
    for row in instances:
        series, sop = row["0020000E"]["Value"][0], row["00080018"]["Value"][0]
        response = httpx.get(
            f"{url}/studies/{study}/series/{series}/instances/{sop}/frames/1",
            headers={"Accept": "multipart/related; type=application/octet-stream; transfer-syntax=*"},
        )
        assert response.status_code == 200, response.text
        part_type = response.content.split(b"\r\n\r\n", 1)[0].decode()
        syntaxes.add(part_type.split("transfer-syntax=")[1].split("\r\n")[0].strip('"'))
    return syntaxes


def _ranges_by_frame(ranged: list[str]) -> dict[str, list[tuple[str, int, int, int]]]:
    """``status range content-range url`` lines of the driver → per frame URL: (status, first, last, length)."""
    out: dict[str, list[tuple[str, int, int, int]]] = defaultdict(list)
    for line in ranged:
        status, _range, unit, span, url = line.split(" ")
        assert unit == "bytes", line
        first_last, length = span.split("/")
        first, last = first_last.split("-")
        out[url].append((status, int(first), int(last), int(length)))
    return out


def _upload(url: str, data: list[bytes]) -> None:
    body, content_type = stow_body(data)
    response = httpx.post(url + "/studies", content=body, headers={"Content-Type": content_type}, timeout=120)
    assert response.status_code == 200, response.text


def test_ohif_htj2k_progressive_byte_ranges(viewer_dist: Path, tmp_path: Path) -> None:
    series = _series()
    # The uncompressed series goes in first, before compression is turned on (same store).
    before = start_gateway(tmp_path)
    try:
        _upload(before.url, series[EXPLICIT_VR_LITTLE_ENDIAN][1])
    finally:
        stop_gateway(before)
    server = ohif.ViewerServer(viewer_dist, "")
    config = tmp_path / "gateway.toml"
    config.write_text(STORAGE + CORS.format(origin=server.url))
    gw = start_gateway(tmp_path, extra_args=("--config", str(config)))
    try:
        _upload(gw.url, series[HTJ2K_RPCL][1])
        for syntax, (study, _) in series.items():
            assert _stored_syntax(gw.url, study) == {syntax}

        server.config_js = ohif.app_config(gw.url, stack_retrieve_options=HTJ2K_STAGES).encode()
        studies = [study for study, _ in series.values()]
        payload: dict[str, Any] = {
            "viewer": server.url,
            "chromium": ohif.CHROMIUM,
            "flags": list(ohif.CHROMIUM_FLAGS),
            "open": studies,
            "list": False,
            "waitFullResolution": True,
            "timeoutMs": 60_000,
        }
        report = ohif.run_driver(DRIVER, payload, timeout=DRIVER_TIMEOUT)
        context = f"report: {report}\ngateway log (tail):\n{gw.log()[-4000:]}"
        assert report.get("error") is None, context
        assert report["bad"] == [], context
        assert report["failed"] == [], context
        assert [o["study"] for o in report["opened"]] == studies, context
        for opened in report["opened"]:
            assert opened["canvas"]["std"] > 10, opened
            assert opened["canvas"]["nonBlack"] > 0.02, opened

        # Every frame asked for: first its first CHUNK bytes (206), then, for the frames the
        # viewer went on to show in full, the rest (206); together the whole frame.
        frames = _ranges_by_frame(report["ranged"])
        for study in studies:
            asked = {url: spans for url, spans in frames.items() if f"/studies/{study}/" in url}
            assert asked, context
            for url, spans in asked.items():
                assert "/frames/" in url, url
                assert url.endswith("?" + ACCEPT), url
                assert all(status == "206" for status, *_ in spans), (url, spans)
                length = spans[0][3]
                assert length > CHUNK, (url, spans)
                assert all(s[3] == length for s in spans), (url, spans)
                assert spans[0][1:3] == (0, CHUNK - 1), (url, spans)
                assert len(spans) <= 2, (url, spans)
                if len(spans) == 2:
                    assert spans[1][1:3] == (CHUNK, length - 1), (url, spans)
            assert any(len(spans) == 2 for spans in asked.values()), (study, asked)
        assert set(report["rangedTypes"]) == {f"image/jphc; transfer-syntax={HTJ2K_RPCL}"}, context
        # The viewport drew each study from a prefix first (sub-resolution, smaller), then the whole frame.
        for opened in report["opened"]:
            shown = opened["shown"]
            first_full = next(i for i, s in enumerate(shown) if s["quality"] == FULL_RESOLUTION)
            partial = [s for s in shown[:first_full] if s["quality"] == SUBRESOLUTION]
            assert partial, (opened["study"], shown)
            assert all(s["rows"] < 512 for s in partial), shown
            assert shown[first_full]["rows"] == 512, shown
    finally:
        server.close()
        stop_gateway(gw)
