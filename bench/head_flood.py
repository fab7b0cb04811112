"""Header-flood memory check: N connections stream request heads far past the head cap at a
gateway and its resident memory is sampled before, during and after.

    python -m bench.head_flood [--connections 8] [--megabytes 240] [--seconds 10]

Starts ``dicomweb-gateway serve`` (API-key authentication, so the heads are those of
unauthenticated requests) on a free port, opens the connections, and has each send
``GET /dicomweb/studies`` followed by header lines until it has sent ``--megabytes`` or the
server stops reading (431 and closed: the client reconnects and goes on until the time is up).
Prints the gateway's RSS (psutil) before, the peak while flooding, and after, and how many
431 answers came back.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil

LINE = b"X-Flood: " + b"a" * 100 + b"\r\n"


def flood(port: int, megabytes: int, until: float, answers: list[int]) -> None:
    chunk = LINE * 600  # ~65 KB per send
    while time.monotonic() < until:
        sent = 0
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                sock.sendall(b"GET /dicomweb/studies HTTP/1.1\r\nHost: 127.0.0.1\r\n")
                while sent < megabytes << 20 and time.monotonic() < until:
                    sock.sendall(chunk)
                    sent += len(chunk)
                sock.settimeout(2)
                answers.append(int(sock.recv(64)[9:12] or b"0"))
        except (OSError, ValueError):
            answers.append(0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--megabytes", type=int, default=240, help="per connection")
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        keys = Path(tmp) / "keys.json"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DICOMWEB_GATEWAY_", "AWS_"))}
        subprocess.run(
            [sys.executable, "-m", "gateway", "apikey", "create", "bench", "--scope", "read", "--keys-file", str(keys)],
            check=True, capture_output=True, env=env,
        )  # fmt: skip
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        env |= {"DICOMWEB_GATEWAY_AUTH__API_KEYS_FILE": str(keys), "DICOMWEB_GATEWAY_AUDIT__DESTINATION": "off"}
        server = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--port", str(port), "--data", tmp, "--log-level", "warning"],
            env=env,
        )
        try:
            for _ in range(300):
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.1)
            proc = psutil.Process(server.pid)
            before = proc.memory_info().rss
            answers: list[int] = []
            until = time.monotonic() + args.seconds
            threads = [
                threading.Thread(target=flood, args=(port, args.megabytes, until, answers), daemon=True)
                for _ in range(args.connections)
            ]
            for t in threads:
                t.start()
            peak = before
            while any(t.is_alive() for t in threads):
                peak = max(peak, proc.memory_info().rss)
                time.sleep(0.1)
            time.sleep(1)
            after = proc.memory_info().rss
        finally:
            server.terminate()
            server.wait(10)
    mib = 1 << 20
    print(f"connections={args.connections} megabytes_each={args.megabytes} seconds={args.seconds:g}")
    print(f"rss_before_mib={before / mib:.0f} rss_peak_mib={peak / mib:.0f} rss_after_mib={after / mib:.0f}")
    # A flooding client that is still sending when the server drops it sees a reset, not the 431.
    print(f"answers_431={answers.count(431)} reset_or_unread={len(answers) - answers.count(431)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
