"""An S3-speaking HTTP proxy in front of a real SeaweedFS, for faults S3 itself cannot make on demand.

Everything is forwarded unchanged to the real server (the SigV4 signature covers the Host header,
which is passed through as received, so the real server accepts it), except what the test asks:

* :meth:`S3FaultProxy.throttle` — answer the next *N* requests, or a fraction of them, the way
  AWS S3 does when a prefix is over its request rate: ``503 Slow Down`` with an
  ``<Error><Code>SlowDown</Code>...`` XML body (no body for HEAD, as S3 sends none). The
  request body is read first, so the connection stays usable, as with S3;
* :meth:`S3FaultProxy.slow_uploads` — read request bodies at a fixed rate (a slow but alive
  store, or a slow uplink);
* :meth:`S3FaultProxy.stall_downloads` — send the first bytes of GetObject bodies, then nothing
  more until released (a store that hangs mid-response).

It counts the requests it sees (:meth:`S3FaultProxy.count`), so a test can bound the client's
attempts. Chunked request bodies are not supported (boto3 sends Content-Length here).
"""

from __future__ import annotations

import http.client
import random
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from tests.peers.ports import free_port

_CHUNK = 64 << 10
_RECEIVE_BUFFER = 256 << 10
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade", "expect"}
)
_SLOW_DOWN_XML = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    "<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message>"
    "<RequestId>{request_id}</RequestId><HostId>s3-fault-proxy</HostId></Error>"
)


@dataclass
class _Throttle:
    remaining: int | None  # the next N matching requests; None: a fraction of them
    fraction: float
    methods: frozenset[str] | None  # None: every method
    rng: random.Random


class S3FaultProxy:
    """A running proxy; ``endpoint_url`` is what the client is given instead of the real S3."""

    def __init__(self, upstream_url: str) -> None:
        target = urlsplit(upstream_url)
        self._upstream = (target.hostname or "127.0.0.1", target.port or 80)
        self._lock = threading.Lock()
        self._throttle: _Throttle | None = None
        self._upload_rate: float | None = None
        self._stall_after: int | None = None
        self._released = threading.Event()
        self._counts: Counter[tuple[str, str]] = Counter()
        port = free_port()
        self._server = _Server(("127.0.0.1", port), _Handler)
        self._server.proxy = self  # type: ignore[attr-defined]
        self.endpoint_url = f"http://127.0.0.1:{port}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="s3-fault-proxy", daemon=True)
        self._thread.start()

    # -- what the test commands ----------------------------------------------------------------

    def throttle(
        self,
        count: int | None = None,
        *,
        fraction: float = 1.0,
        methods: tuple[str, ...] | None = None,
        seed: int = 0,
    ) -> None:
        """Answer SlowDown to the next ``count`` requests (of ``methods``, default all) or, with
        ``count`` None, to each request with probability ``fraction`` (1.0: every request)."""
        if count is not None and count < 0:
            raise ValueError("count must not be negative")
        with self._lock:
            self._throttle = _Throttle(
                remaining=count,
                fraction=fraction,
                methods=frozenset(m.upper() for m in methods) if methods else None,
                rng=random.Random(seed),
            )

    def slow_uploads(self, bytes_per_second: float | None) -> None:
        """Read request bodies at this rate (None: as fast as they come)."""
        with self._lock:
            self._upload_rate = bytes_per_second

    def stall_downloads(self, after_bytes: int | None) -> None:
        """Stop GetObject bodies after ``after_bytes`` until :meth:`release` (None: never)."""
        with self._lock:
            self._stall_after = after_bytes
            self._released.clear()

    def release(self) -> None:
        """Let stalled responses end (their connections are closed) and stall no more."""
        with self._lock:
            self._stall_after = None
        self._released.set()

    def heal(self) -> None:
        """Forward everything faithfully again."""
        with self._lock:
            self._throttle = None
            self._upload_rate = None
        self.release()

    def count(self, method: str | None = None, outcome: str | None = None) -> int:
        """Requests seen, optionally only of ``method`` and ``outcome`` (forwarded, throttled)."""
        with self._lock:
            return sum(
                n
                for (m, o), n in self._counts.items()
                if (method is None or m == method.upper()) and (outcome is None or o == outcome)
            )

    def reset_counts(self) -> None:
        with self._lock:
            self._counts.clear()

    def close(self) -> None:
        self.release()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    # -- used by the handler -------------------------------------------------------------------

    def _decide(self, method: str) -> bool:
        """Whether to throttle this request; counts it either way."""
        with self._lock:
            throttled = False
            t = self._throttle
            if t is not None and (t.methods is None or method in t.methods):
                if t.remaining is not None:
                    throttled = t.remaining > 0
                    t.remaining = max(0, t.remaining - 1)
                else:
                    throttled = t.rng.random() < t.fraction
            self._counts[(method, "throttled" if throttled else "forwarded")] += 1
            return throttled

    def _settings(self) -> tuple[float | None, int | None]:
        with self._lock:
            return self._upload_rate, self._stall_after


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def server_bind(self) -> None:
        # A store reads what arrives; a large receive buffer here (Linux grows it to 32 MiB on
        # loopback) would instead swallow a whole upload at once and then trickle it, which is
        # not what a slow link does. Accepted sockets inherit the listener's buffer size.
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RECEIVE_BUFFER)
        super().server_bind()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, and "100 Continue" for Expect (botocore's PUTs)
    timeout = 60  # an idle client connection is dropped after this
    server: ThreadingHTTPServer

    def log_message(self, format: str, *args: object) -> None:
        pass  # the tests assert on counts, not on an access log

    def do_GET(self) -> None:
        self._proxy()

    do_PUT = do_POST = do_DELETE = do_HEAD = do_GET

    @property
    def _owner(self) -> S3FaultProxy:
        owner: S3FaultProxy = self.server.proxy  # type: ignore[attr-defined]
        return owner

    def _proxy(self) -> None:
        owner = self._owner
        method = self.command
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self._reply_plain(501, b"chunked request bodies are not supported by the test proxy")
            return
        rate, stall_after = owner._settings()
        length = int(self.headers.get("Content-Length") or 0)
        if owner._decide(method):
            for _ in self._body(length, rate):  # consumed, so the connection stays usable
                pass
            self._slow_down(method)
            return
        host, port = owner._upstream
        connection = http.client.HTTPConnection(host, port, timeout=60)
        try:
            try:
                # The body goes on as it arrives: a slow client is a slow upload, not a long wait.
                connection.putrequest(method, self.path, skip_host=True, skip_accept_encoding=True)
                for name, value in self.headers.items():
                    if name.lower() not in _HOP_BY_HOP:
                        connection.putheader(name, value)
                connection.endheaders()
                for chunk in self._body(length, rate):
                    connection.send(chunk)
                response = connection.getresponse()
            except OSError:
                self.close_connection = True  # the real S3 is gone: so is this connection
                return
            self._relay(method, response, stall_after if method == "GET" else None)
        finally:
            connection.close()

    def _body(self, length: int, rate: float | None) -> Iterator[bytes]:
        started = time.monotonic()
        got = 0
        while got < length:
            chunk = self.rfile.read(min(_CHUNK, length - got))
            if not chunk:
                return
            got += len(chunk)
            yield chunk
            if rate:
                ahead = got / rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)

    def _reply_plain(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _slow_down(self, method: str) -> None:
        body = _SLOW_DOWN_XML.format(request_id=uuid.uuid4().hex[:16].upper()).encode()
        self.send_response(503, "Slow Down")
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("x-amz-request-id", uuid.uuid4().hex[:16].upper())
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(body)

    def _relay(self, method: str, response: http.client.HTTPResponse, stall_after: int | None) -> None:
        no_body = method == "HEAD" or response.status in (204, 304)
        length = response.getheader("Content-Length")
        data = b"" if no_body or length is not None else response.read()  # chunked: small XML
        self.send_response_only(response.status, response.reason)  # S3's own Date and Server follow
        for name, value in response.getheaders():
            if name.lower() not in _HOP_BY_HOP and not (length is None and name.lower() == "content-length"):
                self.send_header(name, value)
        if length is None and not no_body:
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if no_body:
            return
        if length is None:
            self.wfile.write(data)
            return
        sent = 0
        for chunk in iter(lambda: response.read(_CHUNK), b""):
            if stall_after is not None and sent + len(chunk) > stall_after:
                self.wfile.write(chunk[: max(0, stall_after - sent)])
                self.wfile.flush()
                self._owner._released.wait()  # hang, as a store that stopped mid-body
                self.close_connection = True
                return
            self.wfile.write(chunk)
            sent += len(chunk)


@contextmanager
def s3_fault_proxy(upstream_url: str) -> Iterator[S3FaultProxy]:
    """A proxy in front of ``upstream_url`` for the duration of the block."""
    proxy = S3FaultProxy(upstream_url)
    try:
        yield proxy
    finally:
        proxy.close()
