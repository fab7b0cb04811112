"""A fault peer for the PACS-bridge tests: a TCP proxy in front of a real PACS that cuts a
connection once the PACS has sent it a given number of bytes (a link lost mid-instance)."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from tests.peers.ports import free_port

CHUNK = 64 << 10


@contextmanager
def cut_after(port: int, nbytes: int) -> Iterator[int]:
    """A port forwarding to ``127.0.0.1:port`` that closes each connection (both ways) once
    ``nbytes`` have come back from ``port`` on it; connections that stay under that are relayed
    whole. Yields the proxy's port."""
    listen_port = free_port()
    server = socket.create_server(("127.0.0.1", listen_port))
    server.settimeout(0.1)
    stop = threading.Event()
    open_sockets: list[socket.socket] = []

    def relay(source: socket.socket, sink: socket.socket, budget: int | None) -> None:
        sent = 0
        try:
            while not stop.is_set():
                data = source.recv(CHUNK if budget is None else min(CHUNK, budget - sent))
                if not data:
                    break
                sink.sendall(data)
                sent += len(data)
                if budget is not None and sent >= budget:
                    break
        except OSError:
            pass
        for s in (source, sink):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def accept() -> None:
        while not stop.is_set():
            try:
                client, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", port))
            for s in (client, upstream):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            open_sockets.extend((client, upstream))
            threading.Thread(target=relay, args=(client, upstream, None), daemon=True).start()
            threading.Thread(target=relay, args=(upstream, client, nbytes), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listen_port
    finally:
        stop.set()
        thread.join(2)
        server.close()
        for s in open_sockets:
            s.close()
