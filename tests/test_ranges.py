"""Byte ranges (issue #17, part 3) on single-part frames and bulk data: 206 with Content-Range
for ``bytes=a-b``, ``bytes=a-`` and ``bytes=-n``, a range past the end clamped, 416 for one that
selects nothing, multipart answers whole; a frame range is read from the store by ranged reads
of just its bytes. Over the real gateway process (file store, and S3 for the plain cases)."""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient

from gateway.adapters.filestore import FileBlobStore
from gateway.adapters.sqlite_index import SqliteIndex
from gateway.dicom.media import JPEG_LS_LOSSLESS as JLS
from gateway.dicom.media import Negotiated
from gateway.dicom.parse import parse_part10
from gateway.services.byte_slices import read_all
from gateway.services.instance_reader import InstanceReader
from gateway.services.instance_writer import InstanceWriter
from tests import factory
from tests.fixtures_gateway import RunningGateway, start_gateway, stop_gateway
from tests.fixtures_s3 import S3Bucket
from tests.http_helpers import split_multipart, stow, uids_of

# A JPEG Baseline frame in three fragments: its stored spans are not contiguous (PS3.5 A.4).
FRAGMENTED = factory.jpeg_baseline_instance(seed=71, rows=128, cols=128, frames=2, fragments_per_frame=3)
CT = factory.ct_instance(seed=72, rows=96, cols=96)  # native 16-bit: frames in image/jls are made
DEFLATED = factory.deflated_instance(seed=73)  # no byte offsets in the store: values read out whole


@pytest.fixture(scope="module", params=["file", "s3"])
def loaded(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    s3 = None
    if request.param == "s3":  # one bucket for the module (the s3_bucket fixture is per test)
        seaweed = request.getfixturevalue("seaweed")
        name = f"ranges-{uuid.uuid4().hex[:16]}"
        request.getfixturevalue("s3_admin").create_bucket(Bucket=name)
        s3 = S3Bucket(
            endpoint_url=seaweed.endpoint_url,
            access_key=seaweed.access_key,
            secret_key=seaweed.secret_key,
            region=seaweed.region,
            bucket=name,
        )
    gw = start_gateway(tmp_path_factory.mktemp("ranges"), store_kind=request.param, s3=s3)
    try:
        response = stow(gw.url, [FRAGMENTED, CT, DEFLATED])
        assert response.status_code == 200, response.text
        yield gw
    finally:
        stop_gateway(gw)


def url_of(gw: RunningGateway, data: bytes) -> str:
    s, se, i = uids_of(data)
    return f"{gw.url}/studies/{s}/series/{se}/instances/{i}"


def whole(url: str, accept: str) -> bytes:
    response = httpx.get(url, headers={"Accept": accept})
    assert response.status_code == 200, response.text
    assert response.headers["accept-ranges"] == "bytes"
    assert "content-range" not in response.headers
    return response.content


FORMS = [
    # (Range header, slice of the whole value it selects) for a value of `n` bytes
    ("bytes=0-99", lambda n: slice(0, 100)),
    ("bytes=100-", lambda n: slice(100, n)),
    ("bytes=-64", lambda n: slice(n - 64, n)),
    ("bytes=10-10", lambda n: slice(10, 11)),
    ("bytes=5-99999999", lambda n: slice(5, n)),  # the last position past the end is clamped
    ("bytes=-99999999", lambda n: slice(0, n)),  # a suffix longer than the value is all of it
    ("BYTES = 7 - 20", lambda n: slice(7, 21)),  # unit case-insensitive, spaces tolerated
]


@pytest.mark.parametrize(("header", "selected"), FORMS, ids=[f[0] for f in FORMS])
@pytest.mark.parametrize(
    ("which", "accept"),
    [("fragmented", "image/jpeg"), ("made", "image/jls")],
    ids=["stored-in-fragments", "transcoded-jls"],
)
def test_frame_ranges(loaded: RunningGateway, which: str, accept: str, header: str, selected) -> None:  # type: ignore[no-untyped-def]
    data = FRAGMENTED if which == "fragmented" else CT
    url = url_of(loaded, data) + "/frames/1"
    full = whole(url, accept)
    if which == "fragmented":  # as stored: the three fragments joined
        frames = pydicom.encaps.generate_frames(pydicom.dcmread(io.BytesIO(data)).PixelData, number_of_frames=2)
        assert full == next(frames)
    part = slice(*selected(len(full)).indices(len(full)))
    response = httpx.get(url, headers={"Accept": accept, "Range": header})
    assert response.status_code == 206, response.text
    assert response.content == full[part]
    assert response.headers["content-range"] == f"bytes {part.start}-{part.stop - 1}/{len(full)}"
    assert response.headers["content-length"] == str(part.stop - part.start)
    assert response.headers["accept-ranges"] == "bytes"
    assert response.headers["content-type"].startswith(accept)


@pytest.mark.parametrize("header", ["bytes=999999-", "bytes=999999-1000000", "bytes=-0"])
def test_a_range_that_selects_nothing_is_416(loaded: RunningGateway, header: str) -> None:
    url = url_of(loaded, FRAGMENTED) + "/frames/2"
    length = len(whole(url, "image/jpeg"))
    response = httpx.get(url, headers={"Accept": "image/jpeg", "Range": header})
    assert response.status_code == 416, response.text
    assert response.headers["content-range"] == f"bytes */{length}"
    assert "range" in response.json()["reason"] or "selects nothing" in response.json()["reason"]


@pytest.mark.parametrize(
    "header",
    ["bytes=0-9,20-29", "bytes=9-3", "items=0-9", "bytes=abc", "bytes=-", "bytes=" + "9" * 40 + "-"],
    ids=["several", "last-before-first", "other-unit", "garbage", "empty", "huge-number"],
)
def test_ranges_the_server_ignores_are_answered_whole(loaded: RunningGateway, header: str) -> None:
    """RFC 9110 14.2: a server may ignore Range; these it does (several ranges included)."""
    url = url_of(loaded, FRAGMENTED) + "/frames/1"
    full = whole(url, "image/jpeg")
    response = httpx.get(url, headers={"Accept": "image/jpeg", "Range": header})
    assert response.status_code == 200
    assert response.content == full


def test_if_range_makes_the_answer_whole(loaded: RunningGateway) -> None:
    """The gateway sends no validator, so an If-Range can never match: the whole frame."""
    url = url_of(loaded, FRAGMENTED) + "/frames/1"
    full = whole(url, "image/jpeg")
    response = httpx.get(url, headers={"Accept": "image/jpeg", "Range": "bytes=0-9", "If-Range": '"x"'})
    assert response.status_code == 200
    assert response.content == full


def test_multipart_frames_ignore_range(loaded: RunningGateway) -> None:
    url = url_of(loaded, FRAGMENTED) + "/frames/1"
    full = whole(url, "image/jpeg")
    accept = "multipart/related; type=application/octet-stream; transfer-syntax=*"
    response = httpx.get(url, headers={"Accept": accept, "Range": "bytes=0-99"})
    assert response.status_code == 200
    assert "content-range" not in response.headers
    ((_, body),) = split_multipart(response)
    assert body == full


@pytest.mark.parametrize("query", ["accept=image/jls", f"accept=image/jls;transfer-syntax={JLS}"])
def test_accept_query_parameter_gives_a_ranged_single_part(loaded: RunningGateway, query: str) -> None:
    """What Cornerstone3D sends with ``urlArguments: "accept=..."``: its fixed multipart Accept
    header beside the query parameter, which wins (PS3.18 8.3.3.1), so the Range applies."""
    url = url_of(loaded, CT) + "/frames/1"
    full = whole(url, "image/jls")
    header = "multipart/related; type=application/octet-stream; transfer-syntax=*"
    response = httpx.get(f"{url}?{query}", headers={"Accept": header, "Range": "bytes=0-4095"})
    assert response.status_code == 206, response.text
    assert response.headers["content-type"] == f"image/jls; transfer-syntax={JLS}"
    assert response.content == full[:4096]
    assert response.headers["content-range"] == f"bytes 0-4095/{len(full)}"
    rest = httpx.get(f"{url}?{query}", headers={"Accept": header, "Range": "bytes=4096-"})
    assert response.content + rest.content == full  # the two stages of a byte-range loader


def test_bulkdata_ranges(loaded: RunningGateway) -> None:
    url = url_of(loaded, CT) + "/bulkdata/7FE00010"
    pixels = pydicom.dcmread(io.BytesIO(CT)).PixelData
    assert whole(url, "application/octet-stream") == pixels
    for header, part in (
        ("bytes=0-1023", slice(0, 1024)),
        ("bytes=-100", slice(-100, None)),
        ("bytes=9000-", slice(9000, None)),
    ):
        response = httpx.get(url, headers={"Accept": "application/octet-stream", "Range": header})
        assert response.status_code == 206, response.text
        assert response.content == pixels[part]
        start = part.indices(len(pixels))[0]
        assert (
            response.headers["content-range"]
            == f"bytes {start}-{len(pixels) - 1 if part.stop is None else part.stop - 1}/{len(pixels)}"
        )
    response = httpx.get(url, headers={"Accept": "application/octet-stream", "Range": f"bytes={len(pixels)}-"})
    assert response.status_code == 416
    assert response.headers["content-range"] == f"bytes */{len(pixels)}"


def test_ranges_of_a_deflated_instance(loaded: RunningGateway) -> None:
    """A deflated data set has no byte offsets: its value is read out of the object, then sliced."""
    url = url_of(loaded, DEFLATED) + "/bulkdata/7FE00010"
    pixels = pydicom.dcmread(io.BytesIO(DEFLATED)).PixelData
    assert whole(url, "application/octet-stream") == pixels
    response = httpx.get(url, headers={"Accept": "application/octet-stream", "Range": "bytes=-300"})
    assert response.status_code == 206, response.text
    assert response.content == pixels[-300:]
    assert response.headers["content-range"] == f"bytes {len(pixels) - 300}-{len(pixels) - 1}/{len(pixels)}"


def test_dicomweb_client_byte_range_on_multipart_bulkdata_gets_the_whole_value(loaded: RunningGateway) -> None:
    """dicomweb-client's ``byte_range`` (retrieve_bulkdata) always asks for multipart/related:
    the Range is ignored and the whole value comes back, which the client reads as one part."""
    client = DICOMwebClient(loaded.url)
    pixels = pydicom.dcmread(io.BytesIO(CT)).PixelData
    (value,) = client.retrieve_bulkdata(url_of(loaded, CT) + "/bulkdata/7FE00010", byte_range=(0, 99))
    assert value == pixels


@pytest.mark.anyio
async def test_a_frame_range_reads_only_its_bytes(tmp_path: Path) -> None:
    """A range of a stored frame costs ranged reads of the bytes asked for, never the object."""
    store = FileBlobStore(tmp_path / "objects")
    index = SqliteIndex(tmp_path / "index.sqlite3", max_results=100)
    try:
        path = tmp_path / "in.dcm"
        path.write_bytes(FRAGMENTED)
        await InstanceWriter(store, index).write(parse_part10(path, origin="stow"), path)
        reader = InstanceReader(store, index)
        record = (await reader.select(*uids_of(FRAGMENTED)))[0]
        read: list[int] = []
        real_read_range = store.read_range

        async def counting_read_range(key: str, start: int, length: int) -> bytes:
            read.append(length)
            return await real_read_range(key, start, length)

        async def no_read_all(key: str) -> bytes:
            raise AssertionError("the whole object was read")

        store.read_range = counting_read_range  # type: ignore[method-assign]
        store.read_all = no_read_all  # type: ignore[method-assign]
        value = await reader.frame_slices(record, 2, Negotiated("image/jpeg", "*", False))
        assert read == []  # the length is known from the index alone
        frames = list(
            pydicom.encaps.generate_frames(pydicom.dcmread(io.BytesIO(FRAGMENTED)).PixelData, number_of_frames=2)
        )
        assert value.length == len(frames[1])
        middle = slice(value.length // 3, 2 * value.length // 3)
        assert await read_all(value, middle.start, middle.stop) == frames[1][middle]
        assert sum(read) == middle.stop - middle.start
    finally:
        await index.aclose()
