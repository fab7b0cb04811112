"""Streaming multipart/related reader and writer (gateway/dicom/multipart.py)."""

from __future__ import annotations

import contextlib
import os
import random
import re
import tempfile
import time
import tracemalloc
from collections.abc import AsyncIterator, Iterable, Sequence
from pathlib import Path

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.dicom.multipart import (
    Headers,
    MultipartLimits,
    OutPart,
    Part,
    content_type_for_multipart,
    iter_parts,
    multipart_length,
    multipart_stream,
    new_boundary,
)
from gateway.errors import BadRequest, PayloadTooLarge

B = "gateway-test-boundary"
BB = B.encode()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# --- helpers ----------------------------------------------------------------------------------


async def from_chunks(chunks: Iterable[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


def split(data: bytes, sizes: Sequence[int]) -> list[bytes]:
    """Cut ``data`` into chunks of the given sizes, cycling through them."""
    out, i, k = [], 0, 0
    while i < len(data):
        n = max(1, sizes[k % len(sizes)])
        out.append(data[i : i + n])
        i, k = i + n, k + 1
    return out


def body_of(parts: Sequence[tuple[str, bytes]], boundary: str = B) -> bytes:
    out = b""
    for content_type, data in parts:
        out += f"--{boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode() + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


async def read_all(
    chunks: Iterable[bytes],
    spool: Path,
    boundary: bytes = BB,
    limits: MultipartLimits | None = None,
) -> list[tuple[Headers, bytes]]:
    """Consume every part, reading each file while it is current; check nothing is left behind."""
    got = []
    try:
        async with contextlib.aclosing(iter_parts(from_chunks(chunks), boundary, spool_dir=spool, limits=limits)) as it:
            async for part in it:
                assert part.path.parent == spool
                data = part.path.read_bytes()
                assert len(data) == part.size
                assert part.index == len(got)
                got.append((part.headers, data))
    finally:
        assert os.listdir(spool) == []
    return got


async def write_all(parts: Iterable[OutPart], boundary: str = B) -> bytes:
    return b"".join([chunk async for chunk in multipart_stream(parts, boundary)])


# --- writer -----------------------------------------------------------------------------------


@pytest.mark.anyio
@settings(max_examples=40, deadline=None)
@given(
    bodies=st.lists(st.binary(max_size=300), max_size=5),
    content_type=st.sampled_from(["application/dicom", 'application/dicom; transfer-syntax="1.2.840.10008.1.2.1"']),
)
async def test_multipart_length_is_the_length_written(bodies: list[bytes], content_type: str) -> None:
    """What a response announces as its Content-Length is exactly what the writer writes,
    small bodies (sent with their headers) and large ones, and no parts at all."""
    written = await write_all([(content_type, body) for body in bodies])
    assert multipart_length([(content_type, len(body)) for body in bodies], B) == len(written)


@pytest.mark.anyio
async def test_writer_exact_bytes() -> None:
    async def body() -> AsyncIterator[bytes]:
        yield b"hello"
        yield b""
        yield b" world"

    out = await write_all(
        [
            ("application/dicom; transfer-syntax=1.2.840.10008.1.2.1", b"abc"),
            ("application/octet-stream", body(), {"Content-Location": "/studies/1/frames/1"}),
            ("text/plain", b""),
        ]
    )
    assert out == (
        b"--gateway-test-boundary\r\n"
        b"Content-Type: application/dicom; transfer-syntax=1.2.840.10008.1.2.1\r\n"
        b"\r\n"
        b"abc\r\n"
        b"--gateway-test-boundary\r\n"
        b"Content-Type: application/octet-stream\r\n"
        b"Content-Location: /studies/1/frames/1\r\n"
        b"\r\n"
        b"hello world\r\n"
        b"--gateway-test-boundary\r\n"
        b"Content-Type: text/plain\r\n"
        b"\r\n"
        b"\r\n"
        b"--gateway-test-boundary--\r\n"
    )


@pytest.mark.anyio
async def test_writer_with_no_parts_sends_only_the_close_delimiter() -> None:
    assert await write_all([]) == b"--gateway-test-boundary--\r\n"


@pytest.mark.anyio
async def test_writer_passes_large_bodies_through_without_copying() -> None:
    big = os.urandom(1 << 20)
    chunk = os.urandom(100_000)

    async def body() -> AsyncIterator[bytes]:
        yield chunk

    out = [c async for c in multipart_stream([("a/b", big), ("c/d", body())], B)]
    assert any(c is big for c in out)
    assert any(c is chunk for c in out)
    assert max(len(c) for c in out if c is not big and c is not chunk) < 200


@pytest.mark.anyio
async def test_writer_accepts_async_iterable_of_parts() -> None:
    async def parts() -> AsyncIterator[OutPart]:
        yield ("a/b", b"1")
        yield ("a/b", b"2")

    out = b"".join([c async for c in multipart_stream(parts(), B)])
    assert out == body_of([("a/b", b"1"), ("a/b", b"2")])


@pytest.mark.anyio
async def test_writer_closes_upstream_when_closed_early() -> None:
    closed: list[str] = []

    async def body() -> AsyncIterator[bytes]:
        try:
            for _ in range(10):
                yield b"x" * 10
        finally:
            closed.append("body")

    async def parts() -> AsyncIterator[OutPart]:
        try:
            yield ("a/b", body())
            yield ("a/b", b"never")
        finally:
            closed.append("parts")

    async with contextlib.aclosing(multipart_stream(parts(), B)) as stream:
        async for chunk in stream:
            if chunk == b"x" * 10:
                break
    assert closed == ["body", "parts"]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("boundary", "content_type", "extra"),
    [
        ("", "a/b", {}),
        ("x" * 71, "a/b", {}),
        ("ends-with-space ", "a/b", {}),
        ("bad\r\nboundary", "a/b", {}),
        (B, "a/b\r\nX-Injected: 1", {}),
        (B, "a/b", {"X-Bad": "1\r\n2"}),
        (B, "a/b", {"Bad Name": "1"}),
        (B, "a/b", {"content-type": "c/d"}),
        (B, "a/b", {"X-Unicode": "\u20ac"}),
    ],
)
async def test_writer_rejects_bad_boundary_and_headers(boundary: str, content_type: str, extra: dict[str, str]) -> None:
    with pytest.raises(ValueError, match=r"boundary|header"):
        await write_all([(content_type, b"x", extra)], boundary)


def test_new_boundary() -> None:
    seen = {new_boundary() for _ in range(100)}
    assert len(seen) == 100
    for boundary in seen:
        assert re.fullmatch(r"[0-9A-Za-z-]{1,70}", boundary)


def test_content_type_for_multipart() -> None:
    assert (
        content_type_for_multipart("application/dicom", None, "abc")
        == 'multipart/related; type="application/dicom"; boundary=abc'
    )
    assert (
        content_type_for_multipart("application/dicom", "1.2.840.10008.1.2.1", "abc")
        == 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.1; boundary=abc'
    )
    assert (
        content_type_for_multipart("application/octet-stream", "*", "a b")
        == 'multipart/related; type="application/octet-stream"; boundary="a b"'
    )
    with pytest.raises(ValueError, match="boundary"):
        content_type_for_multipart("application/dicom", None, "")


# --- reader: well-formed input ----------------------------------------------------------------


@pytest.mark.anyio
async def test_reader_basic(tmp_path: Path) -> None:
    body = (
        b"--gateway-test-boundary\r\n"
        b"content-type: application/dicom\r\n"
        b"Content-Location:   /x  \r\n"
        b"X-Twice: 1\r\n"
        b"x-twice: 2\r\n"
        b"\r\n"
        b"DICM\r\n"
        b"--gateway-test-boundary\r\n"
        b"\r\n"
        b"no headers\r\n"
        b"--gateway-test-boundary--\r\n"
    )
    (first, h1), (second, h2) = await read_all([body], tmp_path)
    assert h1 == b"DICM"
    assert first["Content-Type"] == "application/dicom"
    assert first["CONTENT-LOCATION"] == "/x"
    assert first["x-twice"] == "1, 2"
    assert "content-location" in first
    assert 42 not in first
    assert len(first) == 3
    assert set(first) == {"content-type", "content-location", "x-twice"}
    assert first.raw[0] == ("content-type", "application/dicom")
    assert "X-Twice" in repr(first)
    assert h2 == b"no headers"
    assert len(second) == 0


@pytest.mark.anyio
async def test_reader_part_properties(tmp_path: Path) -> None:
    chunks = [body_of([("application/dicom", b"abc"), ("", b"")])]
    async with contextlib.aclosing(iter_parts(from_chunks(chunks), BB, spool_dir=tmp_path)) as it:
        part = await anext(it)
        assert isinstance(part, Part)
        assert part.content_type == "application/dicom"
        with part.open() as f:
            assert f.read() == b"abc"
        part2 = await anext(it)
        assert part2.content_type == ""
        assert part2.size == 0
    assert os.listdir(tmp_path) == []


@pytest.mark.anyio
async def test_reader_preamble_epilogue_and_padding(tmp_path: Path) -> None:
    body = (
        b"This is the preamble. --gateway-test-boundary is not at a line start.\r\n"
        b"--gateway-test-boundary  \t\r\n"  # transport padding (RFC 2046 5.1.1)
        b"Content-Type: a/b\r\n\r\n"
        b"one\r\n"
        b"--gateway-test-boundary--\r\n"
        b"This is the epilogue, ignored.\r\n--gateway-test-boundary\r\n"
    )
    got = await read_all(split(body, [3, 1, 7]), tmp_path)
    assert [data for _, data in got] == [b"one"]


@pytest.mark.anyio
async def test_reader_tolerates_missing_final_crlf_and_leading_crlf(tmp_path: Path) -> None:
    body = b"\r\n" + body_of([("a/b", b"x")]).removesuffix(b"\r\n")
    assert [d for _, d in await read_all([body], tmp_path)] == [b"x"]


@pytest.mark.anyio
@pytest.mark.parametrize(
    "tricky",
    [
        b"--gateway-test-boundary",  # at the very start of a body: not preceded by CRLF
        b"x\r\n--gateway-test-boundar",  # a prefix of the delimiter
        b"\r\n--gateway-test-boundar\r\n",
        b"\r\n-",
        b"\r\n",
        b"\r\n\r\n",
        b"\r",
        b"\n--gateway-test-boundary\n",  # bare LF is not a line break here
        b"--gateway-test-boundary--",
        b"\r\n--gateway-test-boundaryX\r\n",  # not a delimiter: followed by neither CRLF nor --
        b"\r\r\n--",
    ],
)
async def test_reader_boundary_like_bytes_in_bodies(tmp_path: Path, tricky: bytes) -> None:
    parts = [("a/b", tricky), ("a/b", tricky + b"tail"), ("a/b", b"head" + tricky)]
    body = body_of(parts)
    for sizes in ([len(body)], [1], [2], [5, 1, 3], [len(BB) + 3]):
        got = await read_all(split(body, sizes), tmp_path)
        assert [d for _, d in got] == [d for _, d in parts]


@pytest.mark.anyio
@pytest.mark.parametrize(
    "boundary",
    ["a", "x" * 70, "simple-boundary", "with space inside", "'()+_,-./:=?", "MixedCase123", "----=_Part_0_1"],
)
async def test_round_trip_with_rfc_boundaries(tmp_path: Path, boundary: str) -> None:
    parts: list[OutPart] = [("application/dicom", os.urandom(1000)), ("application/dicom", b"")]
    body = await write_all(parts, boundary)
    got = await read_all(split(body, [17]), tmp_path, boundary=boundary.encode())
    assert [d for _, d in got] == [p[1] for p in parts]


_tricky_pieces = st.sampled_from(
    [b"\r", b"\n", b"\r\n", b"-", b"--", b"\r\n--", BB[:5], BB, b"\r\n--" + BB[:-1], b"\x00", b" "]
)
_body = st.lists(st.one_of(st.binary(max_size=40), _tricky_pieces), max_size=12).map(b"".join)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    bodies=st.lists(_body.filter(lambda b: b"\r\n--" + BB not in b), min_size=1, max_size=6),
    sizes=st.lists(st.integers(min_value=1, max_value=64), min_size=1, max_size=8),
    preamble=st.sampled_from([b"", b"preamble\r\n", b"\r\n"]),
    epilogue=st.sampled_from([b"", b"epilogue", b"\r\n--" + BB + b"\r\n"]),
)
@pytest.mark.anyio
async def test_round_trip_random_parts_and_chunkings(
    bodies: list[bytes], sizes: list[int], preamble: bytes, epilogue: bytes
) -> None:
    parts: list[OutPart] = [("application/dicom", b) for b in bodies]
    body = preamble + await write_all(parts) + epilogue
    with tempfile.TemporaryDirectory() as spool:
        got = await read_all(split(body, sizes), Path(spool))
    assert [d for _, d in got] == bodies
    assert all(h["content-type"] == "application/dicom" for h, _ in got)


@pytest.mark.anyio
async def test_round_trip_big_parts(tmp_path: Path) -> None:
    rng = random.Random(1)
    bodies = [rng.randbytes(rng.randrange(0, 3 << 20)) for _ in range(5)]
    body = await write_all([("application/dicom", b) for b in bodies])
    got = await read_all(split(body, [65536, 1 << 20, 1, 7919]), tmp_path)
    assert [d for _, d in got] == bodies


# --- reader: contract (files, backpressure) ---------------------------------------------------


@pytest.mark.anyio
async def test_part_file_lives_until_the_consumer_advances(tmp_path: Path) -> None:
    chunks = [body_of([("a/b", b"1"), ("a/b", b"2")])]
    async with contextlib.aclosing(iter_parts(from_chunks(chunks), BB, spool_dir=tmp_path)) as it:
        first = await anext(it)
        assert first.path.exists()
        second = await anext(it)
        assert not first.path.exists()
        assert second.path.exists()
        with pytest.raises(StopAsyncIteration):
            await anext(it)
        assert not second.path.exists()
    assert os.listdir(tmp_path) == []


@pytest.mark.anyio
async def test_consumer_may_keep_a_part_by_moving_it(tmp_path: Path) -> None:
    spool, keep = tmp_path / "spool", tmp_path / "keep"
    spool.mkdir()
    keep.mkdir()
    async with contextlib.aclosing(
        iter_parts(from_chunks([body_of([("a/b", b"kept"), ("a/b", b"x")])]), BB, spool_dir=spool)
    ) as it:
        async for part in it:
            if part.index == 0:
                part.path.replace(keep / "0")
    assert (keep / "0").read_bytes() == b"kept"
    assert os.listdir(spool) == []


@pytest.mark.anyio
async def test_reader_reads_only_when_asked(tmp_path: Path) -> None:
    pulled: list[int] = []
    body = body_of([("a/b", b"first"), ("a/b", b"second" * 100)])
    cut = body.index(b"second")  # first chunk holds all of part 1 and the start of part 2

    async def source() -> AsyncIterator[bytes]:
        for i, chunk in enumerate([body[:cut], *split(body[cut:], [50])]):
            pulled.append(i)
            yield chunk

    async with contextlib.aclosing(iter_parts(source(), BB, spool_dir=tmp_path)) as it:
        first = await anext(it)
        assert first.path.read_bytes() == b"first"
        assert pulled == [0]
        await anyio.sleep(0.01)
        assert pulled == [0]
        second = await anext(it)
        assert len(second.path.read_bytes()) == 600
    assert os.listdir(tmp_path) == []


@pytest.mark.anyio
async def test_several_parts_in_one_chunk_are_all_cleaned_when_closed_early(tmp_path: Path) -> None:
    chunks = [body_of([("a/b", b"1"), ("a/b", b"2"), ("a/b", b"3")])]
    async with contextlib.aclosing(iter_parts(from_chunks(chunks), BB, spool_dir=tmp_path)) as it:
        await anext(it)
        assert len(os.listdir(tmp_path)) == 3  # 2 and 3 were already spooled from the same chunk
    assert os.listdir(tmp_path) == []


@pytest.mark.anyio
async def test_consumer_exception_mid_iteration_leaves_no_files(tmp_path: Path) -> None:
    body = body_of([("a/b", b"1" * 1000), ("a/b", b"2" * 1000), ("a/b", b"3")])

    async def consume() -> None:
        async with contextlib.aclosing(iter_parts(from_chunks(split(body, [100])), BB, spool_dir=tmp_path)) as it:
            async for part in it:
                if part.index == 1:
                    raise RuntimeError("consumer failed")

    with pytest.raises(RuntimeError, match="consumer failed"):
        await consume()
    assert os.listdir(tmp_path) == []


@pytest.mark.anyio
async def test_consumer_break_leaves_no_files(tmp_path: Path) -> None:
    body = body_of([("a/b", b"1" * 1000), ("a/b", b"2" * 1000)])
    async with contextlib.aclosing(iter_parts(from_chunks(split(body, [100])), BB, spool_dir=tmp_path)) as it:
        async for _ in it:
            break
    assert os.listdir(tmp_path) == []


@pytest.mark.anyio
@pytest.mark.parametrize("fail_after", [0, 1, 3, 12])
async def test_input_exception_propagates_and_leaves_no_files(tmp_path: Path, fail_after: int) -> None:
    class ClientDisconnect(Exception):
        pass

    body = body_of([("a/b", b"1" * 100), ("a/b", b"2" * 100)])

    async def source() -> AsyncIterator[bytes]:
        for i, chunk in enumerate(split(body, [20])):
            if i == fail_after:
                raise ClientDisconnect
            yield chunk

    with pytest.raises(ClientDisconnect):
        await read_all_from(source(), tmp_path)
    assert os.listdir(tmp_path) == []


async def read_all_from(source: AsyncIterator[bytes], spool: Path) -> None:
    async with contextlib.aclosing(iter_parts(source, BB, spool_dir=spool)) as it:
        async for part in it:
            part.path.read_bytes()


@pytest.mark.anyio
async def test_cancellation_mid_body_leaves_no_files(tmp_path: Path) -> None:
    body = body_of([("a/b", b"1" * 100), ("a/b", b"2" * 10_000)])

    async def slow() -> AsyncIterator[bytes]:
        for chunk in split(body, [100]):
            await anyio.sleep(0.001)
            yield chunk

    with anyio.move_on_after(0.02) as scope:
        await read_all_from(slow(), tmp_path)
    assert scope.cancelled_caught
    assert os.listdir(tmp_path) == []


@pytest.mark.anyio
async def test_unwritable_spool_dir_is_service_unavailable(tmp_path: Path) -> None:
    from gateway.errors import ServiceUnavailable

    with pytest.raises(ServiceUnavailable, match="cannot spool"):
        await read_all_from(from_chunks([body_of([("a/b", b"1")])]), tmp_path / "missing")


# --- reader: malformed input ------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "empty"),
        (b"no boundary at all", "no boundary line"),
        (body_of([("a/b", b"x")]).replace(b"\r\n", b"\n"), "no boundary line"),  # LF-only lines
        (b"--gateway-test-boundary--\r\n", "no parts"),
        (b"--gateway-test-boundary\r\nContent-Type: a/b\r\n\r\nunfinished", "before the closing boundary"),
        (b"--gateway-test-boundary\r\nContent-Type: a/b", "before the closing boundary"),
        (b"--gateway-test-boundary\r\n", "before the closing boundary"),
        (body_of([("a/b", b"x")])[:-4], "before the closing boundary"),  # "--B-" without the last "-"
        (body_of([("a/b", b"x")]).replace(BB, b"other-boundary"), "no boundary line"),
        (b"--gateway-test-boundary\r\nNo colon here\r\n\r\nx\r\n--gateway-test-boundary--\r\n", "malformed"),
        (b"--gateway-test-boundary\r\nBad Name: 1\r\n\r\nx\r\n--gateway-test-boundary--\r\n", "malformed"),
        (b"--gateway-test-boundary\r\n: empty\r\n\r\nx\r\n--gateway-test-boundary--\r\n", "malformed"),
        (b"--gateway-test-boundary\r\nA: 1\rB: 2\r\n\r\nx\r\n--gateway-test-boundary--\r\n", "malformed"),
    ],
)
async def test_reader_malformed_bodies_are_bad_requests(tmp_path: Path, body: bytes, reason: str) -> None:
    for sizes in ([max(1, len(body))], [1], [3]):
        with pytest.raises(BadRequest, match=reason):
            await read_all(split(body, sizes), tmp_path)


@pytest.mark.anyio
@pytest.mark.parametrize("boundary", [b"", b"x" * 257, b"a\r\nb"])
async def test_reader_rejects_unusable_boundary(tmp_path: Path, boundary: bytes) -> None:
    with pytest.raises(BadRequest, match="boundary"):
        await read_all([body_of([("a/b", b"x")])], tmp_path, boundary=boundary)


# --- reader: limits ---------------------------------------------------------------------------


@pytest.mark.anyio
async def test_limit_max_parts(tmp_path: Path) -> None:
    body = body_of([("a/b", b"x")] * 4)
    assert len(await read_all([body], tmp_path, limits=MultipartLimits(max_parts=4))) == 4
    with pytest.raises(PayloadTooLarge, match="more than 3 parts"):
        await read_all([body], tmp_path, limits=MultipartLimits(max_parts=3))


@pytest.mark.anyio
async def test_limit_max_part_bytes(tmp_path: Path) -> None:
    body = body_of([("a/b", b"x" * 100), ("a/b", b"y" * 101)])
    with pytest.raises(PayloadTooLarge, match="part 2 exceeds 100 bytes"):
        await read_all(split(body, [7]), tmp_path, limits=MultipartLimits(max_part_bytes=100))
    assert len(await read_all([body], tmp_path, limits=MultipartLimits(max_part_bytes=101))) == 2


@pytest.mark.anyio
async def test_limit_max_body_bytes(tmp_path: Path) -> None:
    body = body_of([("a/b", b"x" * 1000)])
    assert len(await read_all([body], tmp_path, limits=MultipartLimits(max_body_bytes=len(body)))) == 1
    with pytest.raises(PayloadTooLarge, match=f"exceeds {len(body) - 1} bytes"):
        await read_all(split(body, [64]), tmp_path, limits=MultipartLimits(max_body_bytes=len(body) - 1))


@pytest.mark.anyio
@pytest.mark.parametrize(
    "headers",
    [
        b"X-Long: " + b"v" * 300 + b"\r\n",  # one long line
        b"".join(b"X-%d: v\r\n" % i for i in range(60)),  # many short lines
        b"X-" + b"n" * 300 + b": v\r\n",  # a long name
    ],
)
async def test_limit_max_part_header_bytes(tmp_path: Path, headers: bytes) -> None:
    body = b"--gateway-test-boundary\r\n" + headers + b"\r\nx\r\n--gateway-test-boundary--\r\n"
    for sizes in ([len(body)], [1], [16]):
        with pytest.raises(PayloadTooLarge, match="headers of multipart part 1 exceed 256 bytes"):
            await read_all(split(body, sizes), tmp_path, limits=MultipartLimits(max_part_header_bytes=256))
    assert len(await read_all([body], tmp_path, limits=MultipartLimits(max_part_header_bytes=1024))) == 1


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_parts"):
        MultipartLimits(max_parts=0)


# --- reader: memory ---------------------------------------------------------------------------


@pytest.mark.anyio
async def test_memory_stays_flat_for_a_200_mb_body(tmp_path: Path) -> None:
    mib = os.urandom(1 << 20)
    parts, per_part = 2, 100  # two parts of 100 MiB each

    async def source() -> AsyncIterator[bytes]:
        for p in range(parts):
            yield b"\r\n--" + BB + b"\r\nContent-Type: application/dicom\r\n\r\n" if p else b"--" + BB + b"\r\n\r\n"
            for _ in range(per_part):
                yield mib  # the same object: the source itself allocates nothing
        yield b"\r\n--" + BB + b"--\r\n"

    sizes = []
    tracemalloc.start()
    started = time.monotonic()
    try:
        async with contextlib.aclosing(iter_parts(source(), BB, spool_dir=tmp_path)) as it:
            async for part in it:
                sizes.append(part.size)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sizes == [per_part << 20] * parts
    assert peak < 16 << 20, f"peak traced memory {peak / 2**20:.1f} MiB"
    assert time.monotonic() - started < 60
    assert os.listdir(tmp_path) == []
