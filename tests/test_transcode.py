"""Transcoding (issue #5, part 3): every pair of Explicit VR Little Endian, RLE Lossless, JPEG-LS
Lossless, JPEG 2000 Lossless and JPEG Baseline round-trips with equal decoded pixels where the
target is lossless; lossy output only when a client names the lossy syntax; frames as bare
image media types; one decode for many concurrent viewers; the first frame of a 90 MB
multi-frame instance well under a second."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import UID

from gateway.adapters.filestore import FileBlobStore
from gateway.adapters.sqlite_index import SqliteIndex
from gateway.dicom import transcode
from gateway.dicom.media import EXPLICIT_VR_LITTLE_ENDIAN as ELE
from gateway.dicom.media import HTJ2K_LOSSLESS_RPCL as HTJ2K_RPCL
from gateway.dicom.media import IMPLICIT_VR_LITTLE_ENDIAN as ILE
from gateway.dicom.media import JPEG_2000_LOSSLESS as J2K
from gateway.dicom.media import JPEG_BASELINE_8BIT as JPEG
from gateway.dicom.media import JPEG_LS_LOSSLESS as JLS
from gateway.dicom.media import RLE_LOSSLESS as RLE
from gateway.dicom.media import Negotiated
from gateway.dicom.parse import parse_part10
from gateway.errors import NotAcceptable
from gateway.ports import PixelDescription
from gateway.services.instance_reader import InstanceReader
from gateway.services.instance_writer import InstanceWriter
from gateway.services.singleflight import SingleFlightCache
from tests import factory
from tests.fixtures_gateway import RunningGateway
from tests.http_helpers import split_multipart, stow, uids_of

LOSSLESS = (ELE, RLE, JLS, J2K)
NAMES = {ELE: "ELE", ILE: "ILE", RLE: "RLE", JLS: "JLS", J2K: "J2K", JPEG: "JPEG"}


def pixels(data: bytes) -> np.ndarray:
    return pydicom.dcmread(io.BytesIO(data)).pixel_array


def ct16(transfer_syntax: str = ELE) -> bytes:
    """16-bit signed CT, 12 bits stored: the common case (never JPEG Baseline)."""
    arr = (factory.gradient(48, 40, 3000) - 1024).astype(np.int16)
    return factory.image_instance(arr, seed=11, bits_stored=12, transfer_syntax=transfer_syntax, modality="CT")


def mono8(transfer_syntax: str = ELE) -> bytes:
    """8-bit multi-frame monochrome (3 frames)."""
    arr = np.stack([factory.gradient(40, 48, 255).astype(np.uint8) // (f + 1) for f in range(3)])
    if transfer_syntax == JPEG:
        return factory.jpeg_baseline_instance(seed=12, rows=40, cols=48, frames=3)
    return factory.image_instance(arr, seed=12, transfer_syntax=transfer_syntax)


def rgb8(transfer_syntax: str = ELE) -> bytes:
    ramp = factory.gradient(32, 40, 255)
    arr = np.stack([ramp, np.full_like(ramp, 90), 255 - ramp], axis=-1).astype(np.uint8)
    if transfer_syntax == JPEG:
        return factory.jpeg_baseline_instance(seed=13, rows=32, cols=40, rgb=True)
    return factory.image_instance(arr, photometric="RGB", seed=13, transfer_syntax=transfer_syntax)


SOURCES = {"ct16": (ct16, LOSSLESS), "mono8": (mono8, (*LOSSLESS, JPEG)), "rgb8": (rgb8, (*LOSSLESS, JPEG))}
PAIRS = [
    pytest.param(kind, source, target, id=f"{kind}-{NAMES[source]}-to-{NAMES[target]}")
    for kind, (_, syntaxes) in SOURCES.items()
    for source in syntaxes
    for target in (*syntaxes, ILE)
    if source != target
]


@pytest.mark.parametrize(("kind", "source", "target"), PAIRS)
def test_every_pair_round_trips(kind: str, source: str, target: str) -> None:
    build, _ = SOURCES[kind]
    original = build(source)
    out = transcode.transcode_instance(original, target)
    ds = pydicom.dcmread(io.BytesIO(out))
    assert ds.file_meta.TransferSyntaxUID == target
    assert ds.SOPInstanceUID == pydicom.dcmread(io.BytesIO(original)).SOPInstanceUID
    before, after = pixels(original), pixels(out)  # pydicom hands out YBR as RGB
    assert before.shape == after.shape
    if target == JPEG:
        assert ds.LossyImageCompression == "01"
        assert "ISO_10918_1" in ds.LossyImageCompressionMethod
        reference = before.astype(np.float64)
        mse = float(np.mean((reference - after.astype(np.float64)) ** 2))
        assert 10 * np.log10(255**2 / max(mse, 1e-9)) > 30  # PSNR: close, and lossy
    else:
        assert np.array_equal(before, after), "a lossless target must decode to the same pixels"
        assert ds.get("LossyImageCompression", "00") == pydicom.dcmread(io.BytesIO(original)).get(
            "LossyImageCompression", "00"
        )


def test_jpeg_baseline_is_for_8_bit_only() -> None:
    pixel = transcode.description_of(pydicom.dcmread(io.BytesIO(ct16())))
    assert JPEG not in transcode.encodable_syntaxes(pixel, ELE)
    assert transcode.encodable_syntaxes(pixel, ELE) >= transcode.LOSSLESS_ENCODABLE
    assert JPEG in transcode.encodable_syntaxes(transcode.description_of(pydicom.dcmread(io.BytesIO(mono8()))), ELE)
    with pytest.raises(NotAcceptable):
        transcode.transcode_instance(ct16(), JPEG)
    # OpenJPEG's 6 resolution levels need 32 pixels a side
    tiny = transcode.description_of(pydicom.dcmread(io.BytesIO(factory.ct_instance(rows=16, cols=64))))
    assert J2K not in transcode.encodable_syntaxes(tiny, ELE)


def decode_bitstream(bitstream: bytes, transfer_syntax: str, pixel: PixelDescription) -> np.ndarray:
    arr, _ = get_decoder(UID(transfer_syntax)).as_array(
        encapsulate([bitstream]),
        rows=pixel.rows,
        columns=pixel.columns,
        samples_per_pixel=pixel.samples_per_pixel,
        bits_allocated=pixel.bits_allocated,
        bits_stored=pixel.bits_stored,
        pixel_representation=pixel.pixel_representation,
        photometric_interpretation=pixel.photometric_interpretation,
        planar_configuration=0,
        number_of_frames=1,
    )
    return arr


@pytest.mark.parametrize("kind", list(SOURCES))
@pytest.mark.parametrize("target", [RLE, JLS, J2K])
def test_frame_encode_decode_identity(kind: str, target: str) -> None:
    data = SOURCES[kind][0](ELE)
    ds = pydicom.dcmread(io.BytesIO(data))
    pixel = transcode.description_of(ds)
    size = pixel.rows * pixel.columns * pixel.samples_per_pixel * pixel.bits_allocated // 8
    native = ds.PixelData[:size]
    bitstream = transcode.encode_frame(native, pixel, target)
    assert bitstream != native
    decoded = decode_bitstream(bitstream, target, pixel)
    assert decoded.tobytes() == transcode.frame_array(native, pixel).tobytes()


# --- over HTTP ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningGateway, dict[str, bytes]]]:
    from tests.fixtures_gateway import start_gateway, stop_gateway

    gw = start_gateway(tmp_path_factory.mktemp("transcode"))
    # ct16(JLS) has the SOP Instance UID of ct16: give it its own.
    data = {"ct16": ct16(), "mono8": mono8(), "rgb8": rgb8(), "ct16-jls": _new_sop(ct16(JLS))}
    try:
        response = stow(gw.url, list(data.values()))
        assert response.status_code == 200, response.text
        yield gw, data
    finally:
        stop_gateway(gw)


def _new_sop(data: bytes) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = factory.new_uid("jls-copy")
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def url_of(gw: RunningGateway, data: bytes) -> str:
    s, se, i = uids_of(data)
    return f"{gw.url}/studies/{s}/series/{se}/instances/{i}"


@pytest.mark.parametrize(
    ("accept", "media", "syntax"),
    [
        ("image/jls", "image/jls", JLS),
        ("image/x-jls", "image/jls", JLS),
        ("image/jp2", "image/jp2", J2K),
        ("image/dicom-rle", "image/dicom-rle", RLE),
        (f"image/jls; transfer-syntax={JLS}", "image/jls", JLS),
    ],
)
@pytest.mark.parametrize("kind", ["ct16", "mono8", "rgb8", "ct16-jls"])
def test_frames_as_bare_image_media_types(
    loaded: tuple[RunningGateway, dict[str, bytes]], kind: str, accept: str, media: str, syntax: str
) -> None:
    gw, data = loaded
    response = httpx.get(url_of(gw, data[kind]) + "/frames/1", headers={"Accept": accept})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == f"{media}; transfer-syntax={syntax}"
    assert not response.content.startswith(b"--"), "a bare bitstream, not a multipart body"
    ds = pydicom.dcmread(io.BytesIO(data[kind]))
    pixel = transcode.decoded_description(transcode.description_of(ds), str(ds.file_meta.TransferSyntaxUID))
    decoded = decode_bitstream(response.content, syntax, pixel)
    first = ds.pixel_array[0] if int(ds.get("NumberOfFrames", 1)) > 1 else ds.pixel_array
    assert np.array_equal(decoded, first)


def test_frames_multipart_in_a_compressed_syntax(loaded: tuple[RunningGateway, dict[str, bytes]]) -> None:
    gw, data = loaded
    accept = f'multipart/related; type="image/jp2"; transfer-syntax={J2K}'
    response = httpx.get(url_of(gw, data["mono8"]) + "/frames/1,3", headers={"Accept": accept})
    assert response.status_code == 200, response.text
    parts = split_multipart(response)
    assert [h["content-type"] for h, _ in parts] == [f"image/jp2; transfer-syntax={J2K}"] * 2
    ds = pydicom.dcmread(io.BytesIO(data["mono8"]))
    pixel = transcode.description_of(ds)
    for (_, body), index in zip(parts, (0, 2), strict=True):
        assert np.array_equal(decode_bitstream(body, J2K, pixel), ds.pixel_array[index])


def test_lossy_only_when_named(loaded: tuple[RunningGateway, dict[str, bytes]]) -> None:
    gw, data = loaded
    ct, mono = url_of(gw, data["ct16"]), url_of(gw, data["mono8"])
    # image/jpeg without a syntax means JPEG Lossless (PS3.18 Table 8.7.3-5): not made up from baseline
    for accept in ("image/jpeg", 'multipart/related; type="image/jpeg"'):
        assert httpx.get(mono + "/frames/1", headers={"Accept": accept}).status_code == 406
    # generic Accepts get the stored (lossless) data
    response = httpx.get(mono + "/frames/1", headers={"Accept": "*/*"})
    assert response.status_code == 200
    assert f"transfer-syntax={ELE}" in split_multipart(response)[0][0]["content-type"]
    # named: served, and lossy
    named = f"image/jpeg; transfer-syntax={JPEG}"
    response = httpx.get(mono + "/frames/2", headers={"Accept": named})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == f"image/jpeg; transfer-syntax={JPEG}"
    assert response.content[:2] == b"\xff\xd8"
    # never for 16-bit data, frames or instances
    assert httpx.get(ct + "/frames/1", headers={"Accept": named}).status_code == 406
    instance_accept = f'multipart/related; type="application/dicom"; transfer-syntax={JPEG}'
    assert httpx.get(ct, headers={"Accept": instance_accept}).status_code == 406
    response = httpx.get(mono, headers={"Accept": instance_accept})
    assert response.status_code == 200
    ((_, body),) = split_multipart(response)
    assert pydicom.dcmread(io.BytesIO(body)).LossyImageCompression == "01"


def test_a_single_part_holds_one_frame(loaded: tuple[RunningGateway, dict[str, bytes]]) -> None:
    gw, data = loaded
    response = httpx.get(url_of(gw, data["mono8"]) + "/frames/1,2", headers={"Accept": "image/jls"})
    assert response.status_code == 406
    assert "multipart" in response.json()["reason"]


@pytest.mark.parametrize("target", [ELE, RLE, JLS, J2K])
@pytest.mark.parametrize("kind", ["ct16", "ct16-jls", "rgb8"])
def test_instances_in_each_syntax_over_http(
    loaded: tuple[RunningGateway, dict[str, bytes]], kind: str, target: str
) -> None:
    gw, data = loaded
    accept = f'multipart/related; type="application/dicom"; transfer-syntax={target}'
    response = httpx.get(url_of(gw, data[kind]), headers={"Accept": accept})
    assert response.status_code == 200, response.text
    ((headers, body),) = split_multipart(response)
    assert headers["content-type"] == f"application/dicom; transfer-syntax={target}"
    assert pydicom.dcmread(io.BytesIO(body)).file_meta.TransferSyntaxUID == target
    assert np.array_equal(pixels(body), pixels(data[kind]))


# --- single flight and the frame cache --------------------------------------------------------


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_single_flight_cache() -> None:
    cache: SingleFlightCache[str, bytes] = SingleFlightCache("test", max_bytes=100, size=len)
    calls = 0
    release = anyio.Event()

    async def slow() -> bytes:
        nonlocal calls
        calls += 1
        await release.wait()
        return b"x" * 10

    results: list[bytes] = []

    async def ask() -> None:
        results.append(await cache.get("k", slow))

    async with anyio.create_task_group() as tg:
        for _ in range(20):
            tg.start_soon(ask)
        await anyio.sleep(0.05)
        release.set()
    assert calls == 1
    assert results == [b"x" * 10] * 20
    assert cache.peek("k") == b"x" * 10
    # errors reach every waiter and are not cached
    failing = anyio.Event()

    async def broken() -> bytes:
        await failing.wait()
        raise NotAcceptable("no")

    errors: list[BaseException] = []

    async def ask_broken() -> None:
        try:
            await cache.get("e", broken)
        except NotAcceptable as exc:
            errors.append(exc)

    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(ask_broken)
        await anyio.sleep(0.01)
        failing.set()
    assert len(errors) == 3
    assert cache.peek("e") is None
    # a cancelled leader hands over to a waiter
    gate = anyio.Event()

    async def gated() -> bytes:
        await gate.wait()
        return b"ok"

    got: list[bytes] = []
    scopes: list[anyio.CancelScope] = []

    async def leader() -> None:
        with anyio.CancelScope() as scope:
            scopes.append(scope)
            await cache.get("c", gated)

    async def follower() -> None:
        got.append(await cache.get("c", gated))

    async with anyio.create_task_group() as tg:
        tg.start_soon(leader)
        await anyio.sleep(0.01)
        tg.start_soon(follower)
        await anyio.sleep(0.01)
        scopes[0].cancel()
        await anyio.sleep(0.01)
        gate.set()
    assert got == [b"ok"]
    # bounded: least recently used values go first; oversized values are not kept
    for i in range(12):
        await cache.get(f"v{i}", _const(b"y" * 10))
    assert cache.bytes <= 100
    assert cache.peek("v0") is None
    assert cache.peek("v11") == b"y" * 10
    await cache.get("huge", _const(b"z" * 60))
    assert cache.peek("huge") is None


def _const(value: bytes) -> object:
    async def compute() -> bytes:
        return value

    return compute


@pytest.mark.anyio
async def test_many_viewers_decode_a_frame_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = FileBlobStore(tmp_path / "objects")
    index = SqliteIndex(tmp_path / "index.sqlite3", max_results=100)
    try:
        data = ct16(JLS)
        path = tmp_path / "in.dcm"
        path.write_bytes(data)
        stored = await InstanceWriter(store, index).write(parse_part10(path, origin="stow"), path)
        reader = InstanceReader(store, index)
        record = (await reader.select(*uids_of(data)))[0]
        decodes = encodes = 0
        real_decode, real_encode = transcode.decode_frame, transcode.encode_frame

        def counting_decode(*args: object) -> bytes:
            nonlocal decodes
            decodes += 1
            time.sleep(0.05)  # a slow codec: every request arrives while it runs
            return real_decode(*args)  # type: ignore[arg-type]

        def counting_encode(*args: object, **kwargs: object) -> bytes:
            nonlocal encodes
            encodes += 1
            return real_encode(*args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(transcode, "decode_frame", counting_decode)
        monkeypatch.setattr(transcode, "encode_frame", counting_encode)
        results: list[bytes] = []

        async def viewer(target: str) -> None:
            negotiated = Negotiated("image/jp2" if target == J2K else "application/octet-stream", target, True)
            results.extend([frame async for frame in await reader.frames(record, [1], negotiated)])

        async with anyio.create_task_group() as tg:
            for i in range(24):
                tg.start_soon(viewer, J2K if i % 2 else ELE)
        assert decodes == 1, "the frame is decoded once for all"
        assert encodes == 1, "and re-encoded once per target syntax"
        assert len(results) == 24
        assert stored is not None
    finally:
        await index.aclose()
        await store.aclose()


# --- a 90 MB multi-frame instance --------------------------------------------------------------


def test_first_frame_of_a_90_mb_instance_is_fast(file_gateway: RunningGateway, tmp_path: Path) -> None:
    path = factory.write_multiframe_mb(tmp_path / "big.dcm", 90)
    assert path.stat().st_size > 90_000_000
    boundary = "bigbigbig"

    def body() -> Iterator[bytes]:
        yield f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                yield chunk
        yield f"\r\n--{boundary}--\r\n".encode()

    response = httpx.post(
        file_gateway.url + "/studies",
        content=body(),
        headers={"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    url = (
        f"{file_gateway.url}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
    )
    timings = {}
    with httpx.Client(timeout=30) as client:
        for name, accept in (
            ("as stored", "multipart/related; type=application/octet-stream; transfer-syntax=*"),
            ("JPEG-LS", "image/jls"),
            ("JPEG 2000", "image/jp2"),
        ):
            started = time.perf_counter()
            response = client.get(url + "/frames/1", headers={"Accept": accept})
            timings[name] = time.perf_counter() - started
            assert response.status_code == 200, response.text
    print(
        f"first frame of a {path.stat().st_size / 1e6:.0f} MB instance:",
        {k: f"{v * 1000:.0f} ms" for k, v in timings.items()},
    )
    assert timings["as stored"] < 0.5
    assert max(timings.values()) < 1.0
    # and it is the right frame
    raw = split_multipart(httpx.get(url + "/frames/1", headers={"Accept": "multipart/related; transfer-syntax=*"}))
    assert raw[0][1] == factory.frame_pattern(0, 512, 512)


# --- compressed storage on ingest ---------------------------------------------------------------


@pytest.mark.parametrize(("setting", "syntax"), [("jpeg-ls", JLS), ("jpeg2000", J2K), ("htj2k", HTJ2K_RPCL)])
def test_compressed_storage_on_ingest(tmp_path: Path, setting: str, syntax: str) -> None:
    from tests.fixtures_gateway import start_gateway, stop_gateway

    gw = start_gateway(tmp_path, env={"DICOMWEB_GATEWAY_STORAGE_COMPRESSION": setting})
    uploads = {
        "ct16": ct16(),
        "mr-implicit": factory.mr_instance(seed=14, rows=64, cols=64),
        "mono8": mono8(),
        "rgb8": rgb8(),
        "rle": _new_sop(ct16(RLE)),
    }
    ds_mr = pydicom.dcmread(io.BytesIO(uploads["mr-implicit"]))
    uploads["mr-implicit"] = factory.to_part10_bytes(ds_mr, ILE)
    try:
        response = stow(gw.url, list(uploads.values()))
        assert response.status_code == 200, response.text
        for name, original in uploads.items():
            s, se, i = uids_of(original)
            stored = (gw.data_dir / "objects" / "studies" / s / "series" / se / "instances" / f"{i}.dcm").read_bytes()
            source = pydicom.dcmread(io.BytesIO(original))
            kept = pydicom.dcmread(io.BytesIO(stored))
            expected = RLE if name == "rle" else syntax  # compressed uploads are kept as they are
            assert kept.file_meta.TransferSyntaxUID == expected, name
            if name != "rle":
                assert len(stored) < len(original), f"{name}: compression saves space"
            # Lossless and reversible: the original syntax comes back with the same pixels and data set.
            back = url_of(gw, original)
            original_syntax = str(source.file_meta.TransferSyntaxUID)
            accept = f'multipart/related; type="application/dicom"; transfer-syntax={original_syntax}'
            ((_, body),) = split_multipart(httpx.get(back, headers={"Accept": accept}))
            restored = pydicom.dcmread(io.BytesIO(body))
            assert restored.file_meta.TransferSyntaxUID == original_syntax
            assert np.array_equal(restored.pixel_array, source.pixel_array), name
            if name != "rle":
                assert restored.PixelData == source.PixelData, f"{name}: the very pixel bytes"
            for element in source:
                if element.keyword not in ("PixelData", "PhotometricInterpretation"):
                    assert restored[element.tag].value == element.value, (name, element.keyword)
            frame = httpx.get(
                back + "/frames/1", headers={"Accept": "multipart/related; type=application/octet-stream"}
            )
            size = len(source.PixelData) // int(source.get("NumberOfFrames", 1))
            if name != "rle":
                assert split_multipart(frame)[0][1] == source.PixelData[:size]
        # The same upload again is an identical duplicate, not a conflict.
        again = stow(gw.url, [uploads["ct16"]])
        assert again.status_code == 200, again.text
    finally:
        stop_gateway(gw)


@pytest.mark.anyio
async def test_frames_are_read_one_at_a_time_as_the_response_is_consumed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 30-frame request holds one frame in memory at a time, and a client that leaves after
    two frames costs two reads, not thirty."""
    store = FileBlobStore(tmp_path / "objects")
    index = SqliteIndex(tmp_path / "index.sqlite3", max_results=100)
    try:
        data = factory.multiframe_xa(seed=5, frames=30, rows=32, cols=32)
        path = tmp_path / "in.dcm"
        path.write_bytes(data)
        await InstanceWriter(store, index).write(parse_part10(path, origin="stow"), path)
        reader = InstanceReader(store, index)
        record = (await reader.select(*uids_of(data)))[0]
        reads = 0
        real_read_range = store.read_range

        async def counting_read_range(key: str, start: int, length: int) -> bytes:
            nonlocal reads
            reads += 1
            return await real_read_range(key, start, length)

        monkeypatch.setattr(store, "read_range", counting_read_range)
        as_stored = Negotiated("application/octet-stream", None, True)
        numbers = list(range(1, 31))

        frames = await reader.frames(record, numbers, as_stored)
        assert reads == 0  # validated, nothing read yet
        first, second = await anext(frames), await anext(frames)
        await frames.aclose()
        assert reads == 2

        pixels = pydicom.dcmread(io.BytesIO(data)).PixelData
        size = len(pixels) // 30
        assert (first, second) == (pixels[:size], pixels[size : 2 * size])
        everything = [frame async for frame in await reader.frames(record, numbers, as_stored)]
        assert b"".join(everything) == pixels
        assert reads == 2 + 30
    finally:
        await index.aclose()


@pytest.mark.anyio
async def test_frames_of_a_deflated_instance_come_from_one_read_of_the_object(tmp_path: Path) -> None:
    """Deflated Explicit VR Little Endian has no byte offsets for frames: the object is inflated
    once and the frame taken from it, byte for byte the Pixel Data."""
    store = FileBlobStore(tmp_path / "objects")
    index = SqliteIndex(tmp_path / "index.sqlite3", max_results=100)
    try:
        data = factory.deflated_instance(seed=3)
        path = tmp_path / "in.dcm"
        path.write_bytes(data)
        await InstanceWriter(store, index).write(parse_part10(path, origin="stow"), path)
        reader = InstanceReader(store, index)
        record = (await reader.select(*uids_of(data)))[0]
        assert not record.frames  # nothing to read by range
        as_stored = Negotiated("application/octet-stream", None, True)
        frames = [frame async for frame in await reader.frames(record, [1], as_stored)]
        assert frames == [pydicom.dcmread(io.BytesIO(data)).PixelData]
    finally:
        await index.aclose()


def test_jpeg_2000_encodes_from_several_threads_at_once_all_round_trip() -> None:
    """Ingest compresses parts in parallel threads; pylibjpeg-openjpeg's encoder crashed the
    process when two encodes overlapped, so the gateway runs them one at a time."""
    import concurrent.futures

    pixel = PixelDescription(rows=128, columns=128, samples_per_pixel=1, bits_allocated=16, bits_stored=12,
                             pixel_representation=0, photometric_interpretation="MONOCHROME2",
                             number_of_frames=1, planar_configuration=0)  # fmt: skip
    frames = [np.random.default_rng(seed).integers(0, 4096, (128, 128), dtype=np.uint16) for seed in range(24)]
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        encoded = list(pool.map(lambda frame: transcode.encode_frame(frame.tobytes(), pixel, J2K), frames))
    decoder = get_decoder(UID(J2K))
    for frame, codestream in zip(frames, encoded, strict=True):
        ds = pydicom.Dataset()
        ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored = 128, 128, 1, 16, 12
        ds.PixelRepresentation, ds.PhotometricInterpretation = 0, "MONOCHROME2"
        ds.PixelData = encapsulate([codestream])
        ds["PixelData"].VR = "OB"
        ds.file_meta = pydicom.dataset.FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = UID(J2K)
        decoded, _ = decoder.as_array(ds)
        assert np.array_equal(decoded, frame)
