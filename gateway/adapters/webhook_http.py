"""Webhook deliveries over HTTP(S) (:class:`gateway.ports.WebhookSender`): a minimal HTTP/1.1
client on asyncio streams.

Each delivery is one small POST on a kept-alive connection, from the event loop that serves
STOWs: its CPU is taken from them. A client library's request and response models, connection
pool and protocol state machine cost more than the POST itself: httpcore with h11 took about
0.45 ms of CPU per POST to a kept-alive loopback receiver, this client 0.06 to 0.1 ms (the
request line, headers and body written at once; the status line and framing headers
parsed). The answer's body is read and thrown
away (its framing must be followed to reuse the connection: ``Content-Length`` or chunked, RFC
9112 6.3); an answer framed by the connection's close, or announcing a body larger than
:data:`MAX_BODY`, closes the connection instead.

A connection the receiver closed while idle shows when the POST on it gets no answer at all:
the POST is sent again once on a new connection (a receiver may then see it twice, which at
least once delivery allows; RFC 9110 9.2.2 lets a client retry so). Redirects are not followed
(a receiver that moved is a configuration to fix, and a redirect would send patients' UIDs
somewhere the operator did not name); certificates are verified against the system's CAs
(``SSL_CERT_FILE`` and ``SSL_CERT_DIR`` apply); no proxy is used. ``within`` bounds the whole
POST: connecting, the TLS handshake, sending and the answer.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

import anyio

# An idle connection is closed after this long (receivers commonly close theirs after 5 to 75 s).
KEEPALIVE_SECONDS = 30.0
MAX_BODY = 1 << 20  # an answer's body read (and dropped) to keep its connection, at most
_HEAD_LIMIT = 64 * 1024  # the status line and headers of an answer, at most


class _BadAnswer(Exception):
    """The receiver's answer is not HTTP/1.x as this client reads it."""


@dataclass(frozen=True)
class _Target:
    origin: tuple[str, str, int]  # scheme, host, port: the connections' key
    head: bytes  # "POST path HTTP/1.1" and Host


@dataclass
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    idle_since: float = 0.0

    def usable(self) -> bool:
        return (
            not self.writer.is_closing()
            and not self.reader.at_eof()
            and time.monotonic() - self.idle_since < KEEPALIVE_SECONDS
        )

    def close(self) -> None:
        self.writer.close()


class HttpWebhookSender:
    def __init__(self) -> None:
        self._tls = ssl.create_default_context()
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._targets: dict[str, _Target] = {}

    async def post(self, url: str, body: bytes, headers: dict[str, str], *, within: float) -> str | None:
        try:
            target = self._target(url)
            request = _request(target, body, headers)
            with anyio.fail_after(within):
                status = await self._exchange(target, request)
        except TimeoutError:
            return f"no answer within {within:g} s"
        except ssl.SSLError as exc:
            return f"TLS: {exc.reason or exc}"
        except (OSError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, _BadAnswer) as exc:
            return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if 200 <= status < 300:
            return None
        return f"answered {status}"

    async def _exchange(self, target: _Target, request: bytes) -> int:
        connection = self._take(target.origin)
        if connection is not None:
            try:
                return await self._send(target, connection, request)
            except (ConnectionError, asyncio.IncompleteReadError) as exc:
                if getattr(exc, "partial", b""):
                    raise  # an answer began: not a connection closed while idle
                # Closed by the receiver while idle: once more on a new connection.
        return await self._send(target, await self._connect(target.origin), request)

    async def _send(self, target: _Target, connection: _Connection, request: bytes) -> int:
        try:
            connection.writer.write(request)
            status, keep = await _read_answer(connection.reader)
        except BaseException:
            connection.close()
            raise
        if keep:
            connection.idle_since = time.monotonic()
            self._idle.setdefault(target.origin, []).append(connection)
        else:
            connection.close()
        return status

    def _take(self, origin: tuple[str, str, int]) -> _Connection | None:
        idle = self._idle.get(origin)
        while idle:
            connection = idle.pop()
            if connection.usable():
                return connection
            connection.close()
        return None

    async def _connect(self, origin: tuple[str, str, int]) -> _Connection:
        scheme, host, port = origin
        tls = self._tls if scheme == "https" else None
        reader, writer = await asyncio.open_connection(
            host, port, ssl=tls, server_hostname=host if tls else None, limit=_HEAD_LIMIT
        )
        return _Connection(reader, writer)

    def _target(self, url: str) -> _Target:
        target = self._targets.get(url)
        if target is None:
            target = self._targets[url] = _parse_target(url)
        return target

    async def aclose(self) -> None:
        for idle in self._idle.values():
            for connection in idle:
                connection.close()
        self._idle.clear()


def _parse_target(url: str) -> _Target:
    parts = urlsplit(url)
    host = parts.hostname or ""
    default = 443 if parts.scheme == "https" else 80
    port = parts.port or default
    # Settings accept only absolute http(s) URLs; a space or non-ASCII path is sent percent-encoded.
    path = quote(parts.path or "/", safe="/%:@!$&'()*+,;=-._~")
    if parts.query:
        path += "?" + quote(parts.query, safe="/%:@!$&'()*+,;=-._~?")
    authority = f"[{host}]" if ":" in host else host
    if port != default:
        authority += f":{port}"
    head = f"POST {path} HTTP/1.1\r\nHost: {authority}\r\n".encode("ascii")
    return _Target((parts.scheme, host, port), head)


def _request(target: _Target, body: bytes, headers: dict[str, str]) -> bytes:
    fields = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    if "\n" in fields.replace("\r\n", "") or "\r" in fields.replace("\r\n", ""):
        raise ValueError("a header value holds a line break")
    return b"".join((target.head, fields.encode("latin-1"), b"Content-Length: %d\r\n\r\n" % len(body), body))


async def _read_answer(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """The final answer's status, and whether the connection can carry another request."""
    while True:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        version, _, rest = lines[0].partition(" ")
        if not version.startswith("HTTP/1.") or not rest[:3].isdigit():
            raise _BadAnswer(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
        status = int(rest[:3])
        if 100 <= status < 200:
            continue  # informational (100 Continue, 103 Early Hints): the final answer follows
        fields: dict[str, str] = {}
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            if colon:
                fields[name.strip().lower()] = value.strip()
        keep = version == "HTTP/1.1" and "close" not in fields.get("connection", "").lower()
        if status in (204, 304):
            return status, keep
        if "chunked" in fields.get("transfer-encoding", "").lower():
            return status, keep and await _drop_chunks(reader)
        length = fields.get("content-length")
        if length is None or not length.isdigit():
            return status, False  # the body ends with the connection (RFC 9112 6.3 item 8)
        if int(length) > MAX_BODY:
            return status, False
        await reader.readexactly(int(length))
        return status, keep


async def _drop_chunks(reader: asyncio.StreamReader) -> bool:
    """Reads a chunked body (RFC 9112 7.1); False when it is too large to read through."""
    read = 0
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";", 1)[0].strip() or b"x", 16)
        read += size
        if read > MAX_BODY:
            return False
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":  # trailer fields
                pass
            return True
        await reader.readexactly(size + 2)
