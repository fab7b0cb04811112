"""The webhook sender's HTTP/1.1 against a TCP server on loopback that answers what each test
scripts: a 2xx acknowledges, anything else says why not; the connection is kept alive and
reused across POSTs; answers framed by Content-Length, chunked or the connection's close are
read through; a connection the receiver closed while idle costs a new one, not a failed
delivery; no answer within the time allowed fails. (HTTPS against a real CA is in
tests/test_webhooks.py.)"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from gateway.adapters.webhook_http import HttpWebhookSender

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

HEADERS = {"Content-Type": "application/json", "X-Gateway-Sequence": "7"}
NO_CONTENT = b"HTTP/1.1 204 No Content\r\n\r\n"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class Server:
    """Accepts connections; for each request read, sends ``answer(n)`` (n: requests so far),
    and closes the connection after it when ``close_after(n)``."""

    answer: Callable[[int], bytes]
    close_after: Callable[[int], bool] = lambda n: False
    # Each connection answers its first request only, and closes on reading the next one: a
    # receiver's idle timeout that struck as the request went out.
    one_per_connection: bool = False
    requests: list[bytes] = field(default_factory=list)
    connections: int = 0
    url: str = ""


def _read_request(conn: socket.socket, pending: bytes) -> tuple[bytes, bytes] | None:
    while b"\r\n\r\n" not in pending:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        pending += chunk
    head, _, rest = pending.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
    )
    while len(rest) < length:
        rest += conn.recv(65536)
    return head + b"\r\n\r\n" + rest[:length], rest[length:]


@pytest.fixture
def server() -> Iterator[Callable[..., Server]]:
    listener = socket.create_server(("127.0.0.1", 0))
    state: list[Server] = []

    def serve(conn: socket.socket, s: Server) -> None:
        pending = b""
        answered = 0
        with conn:
            while (got := _read_request(conn, pending)) is not None:
                request, pending = got
                s.requests.append(request)
                if s.one_per_connection and answered:
                    return
                answered += 1
                n = len(s.requests)
                conn.sendall(s.answer(n))
                if s.close_after(n):
                    return

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            state[0].connections += 1
            threading.Thread(target=serve, args=(conn, state[0]), daemon=True).start()

    def make(
        answer: Callable[[int], bytes], close_after: Callable[[int], bool] = lambda n: False, **options: bool
    ) -> Server:
        s = Server(answer, close_after, **options, url=f"http://127.0.0.1:{listener.getsockname()[1]}/hook?x=1")
        state.append(s)
        threading.Thread(target=accept, daemon=True).start()
        return s

    yield make
    listener.close()


async def test_a_2xx_acknowledges_and_one_connection_carries_every_post(server: Callable[..., Server]) -> None:
    s = server(lambda n: NO_CONTENT if n % 2 else b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    sender = HttpWebhookSender()
    try:
        for _ in range(5):
            assert await sender.post(s.url, b'{"Sequence": 7}', HEADERS, within=5) is None
    finally:
        await sender.aclose()
    assert s.connections == 1
    head, _, body = s.requests[0].partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /hook?x=1 HTTP/1.1"
    assert f"Host: 127.0.0.1:{s.url.split(':')[2].split('/')[0]}".encode() in lines
    assert b"X-Gateway-Sequence: 7" in lines
    assert b"Content-Length: 15" in lines
    assert body == b'{"Sequence": 7}'


async def test_other_statuses_say_why_and_a_redirect_is_not_followed(server: Callable[..., Server]) -> None:
    answers = [
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy",
        b"HTTP/1.1 307 Temporary Redirect\r\nLocation: http://elsewhere.invalid/\r\nContent-Length: 0\r\n\r\n",
    ]
    s = server(lambda n: answers[n - 1])
    sender = HttpWebhookSender()
    try:
        assert await sender.post(s.url, b"{}", HEADERS, within=5) == "answered 503"
        assert await sender.post(s.url, b"{}", HEADERS, within=5) == "answered 307"
    finally:
        await sender.aclose()
    assert len(s.requests) == 2
    assert s.connections == 1


async def test_chunked_and_informational_answers_are_read_through(server: Callable[..., Server]) -> None:
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n3\r\nabc\r\n0\r\nT: 1\r\n\r\n"
    s = server(lambda n: b"HTTP/1.1 100 Continue\r\n\r\n" + chunked if n == 1 else NO_CONTENT)
    sender = HttpWebhookSender()
    try:
        assert await sender.post(s.url, b"{}", HEADERS, within=5) is None
        assert await sender.post(s.url, b"{}", HEADERS, within=5) is None
    finally:
        await sender.aclose()
    assert s.connections == 1


async def test_an_answer_ended_by_close_or_connection_close_opens_a_new_connection(
    server: Callable[..., Server],
) -> None:
    answers = [
        b"HTTP/1.0 200 OK\r\n\r\nbody until the connection closes",
        b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n",
        NO_CONTENT,
    ]
    s = server(lambda n: answers[n - 1], close_after=lambda n: n < 3)
    sender = HttpWebhookSender()
    try:
        for _ in answers:
            assert await sender.post(s.url, b"{}", HEADERS, within=5) is None
    finally:
        await sender.aclose()
    assert s.connections == 3


async def test_a_connection_closed_while_idle_is_replaced_not_a_failure(server: Callable[..., Server]) -> None:
    s = server(lambda n: NO_CONTENT, one_per_connection=True)
    sender = HttpWebhookSender()
    try:
        for _ in range(3):
            assert await sender.post(s.url, b"{}", HEADERS, within=5) is None
    finally:
        await sender.aclose()
    # Each POST after the first went out twice: on the closed connection, then on a new one.
    assert len(s.requests) == 5
    assert s.connections == 3


async def test_no_answer_in_time_and_no_receiver_are_failures_not_errors(server: Callable[..., Server]) -> None:
    s = server(lambda n: b"")  # reads the request, never answers
    sender = HttpWebhookSender()
    try:
        assert await sender.post(s.url, b"{}", HEADERS, within=0.5) == "no answer within 0.5 s"
        with socket.socket() as unused:
            unused.bind(("127.0.0.1", 0))
            port = unused.getsockname()[1]
        problem = await sender.post(f"http://127.0.0.1:{port}/hook", b"{}", HEADERS, within=5)
        assert problem is not None
        assert "ConnectionRefused" in problem
    finally:
        await sender.aclose()


async def test_a_garbled_answer_is_a_failure(server: Callable[..., Server]) -> None:
    s = server(lambda n: b"SMTP ready\r\n\r\n")
    sender = HttpWebhookSender()
    try:
        problem = await sender.post(s.url, b"{}", HEADERS, within=5)
    finally:
        await sender.aclose()
    assert problem is not None
    assert "not an HTTP/1.x status line" in problem
