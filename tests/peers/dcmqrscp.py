"""DCMTK's dcmqrscp on a free port: the second, stricter legacy PACS of the PACS-bridge tests.

Installed from apt (``dcmtk``); see /work/shared/PEERS.md. Data is loaded with ``dcmqridx``
before start-up (C-STORE of compressed data into dcmqrscp fails with stock settings), and the
binaries are called by absolute path because pynetdicom's own CLI scripts shadow them on PATH.

    with run_dcmqrscp(tmp_path, files=[...], gateway_port=11113) as pacs:
        # DIMSE: pacs.aet on 127.0.0.1:pacs.port
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.peers.ports import free_port

DCMQRSCP = "/usr/bin/dcmqrscp"
DCMQRIDX = "/usr/bin/dcmqridx"
DCMQRSCP_AET = "DCMQRSCP"
GATEWAY_AET = "GATEWAY"
START_TIMEOUT = 10.0


@dataclass(frozen=True)
class DcmqrscpPeer:
    aet: str
    port: int
    pid: int
    storage: Path
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def dcmqrscp_available() -> bool:
    return Path(DCMQRSCP).is_file() and Path(DCMQRIDX).is_file()


def dcmqrscp_config(
    *, port: int, storage: Path, gateway_aet: str = GATEWAY_AET, gateway_port: int = 11112, max_pdu: int = 16384
) -> str:
    """The configuration file text: the gateway is a known host (C-MOVE destination), and the one
    archive AE may be used by any peer (``ANY``)."""
    return "\n".join(
        [
            f"NetworkTCPPort  = {port}",
            f"MaxPDUSize      = {max_pdu}",
            "MaxAssociations = 16",
            "",
            "HostTable BEGIN",
            f"gateway = ({gateway_aet}, 127.0.0.1, {gateway_port})",
            "HostTable END",
            "",
            "VendorTable BEGIN",
            "VendorTable END",
            "",
            "AETable BEGIN",
            # A larger quota is clamped with a warning (PEERS.md).
            f"{DCMQRSCP_AET}  {storage}  RW  (500, 1024mb)  ANY",
            "AETable END",
            "",
        ]
    )


@contextmanager
def run_dcmqrscp(
    tmpdir: Path,
    *,
    files: Iterable[bytes] = (),
    gateway_aet: str = GATEWAY_AET,
    gateway_port: int = 11112,
    port: int | None = None,
) -> Iterator[DcmqrscpPeer]:
    """Index ``files`` (Part 10 bytes) into a fresh archive under ``tmpdir`` and serve it."""
    if not dcmqrscp_available():
        raise RuntimeError(f"DCMTK is missing ({DCMQRSCP}): apt-get install dcmtk")
    tmpdir = Path(tmpdir)
    storage = tmpdir / "archive"
    storage.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, data in enumerate(files):
        path = storage / f"in{i:05d}.dcm"
        path.write_bytes(data)
        paths.append(str(path))
    # dcmqridx takes a bounded argument list: index in batches.
    for start in range(0, len(paths), 200):
        subprocess.run([DCMQRIDX, str(storage), *paths[start : start + 200]], check=True, capture_output=True)
    port = port or free_port()
    config = tmpdir / "dcmqrscp.cfg"
    config.write_text(dcmqrscp_config(port=port, storage=storage, gateway_aet=gateway_aet, gateway_port=gateway_port))
    log_path = tmpdir / "dcmqrscp.log"
    # DCMTK waits ~40 ms per DIMSE response without TCP_NODELAY (PEERS.md).
    env = {**os.environ, "TCP_NODELAY": "1"}
    with log_path.open("wb") as log:
        # Its own session: dcmqrscp forks a child per association, and stopping must end them too.
        process = subprocess.Popen(
            [DCMQRSCP, "-c", str(config), "-ll", "info"],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
    peer = DcmqrscpPeer(DCMQRSCP_AET, port, process.pid, storage, log_path)
    try:
        _wait_listening(port, process, log_path)
        yield peer
    finally:
        stop_process_group(process)


def _wait_listening(port: int, process: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"dcmqrscp exited with {process.returncode}:\n{log_path.read_text(errors='replace')}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"dcmqrscp did not listen within {START_TIMEOUT} s")
        time.sleep(0.05)


def stop_process_group(process: subprocess.Popen[bytes]) -> None:
    """Stop a process started with ``start_new_session=True`` and everything it forked."""
    if process.poll() is None:
        with _ignore_missing():
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with _ignore_missing():
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    with _ignore_missing():  # forked children of an already-exited parent
        os.killpg(process.pid, signal.SIGKILL)


def _ignore_missing() -> contextlib.suppress:
    return contextlib.suppress(ProcessLookupError)
