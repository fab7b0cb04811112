"""Content codings of DICOM JSON answers (RFC 9110 8.4, 12.5.3): which one a client accepts, and
an incremental encoder for each.

QIDO results and metadata are text that shrinks several-fold (a series' metadata repeats the
same attribute names in every instance), and on a slow link they are most of a viewer's wait
before its first image. Pixel data is not coded: it is noise or already compressed, and coding
it costs far more CPU than it saves (the middleware codes JSON media types only).
"""

from __future__ import annotations

import zlib
from typing import Protocol

import brotli
import zstandard

# Preferred first when a client accepts several at the same q: br and zstd both shrink a series
# metadata two to three times as far as gzip, at a similar cost (bench/json_size.py).
CODINGS = ("br", "zstd", "gzip")


class Encoder(Protocol):
    def compress(self, data: bytes) -> bytes: ...

    def flush(self) -> bytes:
        """What makes everything compressed so far decodable by the client (a streamed body)."""
        ...

    def finish(self) -> bytes: ...


class _Gzip:
    def __init__(self) -> None:
        self._z = zlib.compressobj(6, zlib.DEFLATED, 31)  # wbits 31: the gzip wrapper (RFC 1952)

    def compress(self, data: bytes) -> bytes:
        return self._z.compress(data)

    def flush(self) -> bytes:
        return self._z.flush(zlib.Z_SYNC_FLUSH)

    def finish(self) -> bytes:
        return self._z.flush(zlib.Z_FINISH)


class _Brotli:
    def __init__(self) -> None:
        # Quality 5 of 11: most of brotli's gain on JSON at a cost close to gzip's.
        self._c = brotli.Compressor(quality=5)

    def compress(self, data: bytes) -> bytes:
        out: bytes = self._c.process(data)
        return out

    def flush(self) -> bytes:
        out: bytes = self._c.flush()
        return out

    def finish(self) -> bytes:
        out: bytes = self._c.finish()
        return out


class _Zstd:
    def __init__(self) -> None:
        self._c = zstandard.ZstdCompressor(level=3).compressobj()

    def compress(self, data: bytes) -> bytes:
        return self._c.compress(data)

    def flush(self) -> bytes:
        return self._c.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)

    def finish(self) -> bytes:
        return self._c.flush(zstandard.COMPRESSOBJ_FLUSH_FINISH)


_ENCODERS: dict[str, type[Encoder]] = {"gzip": _Gzip, "br": _Brotli, "zstd": _Zstd}


def new_encoder(coding: str) -> Encoder:
    return _ENCODERS[coding]()


def chosen_coding(accept_encoding: str | None) -> str | None:
    """The coding to send for this ``Accept-Encoding`` value, or None for none (identity).

    q-values are honoured (``q=0``: not acceptable), ``*`` stands for every coding not named,
    and among the acceptable codings with the highest q the gateway's preference decides."""
    if not accept_encoding:
        return None
    weights: dict[str, float] = {}
    for item in accept_encoding.split(","):
        name, _, params = item.partition(";")
        name = name.strip().lower()
        if not name:
            continue
        q = _quality(params)
        if q is None:
            continue  # a malformed weight: the item is ignored
        weights[name] = q
    if "x-gzip" in weights and "gzip" not in weights:
        weights["gzip"] = weights["x-gzip"]  # RFC 9110 8.4.1.3: the same coding
    star = weights.get("*", 0.0)
    best: tuple[float, int] | None = None
    chosen = None
    for rank, coding in enumerate(CODINGS):
        q = weights.get(coding, star)
        if q > 0 and (best is None or (q, -rank) > best):
            best, chosen = (q, -rank), coding
    return chosen


def _quality(params: str) -> float | None:
    """The ``q`` of one Accept-Encoding item (1 when absent), None when it is not a weight."""
    for param in params.split(";"):
        key, _, value = param.partition("=")
        if key.strip().lower() != "q":
            continue
        value = value.strip()
        # RFC 9110 12.4.2: 0 to 1 with at most three decimals.
        if not value or len(value) > 5 or not value.replace(".", "", 1).isdigit():
            return None
        q = float(value)
        return q if 0 <= q <= 1 else None
    return 1.0
