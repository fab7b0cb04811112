"""Free TCP ports for peer servers started by the tests."""

from __future__ import annotations

import random
import socket
import threading
from collections.abc import Iterable

# Candidates stay below the Linux ephemeral range (32768-60999 by default) even with a +10000
# offset (SeaweedFS's gRPC ports), so outgoing connections cannot take them in the meantime.
_LOW, _HIGH = 12000, 22700
_handed_out: set[int] = set()
_lock = threading.Lock()


def is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when nothing listens on (or is bound to) ``host:port`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(*, offsets: Iterable[int] = (0,), host: str = "127.0.0.1") -> int:
    """A port P such that P + offset is free for every offset, never handed out before.

    Peers derive extra ports from the one they are given (SeaweedFS: gRPC = HTTP + 10000), hence
    ``offsets``. Ports returned earlier in this process are not returned again even though the
    peer may not have bound them yet, so several calls in a row give distinct ports.
    """
    offsets = tuple(offsets)
    with _lock:
        for _ in range(1000):
            port = random.randrange(_LOW, _HIGH)
            wanted = [port + offset for offset in offsets]
            if any(p in _handed_out or p > 65535 for p in wanted):
                continue
            if all(is_free(p, host) for p in wanted):
                _handed_out.update(wanted)
                return port
    raise RuntimeError(f"no free port with offsets {offsets} in {_LOW}-{_HIGH}")
