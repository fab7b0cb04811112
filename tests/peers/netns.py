"""A private network namespace for PACS-fault tests: a peer behind a veth pair whose link can
be cut and restored, as a network partition would, while the peer keeps running.

    with network_namespace() as ns:
        process = ns.popen(["Orthanc", "config.json"], ...)  # runs inside, reachable at ns.ns_addr
        ns.shape("40mbit")  # slow what the peer sends, so a transfer can be cut mid-way
        ns.link_down()  # silent partition: packets vanish both ways, no RST, no ICMP
        ns.link_up()

Layout: namespace ``dwgw-<pid>-<n>``, veth ``dwgw<pid>h<n>`` (host side, ``host_addr``/30) and
``dwgw<pid>n<n>`` (inside, ``ns_addr``/30), ``lo`` up inside. Needs root (``ip netns``, ``tc``);
anything failing here raises, so a test cannot pass without a real partition.

How the link is cut. ``ip link set <veth> down`` is *not* a silent partition: the kernel removes
the connected route with the link, so new connections to ``ns_addr`` follow the default route
out of the machine (measured here: a connect "succeeded" to a proxy on the default gateway,
elsewhere it fails with "network unreachable"), and the peer side sees carrier loss. Instead
:meth:`link_down` replaces the root qdisc of *both* veth ends with ``blackhole``, which drops
every packet while reporting success to the sender: routes and carrier stay, established
connections see nothing (no RST, no error on the socket) and new connects time out, which is
what a cable pulled between two switches looks like. ``tc ... netem loss 100%`` would do the
same but sch_netem is not available in this kernel; nor are iptables/nftables.

Clean-up is unconditional: processes started here are killed, the veth deleted (its peer goes
with it) and the namespace removed, also when the body or the set-up fails. Namespaces and
veths left by a crashed run (whose pid no longer exists) are removed before a new one is made.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
import re
import signal
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.peers.processes import stop_process

PREFIX = "dwgw"
SUBNET_PREFIX = "10.213"  # /30 blocks are taken from 10.213.0.0/16 (private, RFC 1918)
LOCK_FILE = Path("/run/dwgw-netns.lock")  # serialises set-up between concurrent test runs
STOP_TIMEOUT = 10.0
_counter = itertools.count()


class NetnsError(RuntimeError):
    """A namespace command failed: the test cannot simulate the fault (and must not pass)."""


def _ip(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return _run(["ip", *argv], check=check)


def _run(argv: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(argv), capture_output=True, text=True, timeout=30, check=False)
    if check and result.returncode != 0:
        raise NetnsError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


@dataclass
class Namespace:
    """A running namespace (see the module docstring). ``host_addr`` is this machine's address on
    the link, ``ns_addr`` the namespace's."""

    name: str
    host_if: str
    ns_if: str
    host_addr: str
    ns_addr: str
    _processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _rate: str | None = None
    is_down: bool = False

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside the namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        """Start ``argv`` inside the namespace; it is killed when the namespace is removed."""
        process = subprocess.Popen(self.command(argv), **kwargs)
        self._processes.append(process)
        return process

    def run(self, argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        return _run(self.command(argv))

    def shape(self, rate: str) -> None:
        """Limit what the namespace sends to ``rate`` (tc units, e.g. ``"40mbit"``) with a token
        bucket filter on its veth end, so a transfer from the peer lasts long enough to be cut."""
        self._rate = rate
        if not self.is_down:
            self._set_ns_qdisc()

    def link_down(self) -> None:
        """Cut the link silently, both ways (see the module docstring for why not ``ip link``)."""
        _run(["tc", "qdisc", "replace", "dev", self.host_if, "root", "blackhole"])
        self.run(["tc", "qdisc", "replace", "dev", self.ns_if, "root", "blackhole"])
        self.is_down = True

    def link_up(self) -> None:
        """Restore the link (and its shaping); connections that survived resume."""
        _run(["tc", "qdisc", "del", "dev", self.host_if, "root"])
        self.is_down = False
        self._set_ns_qdisc()

    def _set_ns_qdisc(self) -> None:
        if self._rate is None:
            self.run(["tc", "qdisc", "del", "dev", self.ns_if, "root"])
            return
        # A burst of 64 kB and 50 ms of queue: smooth enough that every DIMSE PDU is paced.
        tbf = ["tbf", "rate", self._rate, "burst", "64kb", "latency", "50ms"]
        self.run(["tc", "qdisc", "replace", "dev", self.ns_if, "root", *tbf])

    def stop_processes(self) -> None:
        for process in self._processes:
            stop_process(process, STOP_TIMEOUT)
        self._processes.clear()


@contextmanager
def network_namespace() -> Iterator[Namespace]:
    """Create a namespace with a veth link to this one; remove everything on exit."""
    n = next(_counter)
    pid = os.getpid()
    ns = Namespace(
        name=f"{PREFIX}-{pid}-{n}",
        host_if=f"{PREFIX}{pid}h{n}",
        ns_if=f"{PREFIX}{pid}n{n}",
        host_addr="",
        ns_addr="",
    )
    try:
        with _setup_lock():
            remove_stale()
            ns.host_addr, ns.ns_addr = _free_block()
            _ip("netns", "add", ns.name)
            _ip("link", "add", ns.host_if, "type", "veth", "peer", "name", ns.ns_if)
            _ip("link", "set", ns.ns_if, "netns", ns.name)
            _ip("addr", "add", f"{ns.host_addr}/30", "dev", ns.host_if)
            _ip("link", "set", ns.host_if, "up")
            _ip("-n", ns.name, "addr", "add", f"{ns.ns_addr}/30", "dev", ns.ns_if)
            _ip("-n", ns.name, "link", "set", ns.ns_if, "up")
            _ip("-n", ns.name, "link", "set", "lo", "up")
        yield ns
    finally:
        ns.stop_processes()
        _remove(ns.name, ns.host_if)


def _remove(name: str, host_if: str) -> None:
    # Deleting the veth takes its peer with it; deleting the namespace alone would leave the
    # host side for as long as the kernel's namespace clean-up takes.
    _ip("link", "del", host_if, check=False)
    for pid in _ip("netns", "pids", name, check=False).stdout.split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)
    _ip("netns", "del", name, check=False)
    leftover = [line for line in _ip("netns", "list").stdout.splitlines() if line.split(" ")[0] == name]
    if leftover or _ip("link", "show", host_if, check=False).returncode == 0:
        raise NetnsError(f"could not remove namespace {name} / veth {host_if}")


def remove_stale() -> None:
    """Remove namespaces and veths of this module whose creating process is gone (a crashed run)."""
    for line in _ip("netns", "list").stdout.splitlines():
        match = re.fullmatch(rf"{PREFIX}-(\d+)-(\d+)", line.split(" ")[0])
        if match and not _alive(int(match.group(1))):
            _remove(match.group(0), f"{PREFIX}{match.group(1)}h{match.group(2)}")
    for line in _ip("-o", "link", "show").stdout.splitlines():
        match = re.search(rf"\d+: ({PREFIX}(\d+)h\d+)[@:]", line)
        if match and not _alive(int(match.group(2))):
            _ip("link", "del", match.group(1), check=False)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _free_block() -> tuple[str, str]:
    """Host and namespace addresses of the first ``10.213.x.y/30`` block no interface uses."""
    used = set(re.findall(rf"inet ({re.escape(SUBNET_PREFIX)}\.\d+\.\d+)/", _ip("-4", "-o", "addr").stdout))
    for third in range(256):
        for fourth in range(0, 256, 4):
            host, inside = (f"{SUBNET_PREFIX}.{third}.{fourth + i}" for i in (1, 2))
            if not {host, inside} & used:
                return host, inside
    raise NetnsError(f"no free /30 in {SUBNET_PREFIX}.0.0/16")


@contextmanager
def _setup_lock() -> Iterator[None]:
    with LOCK_FILE.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
