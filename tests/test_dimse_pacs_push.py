"""A PACS that both answers the gateway (a ``[[pacs]]`` node) and auto-routes studies to it under
the same AE title: Orthanc, configured once with ``scopes = ["write"]``."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from tests import factory
from tests.dimse_gateway import DimseGateway, dimse_gateway
from tests.http_helpers import split_multipart
from tests.peers.orthanc import OrthancPeer, orthanc_available, run_orthanc, upload_study
from tests.peers.ports import free_port

pytestmark = [
    pytest.mark.skipif(not orthanc_available(), reason="Orthanc is not installed (apt-get install orthanc-dicomweb)"),
    pytest.mark.orthanc,
    pytest.mark.timeout(180),
]

AS_STORED = 'multipart/related; type="application/dicom"; transfer-syntax=*'


@pytest.fixture(scope="module")
def peers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DimseGateway, OrthancPeer]]:
    where = tmp_path_factory.mktemp("pacs-push")
    port = free_port()
    with run_orthanc(where / "orthanc", gateway_aet="GATEWAY", gateway_port=port) as orthanc:
        node = {
            "name": "orthanc",
            "ae_title": orthanc.aet,
            "host": "127.0.0.1",
            "port": orthanc.dicom_port,
            "retrieve": "move",  # its C-MOVE sub-operations arrive under the same AE title
            "scopes": ["write"],
        }
        with dimse_gateway(where / "gw", pacs=[node], scp_port=port) as gw:
            yield gw, orthanc


def origins(gw: DimseGateway, study: str) -> set[str]:
    return {record.origin for record in gw.run(gw.index.instances(study))}


def test_the_pacs_pushes_under_its_own_ae_title_and_still_answers_the_gateways_moves(
    peers: tuple[DimseGateway, OrthancPeer],
) -> None:
    gw, orthanc = peers
    routed, queried = factory.new_uid("pacs-push", 1), factory.new_uid("pacs-push", 2)
    routed_instances = factory.ct_series(4, rows=64, cols=64, study_uid=routed, seed=1)
    queried_instances = factory.ct_series(3, rows=64, cols=64, study_uid=queried, seed=2)
    routed_id = upload_study(orthanc, routed_instances)
    upload_study(orthanc, queried_instances)

    # Orthanc auto-routes one study to the gateway (its REST API's C-STORE, as ORTHANC).
    pushed = httpx.post(
        f"{orthanc.http_url}/modalities/gateway/store",
        json={"Resources": [routed_id], "Synchronous": True},
        timeout=120,
    )
    assert pushed.status_code == 200, pushed.text
    assert pushed.json()["FailedInstancesCount"] == 0, pushed.json()
    stored = gw.get(f"/studies/{routed}/instances")
    assert stored.status_code == 200
    assert len(stored.json()) == 4
    assert origins(gw, routed) == {"dimse:orthanc"}  # a push, never taken for a PACS cache entry

    # The same node answers the gateway's retrieve: its C-MOVE sub-operations, under the same AE
    # title, go to the retrieve waiting for them and are cached as the PACS's.
    response = gw.get(f"/pacs/orthanc/studies/{queried}", Accept=AS_STORED)
    assert response.status_code == 200, response.text
    assert len(split_multipart(response)) == 3
    while not origins(gw, queried):  # cached once the retrieve is over, however long that takes
        time.sleep(0.05)
    assert origins(gw, queried) == {"pacs:orthanc"}


def test_without_the_write_scope_the_pacs_push_is_refused(tmp_path_factory: pytest.TempPathFactory) -> None:
    where = tmp_path_factory.mktemp("pacs-no-push")
    port = free_port()
    with run_orthanc(where / "orthanc", gateway_aet="GATEWAY", gateway_port=port) as orthanc:
        node = {"name": "orthanc", "ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port}
        with dimse_gateway(where / "gw", pacs=[node], scp_port=port) as gw:
            study = factory.new_uid("pacs-no-push", 3)
            orthanc_id = upload_study(orthanc, [factory.ct_instance(seed=3, study_uid=study)])
            pushed = httpx.post(
                f"{orthanc.http_url}/modalities/gateway/store",
                json={"Resources": [orthanc_id], "Synchronous": True},
                timeout=120,
            )
            assert pushed.status_code != 200 or pushed.json()["FailedInstancesCount"] == 1, pushed.text
            assert gw.run(gw.index.instances(study)) == []
