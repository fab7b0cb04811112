"""Coded DICOM JSON (issue #17, part 5): QIDO and metadata answers go out gzip-, br- or
zstd-coded as the client's Accept-Encoding allows (q-values honoured, q=0 meaning no), decode to
the very JSON an uncoded answer holds, say ``Vary: Accept-Encoding``; a large QIDO answer is
coded as it streams; small answers, frames, bulk data and multipart bodies are never coded."""

from __future__ import annotations

import gzip
import io
import zlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import brotli
import httpx
import orjson
import pydicom
import pytest
import zstandard
from dicomweb_client.api import DICOMwebClient
from starlette.responses import StreamingResponse
from starlette.types import Message, Receive, Scope, Send

from gateway.http.content_coding import chosen_coding
from gateway.http.middleware.compression import CompressionMiddleware
from tests import factory
from tests.fixtures_gateway import RunningGateway, start_gateway, stop_gateway
from tests.http_helpers import stow, uids_of

SERIES = factory.ct_series(120, rows=16, cols=16, seed=81)  # over 100 rows: QIDO streams its answer
STUDY, SERIES_UID, FIRST = uids_of(SERIES[0])

DECODE = {
    "gzip": gzip.decompress,
    "br": brotli.decompress,
    "zstd": lambda data: zstandard.ZstdDecompressor().decompressobj().decompress(data),
}


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    gw = start_gateway(tmp_path_factory.mktemp("coded-json"))
    try:
        response = stow(gw.url, SERIES)
        assert response.status_code == 200, response.text
        yield gw
    finally:
        stop_gateway(gw)


def raw_get(url: str, headers: dict[str, str]) -> tuple[httpx.Response, bytes]:
    """The response and its body as sent on the wire (httpx would decode it)."""
    with httpx.stream("GET", url, headers=headers) as response:
        return response, b"".join(response.iter_raw())


def plain(url: str, accept: str = "application/dicom+json") -> bytes:
    response, body = raw_get(url, {"Accept": accept, "Accept-Encoding": "identity"})
    assert response.status_code == 200
    assert "content-encoding" not in response.headers
    assert "accept-encoding" in response.headers["vary"].lower()
    return body


def series_metadata(gw: RunningGateway) -> str:
    return f"{gw.url}/studies/{STUDY}/series/{SERIES_UID}/metadata"


@pytest.mark.parametrize("coding", ["gzip", "br", "zstd"])
@pytest.mark.parametrize("accept", ["application/dicom+json", "application/json"])
def test_metadata_is_coded_and_decodes_to_the_same_json(loaded: RunningGateway, coding: str, accept: str) -> None:
    url = series_metadata(loaded)
    expected = plain(url, accept)
    response, body = raw_get(url, {"Accept": accept, "Accept-Encoding": coding})
    assert response.status_code == 200
    assert response.headers["content-encoding"] == coding
    assert "accept-encoding" in response.headers["vary"].lower()
    assert response.headers["content-type"].startswith(accept)
    assert response.headers["content-length"] == str(len(body))  # answered in one piece: its coded length
    decoded = DECODE[coding](body)
    assert decoded == expected
    assert len(orjson.loads(decoded)) == len(SERIES)
    assert len(body) * 4 < len(expected)  # the point of it: metadata shrinks several-fold


@pytest.mark.parametrize("coding", ["gzip", "br", "zstd"])
def test_a_streamed_qido_answer_is_coded_as_it_streams(loaded: RunningGateway, coding: str) -> None:
    url = f"{loaded.url}/studies/{STUDY}/series/{SERIES_UID}/instances?includefield=all"
    expected = plain(url)
    response, body = raw_get(url, {"Accept": "application/dicom+json", "Accept-Encoding": coding})
    assert response.headers["content-encoding"] == coding
    assert "content-length" not in response.headers  # streamed: chunked, never buffered whole
    assert orjson.loads(DECODE[coding](body)) == orjson.loads(expected)
    assert len(orjson.loads(expected)) == len(SERIES)


@pytest.mark.parametrize(
    ("accept_encoding", "coding"),
    [
        ("gzip;q=0, br;q=0, zstd;q=0", None),
        ("*;q=0", None),
        ("identity", None),
        ("gzip, br;q=0, zstd;q=0", "gzip"),
        ("gzip;q=0.5, zstd;q=0.9, br;q=0.8", "zstd"),
        ("br;q=0, *", "zstd"),
        ("gzip;q=1.0, br;q=0.999", "gzip"),
        ("GZIP; Q=0.3", "gzip"),
        ("x-gzip", "gzip"),
        ("gzip;q=2, br;q=abc", None),  # weights out of range or not numbers: the items are ignored
    ],
)
def test_q_values_decide_over_http(loaded: RunningGateway, accept_encoding: str, coding: str | None) -> None:
    assert chosen_coding(accept_encoding) == coding
    response, body = raw_get(series_metadata(loaded), {"Accept-Encoding": accept_encoding})
    assert response.status_code == 200
    assert response.headers.get("content-encoding") == coding
    if coding is None:
        assert len(orjson.loads(body)) == len(SERIES)


def test_a_small_answer_goes_out_uncoded(loaded: RunningGateway) -> None:
    url = f"{loaded.url}/studies/{STUDY}/series/{SERIES_UID}/instances?SOPInstanceUID={FIRST}&includefield=00080018"
    response, body = raw_get(url, {"Accept-Encoding": "gzip, br, zstd"})
    assert response.status_code == 200
    assert len(body) < 1024
    assert "content-encoding" not in response.headers
    assert "accept-encoding" in response.headers["vary"].lower()  # it would be coded were it larger
    assert orjson.loads(body)[0]["00080018"]["Value"] == [FIRST]


@pytest.mark.parametrize(
    ("path", "accept", "starts"),
    [
        ("/frames/1", "multipart/related; type=application/octet-stream; transfer-syntax=*", b"--"),
        ("/frames/1", "image/jls", b"\xff\xd8"),  # a JPEG-LS SOI marker
        ("/bulkdata/7FE00010", "application/octet-stream", None),
        ("", "multipart/related; type=application/dicom", b"--"),
        ("/rendered", "image/png", b"\x89PNG"),
    ],
)
def test_pixel_data_is_never_coded(loaded: RunningGateway, path: str, accept: str, starts: bytes | None) -> None:
    url = f"{loaded.url}/studies/{STUDY}/series/{SERIES_UID}/instances/{FIRST}{path}"
    response, body = raw_get(url, {"Accept": accept, "Accept-Encoding": "gzip, br, zstd"})
    assert response.status_code == 200, body[:200]
    assert "content-encoding" not in response.headers
    assert "accept-encoding" not in response.headers.get("vary", "").lower()
    if starts is None:
        assert body == pydicom.dcmread(io.BytesIO(SERIES[0])).PixelData
    else:
        assert body.startswith(starts)


def test_dicomweb_client_reads_coded_answers(loaded: RunningGateway) -> None:
    """requests (under dicomweb-client) offers gzip and decodes it: the same results."""
    client = DICOMwebClient(loaded.url)
    found = client.search_for_instances(study_instance_uid=STUDY, series_instance_uid=SERIES_UID)
    assert sorted(row["00080018"]["Value"][0] for row in found) == sorted(uids_of(d)[2] for d in SERIES)
    metadata = client.retrieve_series_metadata(STUDY, SERIES_UID)
    assert len(metadata) == len(SERIES)


def test_coding_can_be_switched_off_or_raised(tmp_path: Path) -> None:
    """``json_compression = false``, and ``json_compression_min_bytes`` above a body's size."""
    instances = SERIES[:20]
    for n, env in enumerate(
        (
            {"DICOMWEB_GATEWAY_JSON_COMPRESSION": "false"},
            {"DICOMWEB_GATEWAY_JSON_COMPRESSION_MIN_BYTES": str(10 << 20)},
        )
    ):
        (tmp_path / str(n)).mkdir()
        gw = start_gateway(tmp_path / str(n), env=env)
        try:
            assert stow(gw.url, instances).status_code == 200
            response, body = raw_get(series_metadata(gw), {"Accept-Encoding": "gzip"})
            assert response.status_code == 200
            assert "content-encoding" not in response.headers
            assert len(orjson.loads(body)) == len(instances)
        finally:
            stop_gateway(gw)


@pytest.mark.anyio
async def test_a_streamed_body_is_coded_chunk_by_chunk() -> None:
    """Each chunk a route streams leaves the middleware, coded and flushed, before the route makes
    the next: nothing is held back, so memory stays one chunk whatever the answer's size."""
    events: list[str] = []
    rows = [{"00080018": {"vr": "UI", "Value": [f"1.2.3.{i}"]}, "pad": "x" * 1000} for i in range(200)]

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(rows), 20):
            events.append("made")
            yield (b"[" if i == 0 else b",") + b",".join(orjson.dumps(r) for r in rows[i : i + 20])
        events.append("made")
        yield b"]"

    async def route(scope: Scope, receive: Receive, send: Send) -> None:
        await StreamingResponse(chunks(), media_type="application/dicom+json")(scope, receive, send)

    sent: list[bytes] = []

    async def record(message: Message) -> None:
        if message["type"] == "http.response.body" and message.get("body"):
            events.append("sent")
            sent.append(message["body"])

    async def receive() -> Message:
        return {"type": "http.disconnect"}

    scope = {"type": "http", "method": "GET", "headers": [(b"accept-encoding", b"gzip")], "path": "/"}
    await CompressionMiddleware(route, min_bytes=1024)(scope, receive, record)
    assert events == ["made", "sent"] * 11 + ["sent"]  # the last: the gzip trailer, at the end of the body
    assert orjson.loads(gzip.decompress(b"".join(sent))) == rows
    # Every coded piece but the last decodes on its own as far as it goes (a sync flush).
    decoder = zlib.decompressobj(31)
    assert decoder.decompress(sent[0]).startswith(b"[{")
