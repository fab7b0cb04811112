"""Lossless frame codecs side by side: HTJ2K (.201 and .202 RPCL) vs JPEG-LS vs JPEG 2000.

    .venv/bin/python bench/codecs.py            # a few seconds; prints a markdown table
    .venv/bin/python bench/codecs.py --http     # and frames through a running gateway (~10 s)
    .venv/bin/python bench/viewer.py --codecs   # the codec table, from the viewer benchmark

Each codec encodes and decodes the same 512×512 16-bit CT slices (a synthetic phantom: air,
soft tissue, lungs, a bone ring and scanner-like noise, 12 bits stored) through the gateway's own
code paths (gateway.dicom.transcode.encode_frame and decode_frame: the encoders and pydicom's
decoder plugins the frame cache uses on a first request); a cached frame costs a dictionary
look-up whatever the codec. Times are medians per frame in one thread; bytes are the mean
codestream size per frame. Every decoded frame is checked equal to its source.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from gateway.dicom import transcode  # noqa: E402
from gateway.dicom.media import (  # noqa: E402
    HTJ2K_LOSSLESS,
    HTJ2K_LOSSLESS_RPCL,
    JPEG_2000_LOSSLESS,
    JPEG_LS_LOSSLESS,
)
from gateway.ports import PixelDescription  # noqa: E402

MEDIA = {
    HTJ2K_LOSSLESS: "image/jphc",
    HTJ2K_LOSSLESS_RPCL: "image/jphc",
    JPEG_LS_LOSSLESS: "image/jls",
    JPEG_2000_LOSSLESS: "image/jp2",
}

CODECS = (
    ("HTJ2K lossless", HTJ2K_LOSSLESS),
    ("HTJ2K lossless RPCL", HTJ2K_LOSSLESS_RPCL),
    ("JPEG-LS lossless", JPEG_LS_LOSSLESS),
    ("JPEG 2000 lossless", JPEG_2000_LOSSLESS),
)
SIDE = 512
PIXEL = PixelDescription(
    rows=SIDE,
    columns=SIDE,
    samples_per_pixel=1,
    bits_allocated=16,
    bits_stored=12,
    pixel_representation=1,
    photometric_interpretation="MONOCHROME2",
    planar_configuration=0,
    number_of_frames=1,
)


def phantom(seed: int) -> bytes:
    """One CT slice as stored values (HU + 1024; Rescale Intercept -1024), native little endian."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[-1 : 1 : SIDE * 1j, -1 : 1 : SIDE * 1j]
    wobble = 0.02 * np.sin(seed)
    hu = np.full((SIDE, SIDE), -1000.0)
    body = (x / 0.85) ** 2 + (y / (0.65 + wobble)) ** 2 < 1
    hu[body] = 40
    bone = body & ((x / 0.8) ** 2 + (y / (0.6 + wobble)) ** 2 > 0.9)
    hu[bone] = 700
    for side in (-1, 1):
        lung = ((x - side * 0.35) / 0.28) ** 2 + (y / 0.4) ** 2 < 1
        hu[lung] = -820
    hu += rng.normal(0, 12, hu.shape)
    stored = np.clip(np.rint(hu) + 1024, 0, 4095).astype("<i2")
    return stored.tobytes()


@dataclass(frozen=True)
class Figures:
    name: str
    syntax: str
    encode_ms: float
    decode_ms: float
    bytes_per_frame: float


def measure(name: str, syntax: str, frames: Sequence[bytes]) -> Figures:
    encode, decode, sizes = [], [], []
    for native in frames:
        start = time.perf_counter()
        bitstream = transcode.encode_frame(native, PIXEL, syntax)
        encode.append(time.perf_counter() - start)
        start = time.perf_counter()
        decoded = transcode.decode_frame(bitstream, syntax, PIXEL)
        decode.append(time.perf_counter() - start)
        if decoded != native:
            raise AssertionError(f"{name}: the decoded frame differs from its source")
        sizes.append(len(bitstream))
    encode_ms, decode_ms = statistics.median(encode) * 1e3, statistics.median(decode) * 1e3
    return Figures(name, syntax, encode_ms, decode_ms, statistics.mean(sizes))


def codec_table(slices: int = 8) -> str:
    frames = [phantom(seed) for seed in range(slices)]
    for name, syntax in CODECS[:1]:
        measure(name, syntax, frames[:1])  # warm-up: libraries loaded, first-call costs paid
    native = SIDE * SIDE * 2
    lines = [
        f"{slices} CT slices 512×512×16 bit (12 stored, synthetic phantom), {native // 1024} KiB each uncompressed; "
        "medians per frame in one thread, each decoded frame checked equal to its source.",
        "",
        "| codec | transfer syntax | encode | decode | bytes per frame | ratio |",
        "|---|---|---|---|---|---|",
    ]
    for name, syntax in CODECS:
        f = measure(name, syntax, frames)
        lines.append(
            f"| {f.name} | {f.syntax} | {f.encode_ms:.1f} ms | {f.decode_ms:.1f} ms | "
            f"{f.bytes_per_frame / 1024:.1f} KiB | {native / f.bytes_per_frame:.2f} |"
        )
    return "\n".join(lines) + "\n"


def http_table(slices: int = 8) -> str:
    """Frames through a running gateway: first (encoded on request) and cached, per codec."""
    from bench.servers import gateway_server, load
    from tests import factory

    with tempfile.TemporaryDirectory(prefix="dicomweb-codecs-bench-") as tmp_name:
        tmp = Path(tmp_name)
        study, series = factory.new_uid("codecs-bench", 0), factory.new_uid("codecs-bench", 1)
        files, sops = [], []
        for seed in range(slices):
            arr = np.frombuffer(phantom(seed), dtype="<i2").reshape(SIDE, SIDE)
            sop = factory.new_uid("codecs-bench-slice", seed)
            data = factory.image_instance(
                arr, seed=9000 + seed, bits_stored=12, modality="CT", study_uid=study, series_uid=series, sop_uid=sop
            )
            files.append(factory.write(tmp / f"{seed:04d}.dcm", data))
            sops.append(sop)
        lines = [
            f"{slices} slices STOWed uncompressed into the gateway; `/frames/1` per codec, medians per request:",
            "",
            "| codec | first request | cached | bytes per frame |",
            "|---|---|---|---|",
        ]
        with gateway_server(tmp / "gateway") as server:
            load(server, files)
            base = f"{server.base}/studies/{study}/series/{series}/instances/"
            for name, syntax in CODECS:
                accept = f"{MEDIA[syntax]}; transfer-syntax={syntax}"
                first, cached, sizes = [], [], []
                for sop in sops:
                    for times in (first, cached):
                        start = time.perf_counter()
                        response = server.client.get(f"{base}{sop}/frames/1", headers={"Accept": accept})
                        body = response.content
                        times.append(time.perf_counter() - start)
                        if response.status_code != 200:
                            raise RuntimeError(f"{name}: {response.status_code} {response.text[:200]}")
                    sizes.append(len(body))
                lines.append(
                    f"| {name} | {statistics.median(first) * 1e3:.1f} ms | {statistics.median(cached) * 1e3:.1f} ms"
                    f" | {statistics.mean(sizes) / 1024:.1f} KiB |"
                )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, default=8)
    parser.add_argument("--http", action="store_true", help="also frames through a gateway (first and cached)")
    args = parser.parse_args(argv)
    print(codec_table(args.slices))
    if args.http:
        print(http_table(args.slices))
    return 0


if __name__ == "__main__":
    sys.exit(main())
