"""Real legacy PACS for the PACS-bridge tests: Orthanc and DCMTK's dcmqrscp, loaded with the same
studies, and a factory for gateways configured to use them.

One Orthanc and one dcmqrscp serve the whole session (read-only for the tests that share them);
tests that stop a PACS start their own. Both know the gateway's AE title ``GATEWAY`` as a C-MOVE
destination on the session's storage SCP port, which every gateway started here listens on
(one gateway at a time).
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.dicom.received import receive_into_files
from tests import factory
from tests.fixtures_gateway import RunningGateway, start_gateway, stop_gateway
from tests.peers.dcmqrscp import DcmqrscpPeer, dcmqrscp_available, run_dcmqrscp
from tests.peers.orthanc import OrthancPeer, orthanc_available, run_orthanc
from tests.peers.ports import free_port

GATEWAY_AET = "GATEWAY"
SERIES_SLICES = 60  # the retrieve series: large enough that streaming is observable


@dataclass(frozen=True)
class PacsData:
    catalog: list[bytes]  # small studies with varied names, dates, modalities and character sets
    series: list[bytes]  # one CT series of SERIES_SLICES 512x512 slices (~31 MB)
    latin1_no_charset: bytes  # Latin-1 names and no Specific Character Set (dcmqrscp only)

    @property
    def series_uids(self) -> tuple[str, str]:
        from tests.http_helpers import uids_of

        study, series, _ = uids_of(self.series[0])
        return study, series


def _requires_peers() -> None:
    if not orthanc_available() or not dcmqrscp_available():
        pytest.skip("Orthanc or DCMTK is not installed (apt-get install orthanc orthanc-dicomweb dcmtk)")


@pytest.fixture(scope="session")
def pacs_data() -> PacsData:
    latin1 = factory.latin1_instance(seed=77, PatientID="PID-NOCS", study_date="19991231")
    return PacsData(
        catalog=factory.study_catalog(seed=5),
        series=factory.ct_series(SERIES_SLICES, seed=11, patient_name="STREAM^SERIES", accession="ACC-STREAM"),
        latin1_no_charset=_strip_charset(latin1),
    )


def _strip_charset(data: bytes) -> bytes:
    """``data`` without Specific Character Set but with its Latin-1 bytes unchanged: the
    non-conformant encoding dcmqrscp hands back as it is (PEERS.md)."""
    # (0008,0005) CS "ISO_IR 100" in explicit VR little endian; the data set has no group
    # lengths, so the element can simply be cut out.
    marker = b"\x08\x00\x05\x00CS\x0a\x00ISO_IR 100"
    assert data.count(marker) == 1, "the Latin-1 instance is expected in explicit VR little endian"
    return data.replace(marker, b"")


@pytest.fixture(scope="session")
def scp_port() -> int:
    """The storage SCP port of every gateway started here (known to both PACS)."""
    return free_port()


@pytest.fixture(scope="session")
def orthanc_pacs(tmp_path_factory: pytest.TempPathFactory, pacs_data: PacsData, scp_port: int) -> Iterator[OrthancPeer]:
    _requires_peers()
    # Orthanc answers C-FIND in its DefaultEncoding; UTF-8 keeps every name (Latin-1 would turn
    # the Japanese name into '^').
    with run_orthanc(
        tmp_path_factory.mktemp("orthanc"),
        gateway_aet=GATEWAY_AET,
        gateway_port=scp_port,
        extra_config={"DefaultEncoding": "Utf8"},
    ) as peer:
        load_orthanc(peer, [*pacs_data.catalog, *pacs_data.series])
        yield peer


def load_orthanc(peer: OrthancPeer, instances: Sequence[bytes]) -> None:
    with httpx.Client(timeout=30) as client:
        for data in instances:
            client.post(peer.http_url + "/instances", content=data).raise_for_status()


@pytest.fixture(scope="session")
def dcmqrscp_pacs(
    tmp_path_factory: pytest.TempPathFactory, pacs_data: PacsData, scp_port: int
) -> Iterator[DcmqrscpPeer]:
    _requires_peers()
    files = [*pacs_data.catalog, *pacs_data.series, pacs_data.latin1_no_charset]
    with run_dcmqrscp(
        tmp_path_factory.mktemp("dcmqrscp"), files=files, gateway_aet=GATEWAY_AET, gateway_port=scp_port
    ) as peer:
        yield peer


def node(name: str, port: int, ae_title: str, **options: Any) -> dict[str, Any]:
    """One [[pacs]] table for :func:`pacs_toml`."""
    return {"name": name, "ae_title": ae_title, "host": "127.0.0.1", "port": port, **options}


def pacs_toml(nodes: Sequence[dict[str, Any]], **settings: Any) -> str:
    lines = [f"{key} = {_toml(value)}" for key, value in settings.items() if not isinstance(value, dict)]
    for table, entries in settings.items():
        if isinstance(entries, dict):
            lines.append(f"[{table}]")
            lines += [f"{key} = {_toml(value)}" for key, value in entries.items()]
    for table in nodes:
        lines.append("[[pacs]]")
        lines += [f"{key} = {_toml(value)}" for key, value in table.items()]
    return "\n".join(lines) + "\n"


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


GatewayFactory = Callable[..., RunningGateway]


@pytest.fixture
def pacs_gateway_factory(tmp_path: Path, scp_port: int) -> Iterator[GatewayFactory]:
    """``make(nodes, **settings)``: a gateway (file store) with those [[pacs]] nodes, the AE title
    GATEWAY and the session's storage SCP port; stopped after the test."""
    started: list[RunningGateway] = []

    def make(nodes: Sequence[dict[str, Any]], *, where: Path | None = None, **settings: Any) -> RunningGateway:
        """``where``: the directory of an earlier (stopped) gateway to restart on its data."""
        settings.setdefault("ae_title", GATEWAY_AET)
        settings.setdefault("scp_port", scp_port)
        if where is None:
            where = tmp_path / f"gw{len(started)}"
            where.mkdir()
        config = where / "gateway.toml"
        config.write_text(pacs_toml(nodes, **settings))
        gw = start_gateway(where, extra_args=("--config", str(config), "--log-level", "info"))
        started.append(gw)
        return gw

    try:
        yield make
    finally:
        for gw in started:
            stop_gateway(gw)


@pytest.fixture
def pacs_gateway(
    pacs_gateway_factory: GatewayFactory, orthanc_pacs: OrthancPeer, dcmqrscp_pacs: DcmqrscpPeer
) -> RunningGateway:
    """A gateway with both PACS, by C-GET: ``orthanc`` and ``dcmqrscp`` (in that order)."""
    return pacs_gateway_factory(
        [
            node("orthanc", orthanc_pacs.dicom_port, orthanc_pacs.aet, dimse_timeout=10),
            node("dcmqrscp", dcmqrscp_pacs.port, dcmqrscp_pacs.aet, dimse_timeout=10),
        ]
    )


def gateway_log_count(gw: RunningGateway, text: str) -> int:
    return gw.log().count(text)


def run(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture
def receive_folder(tmp_path: Path) -> Iterator[Path]:
    """The folder pynetdicom receives data sets into, as in the gateway (the composition root)."""
    folder = tmp_path / "received"
    restore = receive_into_files(folder)
    try:
        yield folder
    finally:
        restore()
