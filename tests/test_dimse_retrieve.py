"""The C-MOVE and C-GET SCPs end to end: DCMTK's movescu (to a DCMTK storescp started as the
destination) and getscu, and pynetdicom SCUs and storage SCPs where no tool does what a test
needs, against the gateway's handlers (tests/dimse_retrieve_scp.py)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pydicom
import pytest

from gateway.security.access import Restriction
from tests import factory
from tests.dimse_retrieve_scp import Peer, RetrieveScp, retrieve_scp
from tests.http_helpers import uids_of
from tests.peers.ports import free_port
from tests.peers.processes import stop_process
from tests.test_pacs_wado import dataset_bytes

pytestmark = [
    pytest.mark.skipif(shutil.which("movescu") is None, reason="DCMTK is not installed (apt-get install dcmtk)"),
    pytest.mark.timeout(180),
]

DEST_AET = "STORESCP"
PEERS = {
    "MOVESCU": Peer("movescu"),
    "GETSCU": Peer("getscu"),
    "RESTRICTED": Peer("restricted", Restriction(patient_ids=frozenset({"PID-OWN"}))),
}
OWN = factory.Patient("OWN^PATIENT", "PID-OWN")
OTHER = factory.Patient("OTHER^PATIENT", "PID-OTHER")


@contextmanager
def storescp(directory: Path, *options: str) -> Iterator[int]:
    """DCMTK's storescp writing what it receives, bit-preserving, into ``directory``."""
    port = free_port()
    argv = ["storescp", "-aet", DEST_AET, "+B", "-od", str(directory), *options, str(port)]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        _wait_listening(port)
        yield port
    finally:
        stop_process(process, 5)


def _wait_listening(port: int) -> None:
    for _ in range(200):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on port {port}")


def received(directory: Path) -> dict[str, bytes]:
    """SOP Instance UID → Part 10 bytes of each file a storescp/getscu wrote."""
    found: dict[str, bytes] = {}
    for path in directory.iterdir():
        if path.is_file():
            data = path.read_bytes()
            found[str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)] = data
    return found


def run(argv: list[str]) -> str:
    done = subprocess.run(argv, capture_output=True, timeout=120, check=False)
    return (done.stdout + done.stderr).decode("utf-8", "replace")


def movescu(scp: RetrieveScp, *keys: str, aet: str = "MOVESCU", destination: str = DEST_AET) -> str:
    argv = ["movescu", "-v", "-S", "-aet", aet, "-aec", scp.ae_title, "-aem", destination, "-to", "30"]
    for key in keys:
        argv += ["-k", key]
    return run([*argv, "127.0.0.1", str(scp.port)])


@pytest.fixture
def series() -> list[bytes]:
    return factory.ct_series(5, rows=32, cols=32, seed=51, patient=OWN)


def test_movescu_to_storescp_delivers_the_stored_bytes(tmp_path: Path, series: list[bytes]) -> None:
    study, _, _ = uids_of(series[0])
    out = tmp_path / "dest"
    out.mkdir()
    with storescp(out, "+xa") as port:
        destinations = {DEST_AET: ("127.0.0.1", port)}
        with retrieve_scp(tmp_path, peers=PEERS, destinations=destinations) as scp:
            scp.stow(*series)
            log = movescu(scp, "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study}")
    got = received(out)
    assert {sop: dataset_bytes(data) for sop, data in got.items()} == {
        uids_of(d)[2]: dataset_bytes(d) for d in series
    }, log
    assert "Move Response: Success" in log or "Received Final Move Response (Success)" in log, log
    [outcome] = scp.outcomes
    assert (outcome.status, outcome.completed, outcome.failed) == (0x0000, 5, 0)
