"""DICOM TLS on the front door (PS3.15 B.9): DCMTK's echoscu over TLS, with and without the
client certificate the listener requires."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from tests.dimse_gateway import DimseGateway, client, dimse_gateway

pytestmark = [
    pytest.mark.skipif(shutil.which("echoscu") is None, reason="DCMTK is not installed (apt-get install dcmtk)"),
    pytest.mark.timeout(120),
]


@dataclass
class Tls:
    gw: DimseGateway
    ca_file: Path
    client_key: Path
    client_cert: Path
    stranger_key: Path
    stranger_cert: Path


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tls]:
    where = tmp_path_factory.mktemp("dimse-tls")
    ca, other_ca = trustme.CA(), trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1")
    server.private_key_pem.write_to_path(str(where / "server.key"))
    server.cert_chain_pems[0].write_to_path(str(where / "server.pem"))
    ca.cert_pem.write_to_path(str(where / "ca.pem"))
    issued = {"client": ca.issue_cert("viewer.example"), "stranger": other_ca.issue_cert("viewer.example")}
    for name, cert in issued.items():
        cert.private_key_pem.write_to_path(str(where / f"{name}.key"))
        cert.cert_chain_pems[0].write_to_path(str(where / f"{name}.pem"))
    settings = {
        "dimse_tls": {
            "cert_file": str(where / "server.pem"),
            "key_file": str(where / "server.key"),
            "ca_file": str(where / "ca.pem"),
        }
    }
    with dimse_gateway(where, clients=[client("VIEWER", scopes=["read"])], **settings) as gw:
        yield Tls(
            gw,
            where / "ca.pem",
            where / "client.key",
            where / "client.pem",
            where / "stranger.key",
            where / "stranger.pem",
        )


def echoscu(tls: Tls, *options: str) -> subprocess.CompletedProcess[str]:
    argv = ["echoscu", "-v", "-aet", "VIEWER", "-aec", tls.gw.ae_title, "-to", "20", *options]
    return subprocess.run(
        [*argv, "127.0.0.1", str(tls.gw.port)], capture_output=True, text=True, timeout=60, check=False
    )


def test_echo_over_tls_with_a_client_certificate(tls: Tls) -> None:
    result = echoscu(tls, "+tls", str(tls.client_key), str(tls.client_cert), "+cf", str(tls.ca_file))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Received Echo Response (Success)" in result.stdout + result.stderr


def test_without_a_client_certificate_the_handshake_fails(tls: Tls) -> None:
    result = echoscu(tls, "+tla", "+cf", str(tls.ca_file))
    assert result.returncode != 0
    assert "Echo Response" not in result.stdout + result.stderr


def test_a_certificate_from_another_ca_is_refused(tls: Tls) -> None:
    result = echoscu(tls, "+tls", str(tls.stranger_key), str(tls.stranger_cert), "+cf", str(tls.ca_file))
    assert result.returncode != 0
    assert "Echo Response" not in result.stdout + result.stderr


def test_plain_dicom_is_not_answered_on_the_tls_port(tls: Tls) -> None:
    result = echoscu(tls)
    assert result.returncode != 0
    assert "Echo Response" not in result.stdout + result.stderr
    # The listener is unharmed: TLS peers still get through.
    ok = echoscu(tls, "+tls", str(tls.client_key), str(tls.client_cert), "+cf", str(tls.ca_file))
    assert ok.returncode == 0, ok.stdout + ok.stderr
