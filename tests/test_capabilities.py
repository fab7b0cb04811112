"""The Capabilities transaction (issue #5, part 7; PS3.18 8.9): OPTIONS on the base URL and on
each resource answers WADL built from the route table; a CORS preflight stays CORS."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from gateway.dicom.media import JPEG_2000_LOSSLESS, JPEG_LS_LOSSLESS, RLE_LOSSLESS
from gateway.http.routes import dicomweb_routes
from tests import factory
from tests.fixtures_gateway import RunningGateway, start_gateway, stop_gateway
from tests.http_helpers import stow, uids_of

NS = {"w": "http://wadl.dev.java.net/2009/02"}
VIEWER = "https://viewer.example.org"
CT = factory.ct_instance(seed=801, rows=8, cols=8)


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    tmp = tmp_path_factory.mktemp("capabilities")
    config = tmp / "gateway.toml"
    config.write_text(f'[cors]\norigins = ["{VIEWER}"]\n')
    gateway = start_gateway(tmp, extra_args=("--config", str(config)))
    try:
        assert stow(gateway.url, [CT]).status_code == 200
        yield gateway
    finally:
        stop_gateway(gateway)


def wadl(response: httpx.Response) -> ET.Element:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/vnd.sun.wadl+xml")
    return ET.fromstring(response.content)


def served() -> dict[str, set[str]]:
    """Resource path (relative to the base, params as {name}) -> methods, from the route table."""
    table: dict[str, set[str]] = {}

    def walk(routes: list[object], prefix: str) -> None:
        for route in routes:
            if hasattr(route, "routes") and not hasattr(route, "methods"):
                walk(list(route.routes), prefix + route.path)  # type: ignore[attr-defined]
            elif "OPTIONS" not in (route.methods or ()):  # type: ignore[attr-defined]
                path = re.sub(r"\{(\w+):\w+\}", r"{\1}", prefix + route.path).lstrip("/")  # type: ignore[attr-defined]
                table.setdefault(path, set()).update(set(route.methods) - {"HEAD"})  # type: ignore[attr-defined]

    walk(dicomweb_routes(), "")
    return table


def test_options_on_the_base_describes_every_resource(gw: RunningGateway) -> None:
    root = wadl(httpx.request("OPTIONS", gw.url))
    resources = root.find("w:resources", NS)
    assert resources is not None
    assert resources.get("base") == gw.url + "/"
    described = {
        r.get("path"): {m.get("name") for m in r.findall("w:method", NS)} - {"OPTIONS"}
        for r in resources.findall("w:resource", NS)
    }
    assert described == served()
    studies = resources.find("w:resource[@path='studies']", NS)
    assert studies is not None
    ids = {m.get("id") for m in studies.findall("w:method", NS)}
    assert {"SearchForStudies", "StoreInstances", "RetrieveCapabilities"} <= ids
    text = ET.tostring(root, encoding="unicode")
    for syntax in (JPEG_LS_LOSSLESS, JPEG_2000_LOSSLESS, RLE_LOSSLESS):
        assert syntax in text
    assert 'mediaType="application/zip"' in text
    assert 'name="viewport"' in text
    assert httpx.request("OPTIONS", gw.url + "/").status_code == 200


def test_options_on_a_resource(gw: RunningGateway) -> None:
    s, se, i = uids_of(CT)
    response = httpx.request("OPTIONS", f"{gw.url}/studies/{s}/series/{se}/instances/{i}/frames/1")
    root = wadl(response)
    paths = [r.get("path") for r in root.iter("{http://wadl.dev.java.net/2009/02}resource")]
    assert paths == ["studies/{study}/series/{series}/instances/{instance}/frames/{frames}"]
    assert response.headers["allow"] == "GET, OPTIONS"
    assert s.encode() not in response.content  # templates, never the request's UIDs
    studies = httpx.request("OPTIONS", gw.url + "/studies")
    assert studies.headers["allow"] == "GET, OPTIONS, POST"
    assert httpx.request("OPTIONS", f"{gw.url}/studies/{s}/thumbnail").headers["allow"] == "GET, OPTIONS"
    assert httpx.request("OPTIONS", gw.url + "/wado").status_code == 200


def test_unknown_resources(gw: RunningGateway) -> None:
    assert httpx.request("OPTIONS", gw.url + "/nothing/here").status_code == 404
    assert httpx.request("OPTIONS", gw.url + "/pacs/nope/studies").status_code == 404
    # OPTIONS routes take nothing away: other methods on unknown paths are still 404, not 405
    assert httpx.get(gw.url + "/nothing/here").status_code == 404
    assert httpx.request("DELETE", gw.url + "/studies").status_code == 405


def test_accept(gw: RunningGateway) -> None:
    assert (
        httpx.request("OPTIONS", gw.url, headers={"Accept": "application/xml"})
        .headers["content-type"]
        .startswith("application/xml")
    )
    assert httpx.request("OPTIONS", gw.url, headers={"Accept": "application/dicom+json"}).status_code == 406


def test_a_preflight_is_cors_not_capabilities(gw: RunningGateway) -> None:
    s, se, i = uids_of(CT)
    url = f"{gw.url}/studies/{s}/series/{se}/instances/{i}/frames/1"
    preflight = httpx.request(
        "OPTIONS", url, headers={"Origin": VIEWER, "Access-Control-Request-Method": "GET", "Accept": "*/*"}
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == VIEWER
    assert "wadl" not in preflight.headers.get("content-type", "")
    assert b"<application" not in preflight.content
    # a plain OPTIONS from a browser page (no Access-Control-Request-Method) is Capabilities, with CORS headers
    plain = httpx.request("OPTIONS", url, headers={"Origin": VIEWER})
    wadl(plain)
    assert plain.headers["access-control-allow-origin"] == VIEWER


def test_spec_documents_capabilities() -> None:
    spec = yaml.safe_load((Path(__file__).resolve().parent.parent / "openapi" / "dicomweb.yaml").read_text())
    assert spec["paths"]["/dicomweb"]["options"]["operationId"] == "retrieveCapabilities"
    assert "options" in spec["paths"]["/dicomweb/{path}"]
