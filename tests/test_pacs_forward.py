"""STOW forwarding (``forward_to``): C-STORE to a PACS after the acknowledgement, never lost,
retried while the PACS is away, visible in /readyz and the log."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from tests import factory
from tests.fixtures_gateway import stop_gateway
from tests.fixtures_pacs import GatewayFactory, node
from tests.http_helpers import stow, uids_of
from tests.peers.orthanc import OrthancPeer, run_orthanc
from tests.peers.ports import free_port

pytestmark = pytest.mark.timeout(120)


def orthanc_has(peer: OrthancPeer, sop: str) -> bool:
    found = httpx.post(peer.http_url + "/tools/lookup", content=sop, timeout=10).json()
    return any(item["Type"] == "Instance" for item in found)


def wait_for(condition: object, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.1)
    return False


def forward_state(url: str) -> dict[str, object]:
    body = httpx.get(url + "/readyz", timeout=10).json()
    state: dict[str, object] = body["forward"]
    return state


def test_stowed_instances_are_forwarded(pacs_gateway_factory: GatewayFactory, tmp_path: Path) -> None:
    with run_orthanc(tmp_path / "target") as target:
        gw = pacs_gateway_factory([node("archive", target.dicom_port, "ORTHANC")], forward_to="archive")
        instances = [factory.ct_instance(seed=900 + i) for i in range(3)]
        response = stow(gw.url, instances)
        assert response.status_code == 200
        sops = [uids_of(d)[2] for d in instances]
        assert wait_for(lambda: all(orthanc_has(target, sop) for sop in sops), 10)
        assert wait_for(lambda: forward_state(gw.root)["pending"] == 0, 5)
        assert forward_state(gw.root)["sent"] == 3
        # Byte-identical at the PACS: the data set arrived as stored.
        lookup = httpx.post(target.http_url + "/tools/lookup", content=sops[0], timeout=10).json()
        stored = httpx.get(f"{target.http_url}/instances/{lookup[0]['ID']}/file", timeout=10).content
        assert stored.endswith(instances[0][-4096:])
        stop_gateway(gw)  # before Orthanc, which waits for open associations when stopping


def test_forwarding_survives_an_absent_pacs_and_a_restart(pacs_gateway_factory: GatewayFactory, tmp_path: Path) -> None:
    port = free_port()
    nodes = [node("archive", port, "ORTHANC", connect_timeout=1)]
    gw = pacs_gateway_factory(nodes, forward_to="archive")
    instance = factory.ct_instance(seed=950)
    sop = uids_of(instance)[2]
    started = time.monotonic()
    assert stow(gw.url, [instance]).status_code == 200
    assert time.monotonic() - started < 2, "forwarding must not hold up the STOW acknowledgement"
    assert wait_for(lambda: forward_state(gw.root).get("failing") == 1, 5)
    assert forward_state(gw.root)["pending"] == 1
    assert f"forward of {sop} to PACS archive failed" in gw.log()

    # Stop the gateway with the instance still queued; it must survive the restart.
    stop_gateway(gw)
    with run_orthanc(tmp_path / "late", extra_config={"DicomPort": port}) as target:
        restarted = pacs_gateway_factory(nodes, where=gw.data_dir.parent, forward_to="archive")
        assert wait_for(lambda: orthanc_has(target, sop), 15)
        assert wait_for(lambda: forward_state(restarted.root)["pending"] == 0, 5)
        stop_gateway(restarted)
