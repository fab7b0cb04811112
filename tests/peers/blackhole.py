"""Fault peers for the PACS-bridge tests: a listener that accepts and never answers."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from tests.peers.ports import free_port


@contextmanager
def black_hole() -> Iterator[int]:
    """A TCP port that accepts connections and then says nothing (the peer of an ACSE timeout)."""
    port = free_port()
    server = socket.create_server(("127.0.0.1", port))
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            accepted.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        stop.set()
        thread.join(2)
        server.close()
        for conn in accepted:
            conn.close()
