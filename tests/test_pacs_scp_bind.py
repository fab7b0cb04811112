"""The storage SCP for C-MOVE binds the address HTTP binds, unless ``scp_host`` says otherwise
(issue #12, finding 9): a gateway on 127.0.0.1 opened its DIMSE port on every interface."""

from __future__ import annotations

import httpx
import psutil
import pytest

from gateway.settings import Settings
from tests.fixtures_gateway import RunningGateway
from tests.fixtures_pacs import GatewayFactory, PacsData, node
from tests.http_helpers import split_multipart
from tests.peers.dcmqrscp import DcmqrscpPeer

pytestmark = pytest.mark.timeout(120)


def listening_addresses(gw: RunningGateway, port: int) -> set[str]:
    """The addresses the gateway process listens on at ``port`` (from the kernel's socket table)."""
    process = psutil.Process(gw.process.pid)
    return {
        c.laddr.ip
        for c in process.net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN and c.laddr.port == port
    }


def test_scp_host_follows_host_unless_set() -> None:
    assert Settings().effective_scp_host == "127.0.0.1"
    assert Settings(host="10.1.2.3").effective_scp_host == "10.1.2.3"
    assert Settings(host="127.0.0.1", scp_host="0.0.0.0").effective_scp_host == "0.0.0.0"


def test_scp_listens_on_the_http_address_and_c_move_works(
    pacs_gateway_factory: GatewayFactory, dcmqrscp_pacs: DcmqrscpPeer, pacs_data: PacsData, scp_port: int
) -> None:
    gw = pacs_gateway_factory([node("dcmqrscp", dcmqrscp_pacs.port, "DCMQRSCP", retrieve="move")])  # host 127.0.0.1
    assert listening_addresses(gw, scp_port) == {"127.0.0.1"}
    study, series = pacs_data.series_uids
    accept = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}
    response = httpx.get(f"{gw.url}/studies/{study}/series/{series}", headers=accept, timeout=60)
    assert response.status_code == 200, response.text
    assert len(split_multipart(response)) == len(pacs_data.series)
