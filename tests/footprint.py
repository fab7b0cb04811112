"""What a running gateway process holds, seen from outside through /proc: threads, open files,
client connections and connections to its peers (for tests that check nothing leaks)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fixtures_gateway import RunningGateway


def http_port(gw: RunningGateway) -> int:
    return int(gw.root.rsplit(":", 1)[1])


def _tcp_table(pid: int) -> dict[int, tuple[int, int, str]]:
    """socket inode -> (local port, remote port, state) for the process's network namespace."""
    table: dict[int, tuple[int, int, str]] = {}
    for name in ("tcp", "tcp6"):
        path = Path(f"/proc/{pid}/net/{name}")
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            local, remote, state, inode = fields[1], fields[2], fields[3], int(fields[9])
            table[inode] = (int(local.rsplit(":", 1)[1], 16), int(remote.rsplit(":", 1)[1], 16), state)
    return table


# /proc/net/tcp state codes (include/net/tcp_states.h)
_TCP_STATES = {"01": "ESTABLISHED", "06": "TIME_WAIT", "07": "CLOSE", "08": "CLOSE_WAIT", "0A": "LISTEN"}


@dataclass(frozen=True)
class Footprint:
    """What the gateway process holds right now."""

    threads: int
    files: frozenset[str]  # open regular files (and devices) by path
    client_connections: int  # TCP connections on its HTTP port (not the listener)
    peer_connections: dict[int, int]  # remote port -> open TCP connections (S3, a PACS)
    peer_states: dict[int, list[str]]  # remote port -> the TCP states of those connections
    other: int  # pipes, event fds, listeners, ...


def footprint(gw: RunningGateway, peer_ports: Sequence[int] = ()) -> Footprint:
    pid = gw.process.pid
    tcp = _tcp_table(pid)
    files: set[str] = set()
    clients = other = 0
    peers = dict.fromkeys(peer_ports, 0)
    states: dict[int, list[str]] = {port: [] for port in peer_ports}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:
            continue  # closed while we looked
        if target.startswith("socket:["):
            entry = tcp.get(int(target[8:-1]))
            if entry is not None and entry[0] == http_port(gw) and entry[2] != "0A":  # 0A: LISTEN
                clients += 1
            elif entry is not None and entry[1] in peers:
                peers[entry[1]] += 1
                states[entry[1]].append(_TCP_STATES.get(entry[2], entry[2]))
            else:
                other += 1
        elif target.startswith("/"):
            files.add(target)
        else:
            other += 1
    threads = len(os.listdir(f"/proc/{pid}/task"))
    return Footprint(threads, frozenset(files), clients, peers, states, other)


def footprint_problems(now: Footprint, baseline: Footprint, pool_limits: dict[int, int]) -> list[str]:
    problems = []
    if now.threads > baseline.threads:
        problems.append(f"{now.threads} threads, {baseline.threads} after the warm-up")
    if extra := sorted(now.files - baseline.files):
        problems.append(f"files left open: {extra}")
    if now.client_connections:
        problems.append(f"{now.client_connections} client connection(s) still open")
    for port, count in now.peer_connections.items():
        if count > pool_limits[port]:
            states = ", ".join(sorted(now.peer_states[port]))
            problems.append(f"{count} connections to port {port} ({states}), more than its pool of {pool_limits[port]}")
    if now.other > baseline.other:
        problems.append(f"{now.other} pipes/sockets/event fds, {baseline.other} after the warm-up")
    return problems


# Longer than anyio's retirement of idle worker threads (10 s) and the DIMSE pool's of idle
# associations (15 s), with room for a busy machine.
SETTLE_SECONDS = 45.0


def settle(check: Callable[[], list[str]], nudge: Callable[[], None], timeout: float = SETTLE_SECONDS) -> None:
    """Poll ``check`` until it reports nothing; fail with its last report after ``timeout``.

    ``nudge`` runs between polls: a request that runs in a worker thread lets anyio retire the
    pool threads idle for 10 s (it does so only when a new job arrives)."""
    deadline = time.monotonic() + timeout
    while problems := check():
        if time.monotonic() > deadline:
            listed = "\n  ".join(problems)
            pytest.fail(f"still left behind after {timeout:.0f} s:\n  {listed}")
        nudge()
        time.sleep(0.5)
