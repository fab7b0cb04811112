"""A private PostgreSQL cluster for fault tests: started, stopped, crashed and restarted at will.

The machine-wide PostgreSQL (127.0.0.1:5432) is shared by everyone's tests and must never be
stopped, so the index-outage tests run their own cluster: ``initdb`` into a temporary directory,
``postgres`` on a free TCP port (its unix socket in the same directory), trust authentication.
PostgreSQL refuses to run as root, so when the tests are root every server command runs as the
``postgres`` OS user (``setpriv``, which execs: the pid we signal is the postmaster's), owning
the cluster's directory (a fresh one under the system temp dir: pytest's ``tmp_path`` is private
to root and the server user could not enter it).

    with run_postgres() as pg:
        pg.url                  # postgresql://postgres@127.0.0.1:PORT/postgres
        pg.stop("fast")         # or "immediate" (no shutdown checkpoint), or pg.crash() (SIGKILL)
        pg.start()              # same port, same data
        pg.terminate_backends() # pg_terminate_backend() of every other client, a failover-like reset
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Literal

import psycopg

from tests.peers.ports import free_port


def _newest_server_bin() -> Path:
    """Debian's server binaries of the newest installed major version (15 on bookworm)."""
    versions = sorted(
        (p for p in Path("/usr/lib/postgresql").glob("*/bin") if p.parent.name.isdigit()),
        key=lambda p: int(p.parent.name),
    )
    return versions[-1] if versions else Path("/usr/lib/postgresql/15/bin")


PG_BIN = _newest_server_bin()
SERVER_USER = "postgres"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0

StopMode = Literal["smart", "fast", "immediate"]


class PrivatePostgres:
    """One cluster in ``root`` listening on 127.0.0.1:``port``; see the module docstring."""

    def __init__(self, root: Path, port: int) -> None:
        self.root = root
        self.port = port
        self.data = root / "data"
        self.socket_dir = root / "sock"
        self.log_path = root / "postgres.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"postgresql://{SERVER_USER}@127.0.0.1:{self.port}/postgres"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        """The postmaster's process id while it runs."""
        return self._process.pid if self.running and self._process is not None else None

    def init(self) -> None:
        """``initdb`` a fresh cluster (trust authentication, no fsync: tests, not durability of
        PostgreSQL itself, which a crash of the postmaster does not need anyway)."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(exist_ok=True)
        _give_to_server_user(self.root)
        _give_to_server_user(self.socket_dir)
        _run_as_server_user(
            [str(PG_BIN / "initdb"), "-D", str(self.data), "-U", SERVER_USER, "--auth=trust", "-E", "UTF8"],
            check=True,
        )

    def start(self) -> None:
        """Start the server on the same port and data directory; return when it accepts clients."""
        if self.running:
            raise RuntimeError("PostgreSQL is already running")
        command = [
            str(PG_BIN / "postgres"),
            "-D",
            str(self.data),
            "-p",
            str(self.port),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            f"unix_socket_directories={self.socket_dir}",
            "-c",
            "fsync=off",
            "-c",
            "max_connections=60",
            "-c",
            "shared_buffers=16MB",
        ]
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                _as_server_user(command),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.root,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(f"postgres exited with {self._process.returncode}:\n{self.log_tail()}")
            try:
                with psycopg.connect(self.url, connect_timeout=2, autocommit=True) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"postgres did not accept clients:\n{self.log_tail()}") from None
            time.sleep(0.05)

    def stop(self, mode: StopMode = "fast") -> None:
        """Shut down as ``pg_ctl stop -m MODE`` would: SIGTERM (smart: wait for clients), SIGINT
        (fast: disconnect clients, checkpoint) or SIGQUIT (immediate: exit at once, recover on
        the next start)."""
        sig = {"smart": signal.SIGTERM, "fast": signal.SIGINT, "immediate": signal.SIGQUIT}[mode]
        self._signal_and_wait(sig)

    def crash(self) -> None:
        """SIGKILL the postmaster, like the OOM killer would. Its backends notice that their
        postmaster died and exit; the next start recovers from the WAL."""
        self._signal_and_wait(signal.SIGKILL)
        # Orphaned backends keep the shared memory segment until they are gone: wait for them, or
        # the next start refuses ("pre-existing shared memory block is still in use").
        deadline = time.monotonic() + STOP_TIMEOUT
        while self._backend_pids() and time.monotonic() < deadline:
            time.sleep(0.05)

    def freeze(self) -> None:
        """SIGSTOP the postmaster and every backend: the server stops answering, but the kernel
        keeps its sockets up (connects succeed, sent data is acknowledged), as with a hung host
        or a VM paused by its hypervisor. :meth:`thaw` resumes it."""
        for pid in self._cluster_pids():
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)

    def thaw(self) -> None:
        for pid in self._cluster_pids():
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    def _cluster_pids(self) -> list[int]:
        postmaster = self.pid
        return ([postmaster] if postmaster is not None else []) + self._backend_pids()

    def terminate_backends(self) -> int:
        """``pg_terminate_backend`` every client backend but our own; returns how many. Waits
        until they are gone, as after a failover-like reset of all connections."""
        with psycopg.connect(self.url, autocommit=True, connect_timeout=5) as conn:
            rows = conn.execute(
                "SELECT pid, pg_terminate_backend(pid, 5000) FROM pg_stat_activity"
                " WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
            ).fetchall()
        return len(rows)

    def client_backends(self) -> int:
        """How many client connections the server has (besides the one asking)."""
        with psycopg.connect(self.url, autocommit=True, connect_timeout=5) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"
                " AND pid <> pg_backend_pid()"
            ).fetchone()
        assert row is not None
        return int(row[0])

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def _signal_and_wait(self, sig: signal.Signals) -> None:
        process = self._process
        if process is None or process.poll() is not None:
            return
        # setpriv execs postgres in the same process (no fork), so the pid is the postmaster's.
        with suppress(ProcessLookupError):
            os.kill(process.pid, sig)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT)

    def _backend_pids(self) -> list[int]:
        """Processes still attached to this cluster's data directory (postgres children)."""
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with suppress(OSError):
                cmdline = (entry / "cmdline").read_bytes()
                if cmdline.startswith(b"postgres:") and _cwd_is(entry, self.data):
                    found.append(int(entry.name))
        return found


def _cwd_is(proc: Path, directory: Path) -> bool:
    with suppress(OSError):
        return Path(os.readlink(proc / "cwd")) == directory.resolve()
    return False


@contextmanager
def run_postgres() -> Iterator[PrivatePostgres]:
    """A fresh private cluster (see :class:`PrivatePostgres`), removed on exit."""
    server = PrivatePostgres(Path(tempfile.mkdtemp(prefix="gateway-pg-")), free_port())
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.stop("immediate")
        server.crash()  # no-op once stopped; also waits for leftover backends
        shutil.rmtree(server.root, ignore_errors=True)


def _as_server_user(command: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return command
    return ["setpriv", f"--reuid={SERVER_USER}", f"--regid={SERVER_USER}", "--init-groups", "--", *command]


def _run_as_server_user(command: list[str], *, check: bool) -> subprocess.CompletedProcess[bytes]:
    run = subprocess.run(_as_server_user(command), capture_output=True, timeout=120, check=False, cwd="/")
    if check and run.returncode != 0:
        raise RuntimeError(f"{command[0]} failed ({run.returncode}):\n{run.stdout.decode()}{run.stderr.decode()}")
    return run


def _give_to_server_user(path: Path) -> None:
    if os.geteuid() != 0:
        return
    user = pwd.getpwnam(SERVER_USER)
    os.chown(path, user.pw_uid, user.pw_gid)
