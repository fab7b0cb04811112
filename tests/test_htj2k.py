"""High-Throughput JPEG 2000 (issue #17, parts 1-2): frames and instances in HTJ2K Lossless
(.201), HTJ2K with RPCL Options (.202) and lossy HTJ2K (.203, only when named), and HTJ2K
storage with its size policy.

Lossless output is checked by decoding it with pylibjpeg-openjpeg (OpenJPEG's HTJ2K decoder),
not with imagecodecs/OpenJPH that encoded it; the .202 codestream's RPCL order and TLM marker
are read from its bytes here, not by the gateway's own header reader.
"""

from __future__ import annotations

import io
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from openjpeg import decode as openjpeg_decode
from pydicom.encaps import generate_frames, parse_basic_offsets

from gateway.dicom import original_syntax, transcode
from gateway.dicom.media import EXPLICIT_VR_LITTLE_ENDIAN as ELE
from gateway.dicom.media import HTJ2K as HTJ2K_LOSSY
from gateway.dicom.media import HTJ2K_LOSSLESS as HT
from gateway.dicom.media import HTJ2K_LOSSLESS_RPCL as HT_RPCL
from gateway.dicom.media import IMPLICIT_VR_LITTLE_ENDIAN as ILE
from gateway.dicom.media import JPEG_2000_LOSSLESS as J2K
from gateway.dicom.media import JPEG_LS_LOSSLESS as JLS
from gateway.dicom.media import RLE_LOSSLESS as RLE
from gateway.ports import PixelDescription
from gateway.settings import SettingsError, load_settings
from tests import factory
from tests.fixtures_gateway import RunningGateway, start_gateway, stop_gateway
from tests.http_helpers import split_multipart, stow, uids_of

LOSSLESS = (HT, HT_RPCL)


def _pixels(seed: int, shape: tuple[int, ...], low: int, high: int, dtype: type, *, colour: bool = False) -> np.ndarray:
    """A diagonal ramp from ``low`` to ``high`` plus noise: compresses like an image, and reaches
    both ends of the range (so sign and top bits are exercised)."""
    rows, cols = (shape[-3], shape[-2]) if colour else (shape[-2], shape[-1])
    ramp = np.add.outer(np.arange(rows), np.arange(cols)) / max(1, rows + cols - 2)
    if colour:
        ramp = ramp[..., None]
    noise = np.random.default_rng(seed).integers(0, 16, size=shape)
    return np.clip(low + ramp * (high - low) + noise, low, high).astype(dtype)


def _instance(arr: np.ndarray, seed: int, **kwargs: object) -> bytes:
    return factory.image_instance(arr, seed=seed, **kwargs)  # type: ignore[arg-type]


# Every photometric interpretation and bit depth the other lossless codecs (JPEG-LS, JPEG 2000)
# take here: 8 and 16 bits, signed and unsigned, Bits Stored below Bits Allocated, monochrome
# (1 and 2), RGB, multi-frame.
SOURCES = {
    "ct16-signed-12bit": lambda: _instance(
        _pixels(1, (48, 40), -2048, 2047, np.int16), 101, bits_stored=12, modality="CT"
    ),
    "u16-full": lambda: _instance(_pixels(2, (40, 48), 0, 65535, np.uint16), 102),
    "s16-full": lambda: _instance(_pixels(3, (40, 48), -32768, 32767, np.int16), 103),
    "u16-10bit-mono1": lambda: _instance(
        _pixels(4, (33, 47), 0, 1023, np.uint16), 104, bits_stored=10, photometric="MONOCHROME1"
    ),
    "u8": lambda: _instance(_pixels(5, (40, 48), 0, 255, np.uint8), 105),
    "s8": lambda: _instance(_pixels(6, (40, 48), -128, 127, np.int8), 106),
    "u8-multiframe": lambda: _instance(_pixels(7, (3, 40, 48), 0, 255, np.uint8), 107),
    "rgb8": lambda: _instance(_pixels(8, (32, 40, 3), 0, 255, np.uint8, colour=True), 108, photometric="RGB"),
    "ybr-full8": lambda: _instance(
        _pixels(12, (32, 40, 3), 0, 255, np.uint8, colour=True), 112, photometric="YBR_FULL"
    ),
    "rgb16": lambda: _instance(_pixels(9, (32, 40, 3), 0, 65535, np.uint16, colour=True), 109, photometric="RGB"),
    "tiny-3x3": lambda: _instance(_pixels(10, (3, 3), 0, 255, np.uint8), 110),
}


def native_frames(data: bytes) -> list[np.ndarray]:
    """The source's frames as the encoder is given them (values within Bits Stored)."""
    ds = pydicom.dcmread(io.BytesIO(data))
    pixel = transcode.description_of(ds)
    size = pixel.rows * pixel.columns * pixel.samples_per_pixel * pixel.bits_allocated // 8
    stored = ds.PixelData
    return [transcode.frame_array(stored[i * size : (i + 1) * size], pixel) for i in range(pixel.number_of_frames)]


def main_header_markers(codestream: bytes) -> list[tuple[int, bytes]]:
    """(marker, segment body) of the main header, read independently of gateway.dicom.htj2k."""
    assert codestream[:2] == b"\xff\x4f", "SOC"
    out, at = [], 2
    while True:
        marker, length = struct.unpack_from(">HH", codestream, at)
        if marker == 0xFF90:  # SOT: the first tile-part
            return out
        out.append((marker, codestream[at + 4 : at + 2 + length]))
        at += 2 + length


# --- codec --------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", LOSSLESS)
@pytest.mark.parametrize("kind", list(SOURCES))
def test_lossless_frames_decode_to_the_source_pixels_with_openjpeg(kind: str, target: str) -> None:
    data = SOURCES[kind]()
    ds = pydicom.dcmread(io.BytesIO(data))
    pixel = transcode.description_of(ds)
    size = pixel.rows * pixel.columns * pixel.samples_per_pixel * pixel.bits_allocated // 8
    assert target in transcode.encodable_syntaxes(pixel, ELE)
    for number, expected in enumerate(native_frames(data)):
        bitstream = transcode.encode_frame(ds.PixelData[number * size : (number + 1) * size], pixel, target)
        decoded = openjpeg_decode(bitstream)
        assert decoded.shape == expected.shape
        assert np.array_equal(decoded.astype(expected.dtype), expected), f"{kind} frame {number + 1}"


@pytest.mark.parametrize("kind", list(SOURCES))
def test_lossless_instances_read_back_identical_in_pydicom(kind: str) -> None:
    data = SOURCES[kind]()
    source = pydicom.dcmread(io.BytesIO(data))
    source.LossyImageCompression = "00"
    buf = io.BytesIO()
    source.save_as(buf, enforce_file_format=True)
    for target in LOSSLESS:
        out = pydicom.dcmread(io.BytesIO(transcode.transcode_instance(buf.getvalue(), target)))
        assert out.file_meta.TransferSyntaxUID == target
        assert out.SOPInstanceUID == source.SOPInstanceUID
        assert out.LossyImageCompression == "00", "lossless keeps the source's Lossy Image Compression"
        assert "LossyImageCompressionMethod" not in out
        assert out.PhotometricInterpretation == source.PhotometricInterpretation
        assert np.array_equal(out.pixel_array, source.pixel_array), kind


def test_rpcl_codestream_has_rpcl_order_and_tlm_markers() -> None:
    data = SOURCES["ct16-signed-12bit"]()
    ds = pydicom.dcmread(io.BytesIO(data))
    pixel = transcode.description_of(ds)
    rpcl = transcode.encode_frame(ds.PixelData, pixel, HT_RPCL)
    markers = dict(main_header_markers(rpcl))
    assert 0xFF55 in markers, "TLM marker segment (PS3.5 10.18)"
    cod = markers[0xFF52]
    assert cod[1] == 2, "COD SGcod progression order: RPCL"
    assert cod[9] == 1, "reversible 5/3 wavelet (SPcod transformation)"
    # Tile-parts are cut at each resolution: one SOT per resolution (decomposition levels + 1),
    # each listed in the TLM marker segment.
    tile_parts = cod[5] + 1
    assert tile_parts > 1
    assert rpcl.count(b"\xff\x90") >= tile_parts
    # .201 needs neither; and both carry the HT block coder (Ccap15 in the CAP marker, 0xFF50).
    plain = dict(main_header_markers(transcode.encode_frame(ds.PixelData, pixel, HT)))
    assert 0xFF50 in plain
    assert 0xFF50 in markers


def test_rpcl_lowest_resolution_is_at_most_64_pixels_a_side() -> None:
    # PS3.5 10.18: enough decompositions for a thumbnail-sized lowest resolution.
    tall = _pixels(14, (3000, 40), 0, 4095, np.uint16)
    data = _instance(tall, 114, bits_stored=12)
    ds = pydicom.dcmread(io.BytesIO(data))
    rpcl = transcode.encode_frame(ds.PixelData, transcode.description_of(ds), HT_RPCL)
    levels = dict(main_header_markers(rpcl))[0xFF52][5]
    assert -(-3000 // (1 << levels)) <= 64
    assert np.array_equal(openjpeg_decode(rpcl), tall)
    # the default five suffice for 512 x 512 (512 / 32 = 16)
    square = transcode.encode_frame(bytes(512 * 512 * 2), PIXEL_512, HT_RPCL)
    assert dict(main_header_markers(square))[0xFF52][5] == 5


PIXEL_512 = PixelDescription(
    rows=512,
    columns=512,
    samples_per_pixel=1,
    bits_allocated=16,
    bits_stored=16,
    pixel_representation=0,
    photometric_interpretation="MONOCHROME2",
    planar_configuration=0,
    number_of_frames=1,
)


def test_lossy_htj2k_is_marked_lossy_and_close() -> None:
    data = factory.image_instance(
        (factory.gradient(96, 96, 3000) - 1024).astype(np.int16), seed=120, bits_stored=12, modality="CT"
    )
    out = pydicom.dcmread(io.BytesIO(transcode.transcode_instance(data, HTJ2K_LOSSY)))
    source = pydicom.dcmread(io.BytesIO(data))
    assert out.LossyImageCompression == "01"
    assert out.LossyImageCompressionMethod == "ISO_15444_15"
    assert float(out.LossyImageCompressionRatio) > 1  # one value: the source was not lossy
    cod = dict(main_header_markers(next(generate_frames(out.PixelData))))[0xFF52]
    assert cod[9] == 0, "irreversible 9/7 wavelet"
    error = source.pixel_array.astype(np.float64) - out.pixel_array.astype(np.float64)
    assert 10 * np.log10(4095**2 / max(float(np.mean(error**2)), 1e-9)) > 40  # PSNR


def test_32_bit_samples_are_refused() -> None:
    data = factory.image_instance(_pixels(11, (16, 16), 0, 1 << 31, np.uint32), seed=111)
    pixel = transcode.description_of(pydicom.dcmread(io.BytesIO(data)))
    for target in (HT, HT_RPCL, HTJ2K_LOSSY):
        assert target not in transcode.encodable_syntaxes(pixel, ELE)
        with pytest.raises(Exception, match="cannot be encoded"):
            transcode.transcode_instance(data, target)


def test_part10_has_a_basic_offset_table_and_dcmdump_parses_it(tmp_path: Path) -> None:
    data = SOURCES["u8-multiframe"]()
    out = transcode.transcode_instance(data, HT_RPCL)
    ds = pydicom.dcmread(io.BytesIO(out))
    fp = io.BytesIO(ds.PixelData)
    offsets = parse_basic_offsets(fp)
    assert offsets[0] == 0, "a Basic Offset Table (PS3.5 A.4)"
    assert len(offsets) == 3, "one offset per frame"
    frames = list(generate_frames(ds.PixelData, number_of_frames=3))
    for frame, expected in zip(frames, native_frames(data), strict=True):
        assert np.array_equal(openjpeg_decode(frame), expected)
    path = tmp_path / "htj2k.dcm"
    path.write_bytes(out)
    # Debian's DCMTK 3.6.7 does not know the HTJ2K syntaxes by name but parses the file.
    dumped = subprocess.run(["dcmdump", "-M", str(path)], capture_output=True, text=True, check=True, timeout=60)
    assert HT_RPCL in dumped.stdout
    assert "PixelData" in dumped.stdout
    assert "(fffe,e000) pi" in dumped.stdout, "the encapsulated items"
    assert "E:" not in dumped.stderr


@pytest.mark.parametrize("stored", [JLS, J2K, RLE])
def test_compressed_instances_transcode_to_htj2k_and_back(stored: str) -> None:
    source = factory.image_instance(
        _pixels(13, (48, 40), -2048, 2047, np.int16), seed=113, bits_stored=12, transfer_syntax=stored
    )
    expected = pydicom.dcmread(io.BytesIO(source)).pixel_array
    for target in LOSSLESS:
        ht = transcode.transcode_instance(source, target)
        assert np.array_equal(pydicom.dcmread(io.BytesIO(ht)).pixel_array, expected)
        # and HTJ2K as the stored syntax decodes to Explicit VR Little Endian and to JPEG-LS
        for onward in (ELE, JLS):
            out = pydicom.dcmread(io.BytesIO(transcode.transcode_instance(ht, onward)))
            assert out.file_meta.TransferSyntaxUID == onward
            assert np.array_equal(out.pixel_array, expected)


# --- over HTTP ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningGateway, dict[str, bytes]]]:
    gw = start_gateway(tmp_path_factory.mktemp("htj2k"))
    data = {kind: SOURCES[kind]() for kind in ("ct16-signed-12bit", "u8-multiframe", "rgb8")}
    data["u32"] = factory.image_instance(_pixels(12, (16, 16), 0, 1 << 31, np.uint32), seed=112)
    try:
        response = stow(gw.url, list(data.values()))
        assert response.status_code == 200, response.text
        yield gw, data
    finally:
        stop_gateway(gw)


def url_of(gw: RunningGateway, data: bytes) -> str:
    s, se, i = uids_of(data)
    return f"{gw.url}/studies/{s}/series/{se}/instances/{i}"


@pytest.mark.parametrize(
    ("accept", "media", "syntax"),
    [
        ("image/jphc", "image/jphc", HT),
        (f"image/jphc; transfer-syntax={HT_RPCL}", "image/jphc", HT_RPCL),
        (f'multipart/related; type="application/octet-stream"; transfer-syntax={HT_RPCL}', None, HT_RPCL),
        (f'multipart/related; type="application/octet-stream"; transfer-syntax={HT}', None, HT),
        (f'multipart/related; type="image/jphc"; transfer-syntax={HT_RPCL}', None, HT_RPCL),
        ('multipart/related; type="image/jphc"', None, HT),
    ],
)
@pytest.mark.parametrize("kind", ["ct16-signed-12bit", "u8-multiframe", "rgb8"])
def test_frames_in_htj2k_over_http(
    loaded: tuple[RunningGateway, dict[str, bytes]], kind: str, accept: str, media: str | None, syntax: str
) -> None:
    gw, data = loaded
    response = httpx.get(url_of(gw, data[kind]) + "/frames/1", headers={"Accept": accept})
    assert response.status_code == 200, response.text
    if media is not None:
        assert response.headers["content-type"] == f"{media}; transfer-syntax={syntax}"
        body = response.content
    else:
        ((headers, body),) = split_multipart(response)
        assert headers["content-type"].endswith(f"; transfer-syntax={syntax}")
    assert np.array_equal(openjpeg_decode(body), native_frames(data[kind])[0])
    if syntax == HT_RPCL:
        assert 0xFF55 in dict(main_header_markers(body))


def test_several_frames_multipart_rpcl(loaded: tuple[RunningGateway, dict[str, bytes]]) -> None:
    gw, data = loaded
    accept = f'multipart/related; type="application/octet-stream"; transfer-syntax={HT_RPCL}'
    response = httpx.get(url_of(gw, data["u8-multiframe"]) + "/frames/3,1", headers={"Accept": accept})
    assert response.status_code == 200, response.text
    parts = split_multipart(response)
    expected = native_frames(data["u8-multiframe"])
    for (_, body), index in zip(parts, (2, 0), strict=True):
        assert 0xFF55 in dict(main_header_markers(body))
        assert np.array_equal(openjpeg_decode(body), expected[index])


@pytest.mark.parametrize("target", [HT, HT_RPCL])
@pytest.mark.parametrize("kind", ["ct16-signed-12bit", "u8-multiframe", "rgb8"])
def test_instances_in_htj2k_over_http(loaded: tuple[RunningGateway, dict[str, bytes]], kind: str, target: str) -> None:
    gw, data = loaded
    accept = f'multipart/related; type="application/dicom"; transfer-syntax={target}'
    response = httpx.get(url_of(gw, data[kind]), headers={"Accept": accept})
    assert response.status_code == 200, response.text
    ((headers, body),) = split_multipart(response)
    assert headers["content-type"] == f"application/dicom; transfer-syntax={target}"
    ds = pydicom.dcmread(io.BytesIO(body))
    assert ds.file_meta.TransferSyntaxUID == target
    assert ds.get("LossyImageCompression") is None
    assert np.array_equal(ds.pixel_array, pydicom.dcmread(io.BytesIO(data[kind])).pixel_array)


def test_lossy_htj2k_only_when_named(loaded: tuple[RunningGateway, dict[str, bytes]]) -> None:
    gw, data = loaded
    ct = url_of(gw, data["ct16-signed-12bit"])
    # image/jphc alone means HTJ2K Lossless (PS3.18 Table 8.7.3-5), never the lossy syntax
    response = httpx.get(ct + "/frames/1", headers={"Accept": "image/jphc"})
    assert response.headers["content-type"] == f"image/jphc; transfer-syntax={HT}"
    named = httpx.get(ct + "/frames/1", headers={"Accept": f"image/jphc; transfer-syntax={HTJ2K_LOSSY}"})
    assert named.status_code == 200, named.text
    assert named.headers["content-type"] == f"image/jphc; transfer-syntax={HTJ2K_LOSSY}"
    accept = f'multipart/related; type="application/dicom"; transfer-syntax={HTJ2K_LOSSY}'
    ((_, body),) = split_multipart(httpx.get(ct, headers={"Accept": accept}))
    assert pydicom.dcmread(io.BytesIO(body)).LossyImageCompression == "01"


def test_what_htj2k_cannot_hold_is_not_acceptable(loaded: tuple[RunningGateway, dict[str, bytes]]) -> None:
    gw, data = loaded
    u32 = url_of(gw, data["u32"])
    response = httpx.get(u32 + "/frames/1", headers={"Accept": "image/jphc"})
    assert response.status_code == 406
    instance = httpx.get(u32, headers={"Accept": f'multipart/related; type="application/dicom"; transfer-syntax={HT}'})
    assert instance.status_code == 406
    assert HT in instance.json()["reason"]
    # a UID of another media type
    ct = url_of(gw, data["ct16-signed-12bit"])
    assert httpx.get(ct + "/frames/1", headers={"Accept": f"image/jphc; transfer-syntax={JLS}"}).status_code == 406


# --- storage ------------------------------------------------------------------------------------


def _stored_object(gw: RunningGateway, data: bytes) -> pydicom.Dataset:
    s, se, i = uids_of(data)
    path = gw.data_dir / "objects" / "studies" / s / "series" / se / "instances" / f"{i}.dcm"
    return pydicom.dcmread(path)


def test_htj2k_storage_keeps_the_pixels_and_records_the_received_syntax(tmp_path: Path) -> None:
    gw = start_gateway(tmp_path, env={"DICOMWEB_GATEWAY_STORAGE_COMPRESSION": "htj2k"})
    ct = SOURCES["ct16-signed-12bit"]()
    implicit = factory.to_part10_bytes(pydicom.dcmread(io.BytesIO(SOURCES["rgb8"]())), ILE)
    try:
        assert stow(gw.url, [ct, implicit]).status_code == 200
        for original, received in ((ct, ELE), (implicit, ILE)):
            kept = _stored_object(gw, original)
            assert kept.file_meta.TransferSyntaxUID == HT_RPCL
            assert original_syntax.recorded(kept.file_meta) == received
            source = pydicom.dcmread(io.BytesIO(original))
            # Sent back in the syntax it came in: the very pixel bytes, and no note of storage.
            accept = f'multipart/related; type="application/dicom"; transfer-syntax={received}'
            ((_, body),) = split_multipart(httpx.get(url_of(gw, original), headers={"Accept": accept}))
            restored = pydicom.dcmread(io.BytesIO(body))
            assert restored.file_meta.TransferSyntaxUID == received
            assert restored.PixelData == source.PixelData
            assert original_syntax.recorded(restored.file_meta) is None
            # As stored: the HTJ2K object itself, note included.
            as_stored = 'multipart/related; type="application/dicom"; transfer-syntax=*'
            ((_, stored_body),) = split_multipart(httpx.get(url_of(gw, original), headers={"Accept": as_stored}))
            assert original_syntax.recorded(pydicom.dcmread(io.BytesIO(stored_body)).file_meta) == received
            # Frames: decoded from the stored codestream to the uncompressed bytes received, or as stored.
            octet = httpx.get(
                url_of(gw, original) + "/frames/1",
                headers={"Accept": "multipart/related; type=application/octet-stream"},
            )
            assert split_multipart(octet)[0][1] == source.PixelData
            raw = httpx.get(url_of(gw, original) + "/frames/1", headers={"Accept": "image/jphc; transfer-syntax=*"})
            assert raw.headers["content-type"] == f"image/jphc; transfer-syntax={HT_RPCL}"
            assert raw.content == next(generate_frames(kept.PixelData))
        # The same upload again is an identical duplicate (the encoder is deterministic).
        assert stow(gw.url, [ct]).status_code == 200
    finally:
        stop_gateway(gw)


def test_size_policy_stores_small_frames_in_jpeg_ls_and_large_in_htj2k(tmp_path: Path) -> None:
    env = {
        "DICOMWEB_GATEWAY_STORAGE_COMPRESSION": "htj2k",
        "DICOMWEB_GATEWAY_STORAGE_COMPRESSION_SMALL": "jpeg-ls",
        # 64x64 16-bit frames (8 KiB) are small, 128x128 (32 KiB) are not
        "DICOMWEB_GATEWAY_STORAGE_COMPRESSION_SMALL_BELOW": str(16 << 10),
    }
    gw = start_gateway(tmp_path, env=env)
    small = factory.ct_instance(seed=130, rows=64, cols=64)
    large = factory.ct_instance(seed=131, rows=128, cols=128)
    try:
        assert stow(gw.url, [small, large]).status_code == 200
        assert _stored_object(gw, small).file_meta.TransferSyntaxUID == JLS
        assert _stored_object(gw, large).file_meta.TransferSyntaxUID == HT_RPCL
        for data in (small, large):
            assert original_syntax.recorded(_stored_object(gw, data).file_meta) == ELE
            assert np.array_equal(_stored_object(gw, data).pixel_array, pydicom.dcmread(io.BytesIO(data)).pixel_array)
    finally:
        stop_gateway(gw)


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"DICOMWEB_GATEWAY_STORAGE_COMPRESSION": "htj2k-lossy"}, "storage_compression"),
        ({"DICOMWEB_GATEWAY_STORAGE_COMPRESSION_SMALL": "jpeg"}, "storage_compression_small"),
        ({"DICOMWEB_GATEWAY_STORAGE_COMPRESSION_SMALL_BELOW": "-1"}, "storage_compression_small_below"),
    ],
)
def test_storage_compression_settings_are_checked(environ: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        load_settings(environ=environ)
    assert load_settings(environ={"DICOMWEB_GATEWAY_STORAGE_COMPRESSION": "htj2k"}).storage_compression == "htj2k"
