"""``dicomweb-gateway echo [NAME]``: C-ECHO each PACS, with the round trip or the exact failure."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures_pacs import node, pacs_toml
from tests.peers.blackhole import black_hole
from tests.peers.dcmqrscp import DcmqrscpPeer
from tests.peers.orthanc import OrthancPeer
from tests.peers.ports import free_port

pytestmark = pytest.mark.timeout(60)


def echo(tmp_path: Path, nodes: list[dict[str, object]], *names: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "gateway.toml"
    config.write_text(pacs_toml(nodes, ae_title="GATEWAY"))
    return subprocess.run(
        [sys.executable, "-m", "gateway", "echo", "--config", str(config), "--data", str(tmp_path / "data"), *names],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_echo_every_node_and_name_each_failure(
    tmp_path: Path, orthanc_pacs: OrthancPeer, dcmqrscp_pacs: DcmqrscpPeer
) -> None:
    with black_hole() as hole:
        nodes = [
            node("orthanc", orthanc_pacs.dicom_port, orthanc_pacs.aet),
            node("dcmqrscp", dcmqrscp_pacs.port, dcmqrscp_pacs.aet),
            node("closed", free_port(), "CLOSED"),
            node("wrong-ae", dcmqrscp_pacs.port, "NOT_DCMQRSCP"),
            node("hole", hole, "HOLE", acse_timeout=1),
        ]
        result = echo(tmp_path, nodes)
    assert result.returncode == 1, result.stderr
    lines = {line.split()[0]: line for line in result.stdout.splitlines()}
    assert set(lines) == {"orthanc", "dcmqrscp", "closed", "wrong-ae", "hole"}
    for ok in ("orthanc", "dcmqrscp"):
        assert "@127.0.0.1:" in lines[ok]
        assert " ok " in lines[ok]
        assert " ms " in lines[ok]
    assert "FAILED" in lines["closed"]
    assert "Connection refused" in lines["closed"]
    # dcmqrscp rejects a called AE title it does not serve (PS3.8 Table 9-21).
    assert "rejected the association" in lines["wrong-ae"]
    assert "Called AE title not recognised" in lines["wrong-ae"]
    assert "no answer to the association request within 1 s" in lines["hole"]


def test_echo_one_node_by_name(tmp_path: Path, orthanc_pacs: OrthancPeer) -> None:
    nodes = [node("orthanc", orthanc_pacs.dicom_port, orthanc_pacs.aet), node("closed", free_port(), "CLOSED")]
    result = echo(tmp_path, nodes, "orthanc")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("orthanc ")
    unknown = echo(tmp_path, nodes, "nosuch")
    assert unknown.returncode == 2
    assert "no PACS named 'nosuch'" in unknown.stderr
