"""The DIMSE front door of ``dicomweb-gateway serve``, configured from a TOML file: echoscu and
storescu against the process, then DICOMweb reading what it stored; a stop leaves the port free."""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

import httpx
import pytest

from tests import factory
from tests.fixtures_gateway import start_gateway, stop_gateway
from tests.peers.ports import free_port

pytestmark = [
    pytest.mark.skipif(shutil.which("storescu") is None, reason="DCMTK is not installed (apt-get install dcmtk)"),
    pytest.mark.timeout(120),
]


def test_serve_opens_the_front_door_from_its_config_file(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'ae_title = "GATEWAY"\nscp_port = {port}\n'
        '[[dimse_clients]]\nname = "ct-scanner-1"\nae_title = "CT1"\nhost = "127.0.0.1"\nscopes = ["write"]\n'
        "[dimse]\nmax_associations = 4\n"
    )
    gw = start_gateway(tmp_path, extra_args=("--config", str(config)))
    try:
        echo = subprocess.run(
            ["echoscu", "-aet", "CT1", "-aec", "GATEWAY", "127.0.0.1", str(port)], capture_output=True, timeout=60
        )
        assert echo.returncode == 0, echo.stderr
        study = factory.new_uid("serve-study", 1)
        files = [
            factory.write(tmp_path / f"{i}.dcm", data)
            for i, data in enumerate(factory.ct_series(5, rows=64, cols=64, study_uid=study, seed=3))
        ]
        store = subprocess.run(
            ["storescu", "-aet", "CT1", "-aec", "GATEWAY", "127.0.0.1", str(port), *map(str, files)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert store.returncode == 0, store.stdout + store.stderr
        found = httpx.get(f"{gw.url}/studies/{study}/instances", timeout=30)
        assert found.status_code == 200, found.text
        assert len(found.json()) == len(files)
    finally:
        stop_gateway(gw)
    # A clean stop (uvicorn ends with the signal it was stopped by): nothing listens any more.
    assert "Finished server process" in gw.log()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
