"""DICOM TLS (PS3.15 B.1) to a PACS: the gateway verifies the PACS against the configured CA and
presents its client certificate. The peer is pynetdicom's own Verification SCP behind TLS that
requires a client certificate, since neither Orthanc nor dcmqrscp is built with TLS here."""

from __future__ import annotations

import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from pynetdicom import AE

from tests.fixtures_pacs import node, pacs_toml
from tests.peers.ports import free_port

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def tls_pacs(tmp_path: Path) -> Iterator[tuple[int, Path, Path, Path]]:
    """(port, CA file, client certificate, client key) of a TLS Verification SCP."""
    ca = trustme.CA()
    server_cert = ca.issue_cert("localhost", "127.0.0.1")
    client_cert = ca.issue_cert("gateway.example")
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    cert_file, key_file = tmp_path / "client.pem", tmp_path / "client.key"
    client_cert.cert_chain_pems[0].write_to_path(str(cert_file))
    client_cert.private_key_pem.write_to_path(str(key_file))

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.verify_mode = ssl.CERT_REQUIRED  # mutual TLS, as DICOM TLS profiles expect
    ca.configure_trust(context)
    server_cert.configure_cert(context)
    ae = AE(ae_title="TLSPACS")
    ae.add_supported_context("1.2.840.10008.1.1")
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, ssl_context=context)
    try:
        yield port, ca_file, cert_file, key_file
    finally:
        server.shutdown()


def echo(tmp_path: Path, table: dict[str, object]) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "gateway.toml"
    config.write_text(pacs_toml([table], ae_title="GATEWAY"))
    return subprocess.run(
        [sys.executable, "-m", "gateway", "echo", "--config", str(config), "--data", str(tmp_path / "data")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_echo_over_mutual_tls(tmp_path: Path, tls_pacs: tuple[int, Path, Path, Path]) -> None:
    port, ca_file, cert_file, key_file = tls_pacs
    base = node("tls", port, "TLSPACS", acse_timeout=3)
    config = tmp_path / "ok"
    config.mkdir()
    with_tls = pacs_toml([base], ae_title="GATEWAY") + (
        f'[pacs.tls]\nca_file = "{ca_file}"\ncert_file = "{cert_file}"\nkey_file = "{key_file}"\n'
        'server_name = "localhost"\n'
    )
    (config / "gateway.toml").write_text(with_tls)
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "echo", "--config", str(config / "gateway.toml"), "--data", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert " ok " in result.stdout
    # Without TLS the PACS is unreachable as DICOM: the failure is reported, not a hang.
    plain = echo(tmp_path, base)
    assert plain.returncode == 1
    assert "FAILED" in plain.stdout
