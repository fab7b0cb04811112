"""The DIMSE front door's listener: who may associate (PS3.8 reasons, read by DCMTK's echoscu),
C-ECHO, the association cap, and bad bytes on the port."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider

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
    pacs = [{"name": "main", "ae_title": "MAINPACS", "host": "127.0.0.1", "port": 1}]
    where = tmp_path_factory.mktemp("listener")
    with dimse_gateway(where, clients=CLIENTS, pacs=pacs, dimse={"max_associations": 2}) as running:
        yield running


def echoscu(gw: DimseGateway, *, aet: str, aec: str | None = None) -> subprocess.CompletedProcess[str]:
    argv = ["echoscu", "-v", "-aet", aet, "-aec", aec or gw.ae_title, "-to", "20", "127.0.0.1", str(gw.port)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def test_a_known_peer_echoes(gw: DimseGateway) -> None:
    result = echoscu(gw, aet="VIEWER")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Received Echo Response (Success)" in result.stdout + result.stderr


def test_a_pacs_node_echoes(gw: DimseGateway) -> None:
    result = echoscu(gw, aet="MAINPACS")
    assert result.returncode == 0, result.stdout + result.stderr


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
    metrics = gw.run(gw.http.get("/metrics")).text
    assert 'dicomweb_gateway_dimse_scp_rejected_associations_total{reason="local limit exceeded"}' in metrics


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


def test_peers_silent_in_the_middle_of_a_pdu_do_not_hold_the_door(tmp_path: Path) -> None:
    """Half an association request, and half a P-DATA on an established association, then
    silence: each is dropped after ``network_timeout`` and its slot is free again."""
    limits = {"max_associations": 2, "network_timeout": 2, "acse_timeout": 2}
    with dimse_gateway(tmp_path, clients=CLIENTS, dimse=limits) as gw:
        half_request = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
        half_request.sendall(b"\x01\x00\x00\x00\x00\x64" + b"\x00" * 10)  # 16 of 106 bytes
        ae = AE(ae_title="VIEWER")
        ae.add_requested_context("1.2.840.10008.1.1")
        assoc = ae.associate("127.0.0.1", gw.port, ae_title=gw.ae_title)
        assert assoc.is_established
        assoc.dul.socket.socket.sendall(b"\x04\x00\x00\x01\x00\x00" + b"\x00" * 16)  # P-DATA, 16 of 65536
        try:
            held = echoscu(gw, aet="VIEWER")
            assert "Local Limit Exceeded" in held.stdout + held.stderr
            # However long it takes (network_timeout, 2 s here), the door opens again.
            while echoscu(gw, aet="VIEWER").returncode != 0:
                time.sleep(0.5)
        finally:
            half_request.close()
            assoc.abort()


def test_stopping_the_gateway_ends_open_associations_and_their_threads(tmp_path: Path) -> None:
    def acceptor_threads() -> list[threading.Thread]:
        return [
            t
            for t in threading.enumerate()
            if (isinstance(t, Association) and t.is_acceptor)
            or (isinstance(t, DULServiceProvider) and t.assoc.is_acceptor)
        ]

    with dimse_gateway(tmp_path, clients=CLIENTS) as gw:
        ae = AE(ae_title="VIEWER")
        ae.add_requested_context("1.2.840.10008.1.1")
        assoc = ae.associate("127.0.0.1", gw.port, ae_title=gw.ae_title)
        assert assoc.is_established
        assert acceptor_threads()
    # The listener aborted the association: the client sees it, the gateway's threads end.
    while assoc.is_established or acceptor_threads():
        time.sleep(0.1)
    assert assoc.is_aborted


def test_a_pdu_claiming_to_be_huge_is_cut_off_before_it_is_read(gw: DimseGateway) -> None:
    """An association request announcing 1 GiB, then data: the listener closes the connection
    instead of gathering it (pynetdicom would read the whole PDU into memory first)."""
    with socket.create_connection(("127.0.0.1", gw.port), timeout=30) as sock:
        sent = send_until_refused(sock, b"\x01\x00" + (1 << 30).to_bytes(4, "big"), total=1 << 30)
    assert sent < 64 << 20  # what the socket buffers took, not the gigabyte
    assert echoscu(gw, aet="VIEWER").returncode == 0


def send_until_refused(sock: socket.socket, header: bytes, *, total: int) -> int:
    """Send ``header`` then zeros up to ``total`` bytes; how many were sent before the peer
    stopped reading (broken pipe or reset), or ``total``."""
    sent = 0
    chunk = b"\x00" * 65536
    try:
        sock.sendall(header)
        while sent < total:
            sock.sendall(chunk)
            sent += len(chunk)
    except (BrokenPipeError, ConnectionResetError):
        pass
    return sent
