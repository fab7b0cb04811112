"""The DIMSE front door's listener: who may associate (PS3.8 reasons, read by DCMTK's echoscu),
C-ECHO, the association cap, and bad bytes on the port."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pynetdicom import AE

from tests.dimse_gateway import DimseGateway, client, dimse_gateway

pytestmark = [
    pytest.mark.skipif(shutil.which("echoscu") is None, reason="DCMTK is not installed (apt-get install dcmtk)"),
    pytest.mark.timeout(120),
]

CLIENTS = [
    client("VIEWER", scopes=["read"]),
    client("MODALITY", scopes=["write"]),
    client("LOCALONLY", host="127.0.0.1", scopes=["read"]),
    client("ELSEWHERE", host="10.255.255.1", scopes=["read"]),
]


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DimseGateway]:
    with dimse_gateway(tmp_path_factory.mktemp("listener"), clients=CLIENTS, dimse={"max_associations": 2}) as running:
        yield running


def echoscu(gw: DimseGateway, *, aet: str, aec: str | None = None) -> subprocess.CompletedProcess[str]:
    argv = ["echoscu", "-v", "-aet", aet, "-aec", aec or gw.ae_title, "-to", "20", "127.0.0.1", str(gw.port)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def test_a_known_peer_echoes(gw: DimseGateway) -> None:
    result = echoscu(gw, aet="VIEWER")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Received Echo Response (Success)" in result.stdout + result.stderr


def test_a_peer_from_its_own_address_echoes(gw: DimseGateway) -> None:
    result = echoscu(gw, aet="LOCALONLY")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("aet", "aec", "reason"),
    [
        ("STRANGER", None, "Calling AE Title Not Recognized"),
        ("VIEWER", "SOMEONEELSE", "Called AE Title Not Recognized"),
        ("ELSEWHERE", None, "Calling AE Title Not Recognized"),  # its host is another address
    ],
)
def test_associations_are_rejected_with_the_ps38_reason(
    gw: DimseGateway, aet: str, aec: str | None, reason: str
) -> None:
    result = echoscu(gw, aet=aet, aec=aec)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Association Rejected" in output, output
    assert "Rejected Permanent" in output, output
    assert reason in output, output


def test_beyond_max_associations_is_local_limit_exceeded(gw: DimseGateway) -> None:
    ae = AE(ae_title="VIEWER")
    ae.add_requested_context("1.2.840.10008.1.1")
    held = [ae.associate("127.0.0.1", gw.port, ae_title=gw.ae_title) for _ in range(2)]
    try:
        assert all(a.is_established for a in held)
        result = echoscu(gw, aet="VIEWER")
        output = result.stdout + result.stderr
        assert "Association Rejected" in output, output
        assert "Rejected Transient" in output, output
        assert "Local Limit Exceeded" in output, output
    finally:
        for assoc in held:
            assoc.release()
    assert echoscu(gw, aet="VIEWER").returncode == 0  # the slots are free again


@pytest.mark.parametrize(
    "garbage",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"\x01\x00\x00\x00\xff\xff" + b"\x00" * 64,  # an A-ASSOCIATE-RQ cut short
        b"\x01\x00\x00\x00\x00\x40" + b"\xff" * 64,  # an A-ASSOCIATE-RQ of nonsense
        b"\x07\x00\x00\x00\x00\x04\x00\x00",  # an A-ABORT before any association
        bytes(range(256)) * 8,
    ],
)
def test_garbage_on_the_port_does_not_hurt_the_listener(gw: DimseGateway, garbage: bytes) -> None:
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
        sock.sendall(garbage)
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(10)
        try:
            while sock.recv(4096):
                pass
        except (ConnectionResetError, TimeoutError):
            pass
    result = echoscu(gw, aet="VIEWER")
    assert result.returncode == 0, result.stdout + result.stderr


def test_rejected_and_broken_associations_leave_no_thread_behind(gw: DimseGateway, tmp_path: Path) -> None:
    import threading

    baseline = threading.active_count()
    for _ in range(10):
        echoscu(gw, aet="STRANGER")
        with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
            sock.sendall(b"\x07\x00\x00\x00\x00\x04\x00\x00")
    # Threads end asynchronously after their sockets close; wait for them, however long.
    while threading.active_count() > baseline:
        time.sleep(0.1)
    assert threading.active_count() <= baseline


def test_query_retrieve_contexts_are_offered_to_read_clients_only(gw: DimseGateway) -> None:
    study_root_find = "1.2.840.10008.5.1.4.1.2.2.1"
    accepted = {}
    for aet in ("VIEWER", "MODALITY"):
        ae = AE(ae_title=aet)
        ae.add_requested_context(study_root_find)
        ae.add_requested_context("1.2.840.10008.1.1")
        assoc = ae.associate("127.0.0.1", gw.port, ae_title=gw.ae_title)
        assert assoc.is_established
        accepted[aet] = {str(cx.abstract_syntax) for cx in assoc.accepted_contexts}
        assoc.release()
    assert study_root_find in accepted["VIEWER"]
    assert accepted["MODALITY"] == {"1.2.840.10008.1.1"}  # C-ECHO only: no read scope
