"""Streaming multipart/related (RFC 2387, RFC 2046 5.1) reader and writer.

Reader: :func:`iter_parts` spools each part of a request body to its own temporary file while
the body streams in, using python-multipart's boundary scanner; memory stays at one input chunk
however large the body or its parts. Writer: :func:`multipart_stream` frames async part bodies
without copying them.

Pure: no HTTP framework types; the only I/O is the spool files the reader owns.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import tempfile
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TypeVar

import anyio.to_thread
from python_multipart import MultipartParser
from python_multipart.exceptions import FormParserError, MultipartParseError

from gateway.errors import BadRequest, PayloadTooLarge, ServiceUnavailable

# RFC 2046 5.1.1: bchars, 1 to 70 of them, not ending in a space.
_BOUNDARY = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")
# python-multipart refuses longer boundaries; some clients exceed RFC 2046's 70, none this.
_MAX_READ_BOUNDARY = 256
_TCHARS = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_COALESCE = 64 * 1024  # bytes bodies up to this size are sent in one chunk with their headers
_T = TypeVar("_T")


# --- Reader -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MultipartLimits:
    """Input limits for :func:`iter_parts`; exceeding one raises :class:`PayloadTooLarge`.

    ``max_part_header_bytes`` bounds the header block of each part (header names and values,
    plus 4 bytes per header line for ``": "`` and CRLF).
    """

    max_parts: int = 10_000
    max_part_header_bytes: int = 16 * 1024
    max_body_bytes: int = 8 * 1024**3
    max_part_bytes: int = 4 * 1024**3

    def __post_init__(self) -> None:
        for name in ("max_parts", "max_part_header_bytes", "max_body_bytes", "max_part_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"MultipartLimits.{name} must be at least 1")


class Headers(Mapping[str, str]):
    """Read-only, case-insensitive part headers. Repeated headers are joined with ``", "``
    (RFC 9110 5.3); ``raw`` keeps every line as received (decoded as Latin-1)."""

    __slots__ = ("_map", "raw")

    def __init__(self, raw: Iterable[tuple[str, str]] = ()) -> None:
        self.raw: tuple[tuple[str, str], ...] = tuple(raw)
        merged: dict[str, str] = {}
        for name, value in self.raw:
            key = name.lower()
            merged[key] = f"{merged[key]}, {value}" if key in merged else value
        self._map = merged

    def __getitem__(self, key: str) -> str:
        return self._map[key.lower()]

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key.lower() in self._map

    def __iter__(self) -> Iterator[str]:
        return iter(self._map)

    def __len__(self) -> int:
        return len(self._map)

    def __repr__(self) -> str:
        return f"Headers({list(self.raw)!r})"


@dataclass(frozen=True, slots=True)
class Part:
    """One received part: its headers and its body, spooled to ``path`` (``size`` bytes).

    The file belongs to :func:`iter_parts` and is deleted when the consumer asks for the next
    part or the generator closes. To keep it, move it away (``os.replace``) before advancing.
    """

    index: int
    headers: Headers
    path: Path
    size: int

    @property
    def content_type(self) -> str | None:
        """The part's Content-Type header, as sent, or ``None``."""
        return self.headers.get("content-type")

    def open(self) -> BinaryIO:
        """Open the spooled body for reading (blocking I/O: use a worker thread for big parts)."""
        return self.path.open("rb")


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


class _Spooler:
    """python-multipart callbacks that write each part to a spool file and queue it when done.

    The parser is primed with a synthetic empty part (``--boundary CRLF CRLF``) followed by a CRLF:
    whatever precedes the body's first delimiter (RFC 2046's preamble, possibly empty) becomes the
    body of that synthetic part and is discarded. python-multipart on its own requires the body to
    start with the delimiter.
    """

    def __init__(self, boundary: bytes, spool_dir: Path | None, limits: MultipartLimits) -> None:
        self.limits = limits
        self.spool_dir = spool_dir
        self.ready: deque[Part] = deque()
        self.ended = False
        self.parts = 0  # real parts begun
        self.body_bytes = 0
        self._in_preamble = True
        self._file: BinaryIO | None = None
        self._path: Path | None = None
        self._size = 0
        self._header_bytes = 0
        self._headers: list[tuple[str, str]] = []
        self._name = bytearray()
        self._value = bytearray()
        self.parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._part_begin,
                "on_header_field": self._header_field,
                "on_header_value": self._header_value,
                "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished,
                "on_part_data": self._part_data,
                "on_part_end": self._part_end,
                "on_end": self._end,
            },
            # Our byte budget binds first: a header costs at least one byte of it.
            max_header_count=limits.max_part_header_bytes,
            max_header_size=limits.max_part_header_bytes,
        )
        self.parser.write(b"--" + boundary + b"\r\n\r\n\r\n")

    # parser callbacks (run in a worker thread, one chunk at a time)

    def _part_begin(self) -> None:
        if self._in_preamble:
            return
        self.parts += 1
        if self.parts > self.limits.max_parts:
            raise PayloadTooLarge(f"multipart body has more than {self.limits.max_parts} parts")
        self._headers, self._header_bytes, self._size = [], 0, 0

    def _count_header(self, n: int) -> None:
        self._header_bytes += n
        if self._header_bytes > self.limits.max_part_header_bytes:
            raise PayloadTooLarge(self._header_limit_reason())

    def _header_limit_reason(self) -> str:
        return f"headers of multipart part {self.parts} exceed {self.limits.max_part_header_bytes} bytes"

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._count_header(end - start)
        self._name += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._count_header(end - start)
        self._value += data[start:end]

    def _header_end(self) -> None:
        self._count_header(4)
        self._headers.append((self._name.decode("latin-1"), self._value.decode("latin-1").strip(" \t")))
        self._name.clear()
        self._value.clear()

    def _headers_finished(self) -> None:
        if self._in_preamble:
            return
        try:
            fd, name = tempfile.mkstemp(prefix="multipart-", suffix=".part", dir=self.spool_dir)
        except OSError as exc:
            raise ServiceUnavailable(f"cannot spool multipart part: {exc.strerror}") from exc
        self._path = Path(name)
        self._file = os.fdopen(fd, "wb")

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._file is None:
            return  # preamble
        self._size += end - start
        if self._size > self.limits.max_part_bytes:
            raise PayloadTooLarge(f"multipart part {self.parts} exceeds {self.limits.max_part_bytes} bytes")
        try:
            self._file.write(memoryview(data)[start:end])
        except OSError as exc:
            raise ServiceUnavailable(f"cannot spool multipart part: {exc.strerror}") from exc

    def _part_end(self) -> None:
        if self._in_preamble:
            self._in_preamble = False
            return
        assert self._file is not None
        assert self._path is not None
        try:
            self._file.close()
        except OSError as exc:
            raise ServiceUnavailable(f"cannot spool multipart part: {exc.strerror}") from exc
        self.ready.append(Part(self.parts - 1, Headers(self._headers), self._path, self._size))
        self._file = self._path = None

    def _end(self) -> None:
        self.ended = True

    # driven from iter_parts

    def feed(self, chunk: bytes) -> None:
        self.body_bytes += len(chunk)
        if self.body_bytes > self.limits.max_body_bytes:
            raise PayloadTooLarge(f"multipart body exceeds {self.limits.max_body_bytes} bytes")
        try:
            self.parser.write(chunk)
        except MultipartParseError as exc:
            if self.ended:
                return  # junk in the epilogue (older python-multipart versions parse it)
            # python-multipart enforces per-line header limits itself; they are ours, set above.
            if str(exc).startswith("Maximum header"):
                raise PayloadTooLarge(self._header_limit_reason()) from exc
            raise BadRequest(f"malformed multipart body (part {self.parts}): {exc}") from exc

    def finish(self) -> None:
        """The input ended: raise unless the closing delimiter was seen after at least one part."""
        if not self.ended:
            if self.body_bytes == 0:
                raise BadRequest("multipart body is empty")
            if self.parts == 0:
                raise BadRequest(
                    "multipart body has no boundary line: expected '--' + the Content-Type boundary, "
                    "with lines ending in CRLF"
                )
            raise BadRequest("multipart body ended before the closing boundary")
        if self.parts == 0:
            raise BadRequest("multipart body has no parts")

    def cleanup(self) -> None:
        """Delete every spool file not yet handed out (and close the one being written)."""
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None
        if self._path is not None:
            _unlink(self._path)
            self._path = None
        while self.ready:
            _unlink(self.ready.popleft().path)


def _check_read_boundary(boundary: bytes) -> None:
    if not boundary or len(boundary) > _MAX_READ_BOUNDARY or b"\r" in boundary or b"\n" in boundary:
        shown = boundary[:80].decode("latin-1")
        raise BadRequest(f"unusable multipart boundary {shown!r} (RFC 2046 5.1.1)")


async def iter_parts(
    chunks: AsyncIterable[bytes],
    boundary: bytes,
    *,
    spool_dir: Path | None = None,
    limits: MultipartLimits | None = None,
) -> AsyncGenerator[Part, None]:
    """Yield the parts of a multipart body as they complete, each spooled to a file.

    ``chunks`` is the raw body (e.g. ``request.stream()``), ``boundary`` the Content-Type's
    ``boundary`` parameter. Each :class:`Part` is yielded as soon as its closing delimiter is
    seen; more input is read only when the consumer asks for the next part (backpressure), and
    at most one input chunk is held in memory. Parsing and spooling run in a worker thread.

    Contract for the spool files (in ``spool_dir``, default the system temp dir): a part's file
    is deleted when the consumer asks for the next part, and every remaining file when the
    generator finishes or is closed: normal end, an error raised here (malformed body, limit
    hit), an exception from ``chunks`` (client disconnect), or the consumer breaking out or
    raising. Use ``contextlib.aclosing(iter_parts(...))`` so that closing happens at once rather
    than when the generator is garbage-collected. A consumer that wants to keep a part's file
    moves it away before advancing. The epilogue after the closing delimiter is not read.

    Raises :class:`BadRequest` for a malformed body (bad boundary, missing CRLF, truncated,
    no parts), :class:`PayloadTooLarge` past ``limits``, :class:`ServiceUnavailable` if the
    spool directory cannot be written. Exceptions from ``chunks`` propagate unchanged; ``chunks``
    itself stays the caller's (it is not closed here).
    """
    _check_read_boundary(boundary)
    try:
        spooler = _Spooler(boundary, spool_dir, limits or MultipartLimits())
    except FormParserError as exc:
        raise BadRequest(f"unusable multipart boundary: {exc}") from exc
    source = aiter(chunks)
    try:
        while True:
            while spooler.ready:
                part = spooler.ready.popleft()
                try:
                    yield part
                finally:
                    _unlink(part.path)
            if spooler.ended:
                break
            try:
                chunk = await anext(source)
            except StopAsyncIteration:
                break
            if chunk:
                await anyio.to_thread.run_sync(spooler.feed, chunk)
        spooler.finish()
    finally:
        spooler.cleanup()


# --- Writer -----------------------------------------------------------------------------------

PartBody = bytes | AsyncIterable[bytes]
OutPart = tuple[str, PartBody] | tuple[str, PartBody, Mapping[str, str]]
"""``(content_type, body)`` or ``(content_type, body, extra_headers)`` for :func:`multipart_stream`."""


def new_boundary() -> str:
    """A fresh random boundary: 128 random bits in hex, RFC 2046 safe and never needing quotes."""
    return f"dicomweb-{secrets.token_hex(16)}"


def _check_write_boundary(boundary: str) -> None:
    if not _BOUNDARY.fullmatch(boundary):
        raise ValueError(f"invalid multipart boundary {boundary!r} (RFC 2046 5.1.1)")


def _header_block(content_type: str, extra: Mapping[str, str]) -> bytes:
    lines = [("Content-Type", content_type), *extra.items()]
    seen: set[str] = set()
    out = []
    for name, value in lines:
        if not name or not all(c in _TCHARS for c in name) or name.lower() in seen:
            raise ValueError(f"bad or repeated part header name {name!r}")
        seen.add(name.lower())
        if any(c in value for c in "\r\n\0"):
            raise ValueError(f"part header {name} contains a line break")
        out.append(f"{name}: {value}\r\n")
    try:
        return "".join(out).encode("latin-1")
    except UnicodeEncodeError as exc:
        raise ValueError(f"part headers must be Latin-1: {exc}") from None


@contextlib.asynccontextmanager
async def _closing(source: AsyncIterable[_T] | Iterable[_T]) -> AsyncIterator[AsyncIterator[_T]]:
    """Iterate ``source`` asynchronously; close it (if it can be closed) when we stop early."""
    if not isinstance(source, AsyncIterable):
        yield _from_sync(source)
        return
    iterator = aiter(source)
    try:
        yield iterator
    finally:
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            await aclose()


async def _from_sync(source: Iterable[_T]) -> AsyncIterator[_T]:
    for item in source:
        yield item


async def multipart_stream(
    parts: AsyncIterable[OutPart] | Iterable[OutPart],
    boundary: str,
) -> AsyncGenerator[bytes, None]:
    """Frame ``parts`` as a multipart/related body (RFC 2046 5.1.1), streaming.

    Each part is written as ``--boundary CRLF``, ``Content-Type: ...`` (spelled exactly so: OHIF
    looks for that header name), any extra headers (e.g. Content-Location), a blank line and the
    body; the whole ends with ``CRLF --boundary-- CRLF``. Body chunks are passed through as they
    are, never copied; a small ``bytes`` body goes out in one chunk with its headers. When this
    generator is closed early (client gone), ``parts`` and the current body are closed too.
    With no parts at all only the closing delimiter is sent, which RFC 2046 does not allow:
    answer 404 instead.

    Raises ``ValueError`` (a programming error) for a bad boundary or header.
    """
    _check_write_boundary(boundary)
    dash = b"--" + boundary.encode("ascii")
    first = True
    async with _closing(parts) as items:
        async for item in items:
            content_type, body = item[0], item[1]
            extra: Mapping[str, str] = item[2] if len(item) == 3 else {}
            # The CRLF before a delimiter belongs to the delimiter (RFC 2046 5.1.1).
            head = (b"" if first else b"\r\n") + dash + b"\r\n" + _header_block(content_type, extra) + b"\r\n"
            first = False
            if isinstance(body, bytes):
                if len(body) <= _COALESCE:
                    yield head + body
                else:
                    yield head
                    yield body
                continue
            yield head
            async with _closing(body) as chunks:
                async for chunk in chunks:
                    if chunk:
                        yield chunk
    yield (b"" if first else b"\r\n") + dash + b"--\r\n"


def multipart_length(parts: Sequence[tuple[str, int]], boundary: str) -> int:
    """The length of what :func:`multipart_stream` writes for parts of these (Content-Type, body
    length), without extra part headers: a response can then say its Content-Length."""
    _check_write_boundary(boundary)
    delimiter = 2 + len(boundary)  # "--" boundary
    total = sum(
        (0 if i == 0 else 2) + delimiter + 2 + len(_header_block(content_type, {})) + 2 + size
        for i, (content_type, size) in enumerate(parts)
    )
    return total + (2 if parts else 0) + delimiter + 4  # [CRLF] "--" boundary "--" CRLF


def content_type_for_multipart(part_type: str, transfer_syntax: str | None, boundary: str) -> str:
    """The response Content-Type, e.g. ``multipart/related; type="application/dicom"; boundary=b``.

    ``type`` is quoted as in the PS3.18 examples; ``transfer-syntax`` is added when all
    parts share one named syntax (omit it, or pass ``*``, for mixed as-stored parts).
    """
    _check_write_boundary(boundary)
    value = f'multipart/related; type="{part_type}"'
    if transfer_syntax and transfer_syntax != "*":
        value += f"; transfer-syntax={transfer_syntax}"
    shown = boundary if all(c in _TCHARS for c in boundary) else '"' + boundary + '"'
    return f"{value}; boundary={shown}"
