"""Storage Commitment Push Model SCP end to end, on the gateway's DIMSE listener: a modality
(DCMTK storescu to send, pynetdicom as the storage commitment SCU) and Orthanc ask whether the
gateway took responsibility for instances, and read the N-EVENT-REPORT it sends back.

What needs the gateway's check held back or failed is in test_dimse_commitment_faults.py."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom.dataset import Dataset

from gateway.adapters.filestore import FileBlobStore
from gateway.dimse.commitment_request import (
    MAX_REFERENCES,
    STORAGE_COMMITMENT_INSTANCE,
    STORAGE_COMMITMENT_PUSH_MODEL,
)
from gateway.errors import StorageError
from gateway.ports import ObjectInfo
from tests import factory
from tests.commitment_scu import (
    ALL_COMMITTED,
    CLASS_INSTANCE_CONFLICT,
    CT_IMAGE_STORAGE,
    FAILURES_EXIST,
    MODALITY,
    MR_IMAGE_STORAGE,
    NO_SUCH_OBJECT_INSTANCE,
    PROCESSING_FAILURE,
    REPORT_WAIT,
    Modality,
    references_of,
    request,
    study,
)
from tests.dimse_gateway import DimseGateway, client, dimse_gateway
from tests.fixtures_pacs import load_orthanc, node
from tests.http_helpers import read
from tests.peers.orthanc import ORTHANC_AET, OrthancPeer, orthanc_available, run_orthanc
from tests.peers.ports import free_port

pytestmark = [
    pytest.mark.skipif(shutil.which("storescu") is None, reason="DCMTK is not installed (apt-get install dcmtk)"),
    pytest.mark.timeout(180),
]

AS_STORED = 'multipart/related; type="application/dicom"; transfer-syntax=*'
# The modality's own port (where it takes reports on a new association), fixed for the module's
# gateway as a [[dimse_clients]] port is.
MODALITY_PORT = free_port()
CLIENTS = [
    client(MODALITY, name="modality", scopes=["write"], port=MODALITY_PORT),
    client("RESTRICTED", name="ward", scopes=["write"], restriction={"PatientID": ["PID0001"]}),
    client("VIEWER", name="viewer", scopes=["read"]),
]


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DimseGateway]:
    where = tmp_path_factory.mktemp("commitment")
    with dimse_gateway(where, clients=CLIENTS, audit={"destination": str(where / "audit.jsonl")}) as running:
        yield running


def storescu(gw: DimseGateway, instances: list[bytes], tmp: Path, *, aet: str = MODALITY) -> None:
    """DCMTK's storescu sends ``instances`` to the gateway, all stored (status 0x0000)."""
    files = [str(factory.write(tmp / f"{i:04d}.dcm", data)) for i, data in enumerate(instances)]
    argv = ["storescu", "-v", "-aet", aet, "-aec", gw.ae_title, "-to", "30", "127.0.0.1", str(gw.port), *files]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("Received Store Response (Success)") + result.stderr.count(
        "Received Store Response (Success)"
    ) == len(files), result.stderr


def test_a_study_sent_with_storescu_is_committed_on_the_same_association(gw: DimseGateway, tmp_path: Path) -> None:
    """The modality flow: C-STORE a study, N-ACTION, the N-EVENT-REPORT says all committed."""
    instances = study(seed=1)
    storescu(gw, instances, tmp_path)
    modality = Modality()
    transaction = factory.new_uid("transaction", 1)
    with modality.associated(gw) as assoc:
        assert request(assoc, transaction, references_of(instances)) == 0x0000
        report = modality.next_report()
    assert report.same_association
    assert report.event_type == ALL_COMMITTED
    assert str(report.info.TransactionUID) == transaction
    assert sorted(report.committed) == sorted(references_of(instances))
    assert report.failed == {}
    assert str(report.info.RetrieveAETitle).strip() == gw.ae_title


def test_absent_and_wrong_class_instances_are_failed_with_their_reasons(gw: DimseGateway, tmp_path: Path) -> None:
    instances = study(seed=2)
    storescu(gw, instances, tmp_path)
    stored = references_of(instances)
    absent = (CT_IMAGE_STORAGE, factory.new_uid("never-stored", 2))
    wrong_class = (MR_IMAGE_STORAGE, stored[1][1])
    modality = Modality()
    with modality.associated(gw) as assoc:
        assert request(assoc, factory.new_uid("transaction", 2), [stored[0], absent, wrong_class]) == 0x0000
        report = modality.next_report()
    assert report.event_type == FAILURES_EXIST
    assert report.committed == [stored[0]]
    assert report.failed == {absent[1]: NO_SUCH_OBJECT_INSTANCE, wrong_class[1]: CLASS_INSTANCE_CONFLICT}


def test_a_restricted_peer_gets_another_patients_instance_as_absent(gw: DimseGateway, tmp_path: Path) -> None:
    own, other = study(seed=3, n=1, patient="PID0001"), study(seed=4, n=1, patient="PID0002")
    storescu(gw, own + other, tmp_path)
    modality = Modality("RESTRICTED")
    references = references_of(own + other)
    with modality.associated(gw) as assoc:
        assert request(assoc, factory.new_uid("transaction", 3), references) == 0x0000
        report = modality.next_report()
    assert report.committed == [references[0]]
    assert report.failed == {references[1][1]: NO_SUCH_OBJECT_INSTANCE}


def test_a_modality_taking_reports_only_on_its_port_gets_it_on_a_new_association(
    gw: DimseGateway, tmp_path: Path
) -> None:
    """The gateway tries the requesting association first; this modality answers the report
    there with a failure, so the gateway calls its configured port, proposing the SCP role."""
    instances = study(seed=5, n=2)
    storescu(gw, instances, tmp_path)
    modality = Modality()
    modality.port = MODALITY_PORT
    transaction = factory.new_uid("transaction", 5)
    with modality.listening(), modality.associated(gw, reports_here=False) as assoc:
        assert request(assoc, transaction, references_of(instances)) == 0x0000
        # Released only once the report came the other way (see Modality.associated).
        report = modality.next_report()
    assert not report.same_association
    assert report.calling_ae == gw.ae_title
    assert report.event_type == ALL_COMMITTED
    assert str(report.info.TransactionUID) == transaction


@pytest.mark.parametrize(
    ("change", "status"),
    [
        ("no transaction", 0x0115),  # PS3.7 10.1.4.1.10: invalid argument value
        ("empty sequence", 0x0115),
        ("bad uid", 0x0115),
        ("action type 2", 0x0123),  # no such action
        ("another instance", 0x0112),  # no such SOP instance: the SOP Class has one
    ],
)
def test_a_malformed_request_is_refused_with_its_status(gw: DimseGateway, change: str, status: int) -> None:
    info = Dataset()
    if change != "no transaction":
        info.TransactionUID = factory.new_uid("transaction", change)
    item = Dataset()
    item.ReferencedSOPClassUID = CT_IMAGE_STORAGE
    with warnings.catch_warnings():  # pydicom warns of the invalid UID it is asked to send
        warnings.simplefilter("ignore")
        item.ReferencedSOPInstanceUID = "1.2.3.04" if change == "bad uid" else factory.new_uid("sop", change)
    info.ReferencedSOPSequence = [] if change == "empty sequence" else [item]
    action = 2 if change == "action type 2" else 1
    instance = factory.new_uid("elsewhere") if change == "another instance" else STORAGE_COMMITMENT_INSTANCE
    modality = Modality()
    with modality.associated(gw) as assoc:
        answer, _ = assoc.send_n_action(info, action, STORAGE_COMMITMENT_PUSH_MODEL, instance)
        assert int(answer.Status) == status
        assert answer.ErrorComment
        # The association goes on: a good request after it is accepted and reported.
        absent = (CT_IMAGE_STORAGE, factory.new_uid("absent", change))
        assert request(assoc, factory.new_uid("transaction", "after", change), [absent]) == 0x0000
        assert modality.next_report().failed == {absent[1]: NO_SUCH_OBJECT_INSTANCE}


def test_a_read_only_peer_is_not_authorized(gw: DimseGateway) -> None:
    with Modality("VIEWER").associated(gw) as assoc:
        references = [(CT_IMAGE_STORAGE, factory.new_uid("sop", 8))]
        assert request(assoc, factory.new_uid("transaction", 8), references) == 0x0124


def test_each_commitment_is_audited_with_its_instances(gw: DimseGateway, tmp_path: Path) -> None:
    instances = study(seed=9, n=2)
    storescu(gw, instances, tmp_path)
    references = references_of(instances)
    absent = (CT_IMAGE_STORAGE, factory.new_uid("never-stored", 9))
    modality = Modality()
    transaction = factory.new_uid("transaction", 9)
    with modality.associated(gw) as assoc:
        assert request(assoc, transaction, [*references, absent]) == 0x0000
        assert modality.next_report().event_type == FAILURES_EXIST
    event = audited_commitment(gw, references[0][1])
    assert event["ActiveParticipant"][0]["UserID"] == "dimse:modality"
    assert event["dimse"]["status"] == "0x0000"
    assert event["dimse"]["comment"] == "report on the same association"
    named = {o["ParticipantObjectID"] for o in event["ParticipantObjectIdentification"]}
    assert {sop for _, sop in references} <= named
    metrics = gw.run(gw.http.get("/metrics")).text
    counted = 'dicomweb_gateway_dimse_scp_operations_total{operation="N-ACTION",outcome="success",peer="modality"}'
    assert counted in metrics


def audited_commitment(gw: DimseGateway, sop: str) -> dict[str, Any]:
    """The audit line of the commitment that committed ``sop``; written once its report went,
    which may be a moment after the modality got it (REPORT_WAIT only bounds a broken run)."""
    audit_file = Path(gw.settings.audit.destination)
    deadline = time.monotonic() + REPORT_WAIT
    while True:
        lines = [json.loads(line) for line in audit_file.read_text().splitlines()]
        for event in lines:
            if event.get("dimse", {}).get("operation") != "N-ACTION":
                continue
            if any(o["ParticipantObjectID"] == sop for o in event["ParticipantObjectIdentification"]):
                return event
        assert time.monotonic() < deadline, "no N-ACTION audit line names the instance"
        time.sleep(0.05)


@pytest.mark.orthanc
@pytest.mark.skipif(not orthanc_available(), reason="Orthanc is not installed (apt-get install orthanc-dicomweb)")
def test_orthanc_as_commitment_scu_gets_the_result_of_its_request(tmp_path: Path) -> None:
    """Orthanc pushes a study to the gateway (C-STORE, a modality's step 1), then its REST API
    asks the gateway (one of its DicomModalities) for storage commitment; the gateway reports
    to Orthanc's DICOM port, and Orthanc lists the committed and the failed instances."""
    instances = study(seed=11)
    stored = references_of(instances)
    absent = (CT_IMAGE_STORAGE, factory.new_uid("never-stored", 11))
    gateway_port, orthanc_port = free_port(), free_port()
    clients = [client(ORTHANC_AET, name="orthanc", scopes=["write"], port=orthanc_port)]
    with (
        dimse_gateway(tmp_path / "gateway", clients=clients, scp_port=gateway_port) as gw,
        run_orthanc(
            tmp_path / "orthanc",
            gateway_aet=gw.ae_title,
            gateway_port=gateway_port,
            extra_config={"DicomPort": orthanc_port},
        ) as orthanc,
    ):
        ids = [httpx.post(f"{orthanc.http_url}/instances", content=data, timeout=30).json()["ID"] for data in instances]
        pushed = httpx.post(f"{orthanc.http_url}/modalities/gateway/store", json={"Resources": ids}, timeout=60)
        assert pushed.status_code == 200, pushed.text
        asked = [{"SOPClassUID": c, "SOPInstanceUID": s} for c, s in [*stored, absent]]
        started = httpx.post(
            f"{orthanc.http_url}/modalities/gateway/storage-commitment",
            json={"DicomInstances": asked, "Timeout": 20},
            timeout=30,
        )
        assert started.status_code == 200, started.text
        result = orthanc_commitment_result(orthanc, started.json()["Path"])
    assert result["Status"] == "Failure"  # Orthanc's word for "complete, failures exist"
    assert sorted((i["SOPClassUID"], i["SOPInstanceUID"]) for i in result["Success"]) == sorted(stored)
    assert [(i["SOPInstanceUID"], i["FailureReason"]) for i in result["Failures"]] == [
        (absent[1], NO_SUCH_OBJECT_INSTANCE)
    ]


def orthanc_commitment_result(orthanc: OrthancPeer, path: str) -> dict[str, Any]:
    """Orthanc's view of a storage commitment once it is no longer pending (Orthanc offers no
    way to wait for it, so this polls; REPORT_WAIT only bounds a broken run)."""
    deadline = time.monotonic() + REPORT_WAIT
    while True:
        result: dict[str, Any] = httpx.get(orthanc.http_url + path, timeout=10).json()
        if result.get("Status") != "Pending" or time.monotonic() > deadline:
            return result
        time.sleep(0.1)


@pytest.mark.orthanc
@pytest.mark.skipif(not orthanc_available(), reason="Orthanc is not installed (apt-get install orthanc-dicomweb)")
def test_a_copy_cached_from_a_pacs_is_committed_only_once_the_modality_sent_it(tmp_path: Path) -> None:
    """With pacs_cache_max_age, what a viewer's request cached from a PACS is dropped later: the
    gateway does not commit to it. Once the modality C-STOREs the instance itself, the copy is
    kept for good, and committed."""
    instances = study(seed=12, n=2, patient="PID0012")
    references = references_of(instances)
    study_uid = str(read(instances[0]).StudyInstanceUID)
    with run_orthanc(tmp_path / "pacs") as pacs:
        load_orthanc(pacs, instances)
        with dimse_gateway(
            tmp_path / "gateway",
            clients=[client(MODALITY, name="modality", scopes=["write"])],
            pacs=[node("pacs", pacs.dicom_port, pacs.aet, dimse_timeout=10)],
            pacs_cache_max_age=3600,
        ) as gw:
            cached = gw.get(f"/studies/{study_uid}", accept=AS_STORED)  # through the PACS bridge
            assert cached.status_code == 200, cached.text
            # The answer streams instances as they arrive; their write into the cache may end
            # a moment later.
            wait_until_indexed(gw, [sop for _, sop in references])
            modality = Modality()
            with modality.associated(gw) as assoc:
                assert request(assoc, factory.new_uid("transaction", 12, 1), references) == 0x0000
                before = modality.next_report()
                storescu(gw, instances[:1], tmp_path)
                assert request(assoc, factory.new_uid("transaction", 12, 2), references) == 0x0000
                after = modality.next_report()
    assert before.committed == []
    assert before.failed == {sop: PROCESSING_FAILURE for _, sop in references}
    assert after.committed == references[:1]
    assert after.failed == {references[1][1]: PROCESSING_FAILURE}


def test_a_request_for_more_instances_than_the_limit_is_refused_with_resource_limitation(gw: DimseGateway) -> None:
    references = [(CT_IMAGE_STORAGE, factory.new_uid("many", i)) for i in range(MAX_REFERENCES + 1)]
    with Modality().associated(gw) as assoc:
        assert request(assoc, factory.new_uid("transaction", "many"), references) == 0x0213


class StoreWithOutage(FileBlobStore):
    """The object store, failing its next ``outages`` look-ups (as S3 does for a moment)."""

    outages = 0

    async def stat(self, key: str) -> ObjectInfo | None:
        if self.outages:
            self.outages -= 1
            raise StorageError("the object store is unavailable")
        return await super().stat(key)


def test_a_store_outage_during_the_check_delays_the_report_not_the_commitment(tmp_path: Path) -> None:
    (tmp_path / "objects").mkdir()
    store = StoreWithOutage(tmp_path / "objects")
    instances = study(seed=13, n=2)
    with dimse_gateway(tmp_path, clients=CLIENTS, store=store) as gw:
        storescu(gw, instances, tmp_path)
        store.outages = 2  # the first two checks fail; the third finds every instance
        modality = Modality()
        with modality.associated(gw) as assoc:
            assert request(assoc, factory.new_uid("transaction", 13), references_of(instances)) == 0x0000
            report = modality.next_report()
    assert store.outages == 0
    assert report.event_type == ALL_COMMITTED
    assert sorted(report.committed) == sorted(references_of(instances))


def wait_until_indexed(gw: DimseGateway, sops: list[str]) -> None:
    index = gw.app.state.gateway.index
    deadline = time.monotonic() + REPORT_WAIT  # only bounds a broken run
    while not all(gw.run(index.get(None, None, sop)) for sop in sops):
        assert time.monotonic() < deadline, "the PACS instances were never indexed"
        time.sleep(0.05)
