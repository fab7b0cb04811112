"""A real Orthanc (with its DICOMweb plugin) on free ports, for the tests and the benchmark.

Orthanc is the legacy PACS of the PACS-bridge tests and the yardstick of ``bench/``. It is
installed from apt (``orthanc``, ``orthanc-dicomweb``); see /work/shared/PEERS.md.

    with run_orthanc(tmp_path) as orthanc:
        httpx.get(orthanc.dicomweb_url + "/studies")
        # DIMSE: orthanc.aet on 127.0.0.1:orthanc.dicom_port
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.peers.ports import free_port
from tests.peers.processes import stop_process

ORTHANC_BINARY = "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
DICOMWEB_ROOT = "/dicom-web/"
ORTHANC_AET = "ORTHANC"
GATEWAY_AET = "GATEWAY"
GATEWAY_DICOM_PORT = 11112
START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0


@dataclass(frozen=True)
class OrthancPeer:
    """Where a running Orthanc answers. ``pid`` is its process id (e.g. to sample its memory)."""

    http_url: str  # http://127.0.0.1:PORT (REST API)
    dicom_port: int
    aet: str
    pid: int
    log_path: Path

    @property
    def dicomweb_url(self) -> str:
        """The DICOMweb root, without a trailing slash: ``http://127.0.0.1:PORT/dicom-web``."""
        return self.http_url + DICOMWEB_ROOT.rstrip("/")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def upload_study(orthanc: OrthancPeer, instances: list[bytes]) -> str:
    """Store ``instances`` (one study) in Orthanc through its REST API; its Orthanc study id."""
    ids = set()
    for data in instances:
        uploaded = httpx.post(f"{orthanc.http_url}/instances", content=data, timeout=30)
        assert uploaded.status_code == 200, uploaded.text
        ids.add(uploaded.json()["ParentStudy"])
    assert len(ids) == 1
    return str(ids.pop())


def orthanc_available() -> bool:
    """True when the Orthanc binary and its DICOMweb plugin are installed."""
    return Path(ORTHANC_BINARY).is_file() and Path(DICOMWEB_PLUGIN).is_file()


def orthanc_config(
    tmpdir: Path,
    *,
    http_port: int,
    dicom_port: int,
    gateway_aet: str = GATEWAY_AET,
    gateway_port: int = GATEWAY_DICOM_PORT,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The configuration: storage under ``tmpdir``, loopback only, no authentication, the
    DICOMweb plugin at ``/dicom-web/`` and the gateway's AE as a modality allowed everything."""
    config: dict[str, Any] = {
        "Name": "gateway-tests",
        "StorageDirectory": str(tmpdir / "storage"),
        "IndexDirectory": str(tmpdir / "index"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": ORTHANC_AET,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "KeepAlive": True,
        "TcpNoDelay": True,
        "Plugins": [DICOMWEB_PLUGIN],
        "DicomWeb": {"Enable": True, "Root": DICOMWEB_ROOT},
        "DicomModalities": {
            "gateway": {
                "AET": gateway_aet,
                "Host": "127.0.0.1",
                "Port": gateway_port,
                "AllowEcho": True,
                "AllowFind": True,
                "AllowGet": True,
                "AllowMove": True,
                "AllowStore": True,
            }
        },
    }
    config.update(extra or {})
    return config


@contextmanager
def run_orthanc(
    tmpdir: Path,
    *,
    gateway_aet: str = GATEWAY_AET,
    gateway_port: int = GATEWAY_DICOM_PORT,
    extra_config: Mapping[str, Any] | None = None,
) -> Iterator[OrthancPeer]:
    """Start Orthanc with its config, storage and log under ``tmpdir``; stop it on exit.

    ``extra_config`` entries override the defaults of :func:`orthanc_config`.
    """
    if not orthanc_available():
        raise RuntimeError(
            f"Orthanc is missing ({ORTHANC_BINARY}, {DICOMWEB_PLUGIN}): apt-get install orthanc-dicomweb"
        )
    tmpdir = Path(tmpdir)
    tmpdir.mkdir(parents=True, exist_ok=True)
    http_port, dicom_port = free_port(), free_port()
    config_path = tmpdir / "orthanc.json"
    config = orthanc_config(
        tmpdir,
        http_port=http_port,
        dicom_port=dicom_port,
        gateway_aet=gateway_aet,
        gateway_port=gateway_port,
        extra=extra_config,
    )
    config_path.write_text(json.dumps(config, indent=2))
    log_path = tmpdir / "orthanc.log"
    # DCMTK (inside Orthanc) waits ~40 ms per DIMSE response without TCP_NODELAY (PEERS.md).
    env = {**os.environ, "TCP_NODELAY": "1"}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [ORTHANC_BINARY, str(config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )
    peer = OrthancPeer(f"http://127.0.0.1:{http_port}", dicom_port, ORTHANC_AET, process.pid, log_path)
    try:
        _wait_until_ready(peer, process)
        yield peer
    finally:
        stop_process(process, STOP_TIMEOUT)


def _wait_until_ready(peer: OrthancPeer, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"Orthanc exited with {process.returncode}:\n{_tail(peer.log_path)}")
        try:
            if httpx.get(peer.http_url + "/system", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"Orthanc did not answer within {START_TIMEOUT} s:\n{_tail(peer.log_path)}")
        time.sleep(0.05)


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
