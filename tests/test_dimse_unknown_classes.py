"""Storage SOP classes the gateway does not know (gateway/dimse/unknown_storage.py): a private
one (Siemens CSA Non-Image Storage) and a public one newer than the gateway's table, sent by
DCMTK's storescu with a presentation context profile (``-xf``), are stored as sent, found by
QIDO and served over WADO-RS byte for byte, and come back by C-GET; other services the gateway
does not offer (worklist, MPPS) are still refused at negotiation."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet

from tests import factory
from tests.dimse_gateway import DimseGateway, client, dimse_gateway
from tests.http_helpers import split_multipart
from tests.test_dimse_store import ACCEPT_AS_STORED, dataset_bytes

pytestmark = [
    pytest.mark.skipif(shutil.which("storescu") is None, reason="DCMTK is not installed (apt-get install dcmtk)"),
    pytest.mark.timeout(180),
]

SIEMENS_CSA_NON_IMAGE = "1.3.12.2.1107.5.9.1"  # private: outside the DICOM root
NEWER_PUBLIC_STORAGE = "1.2.840.10008.5.1.4.1.1.999.9"  # under the storage arc, unknown to pynetdicom
WORKLIST_FIND = "1.2.840.10008.5.1.4.31"
MPPS = "1.2.840.10008.3.1.2.3.3"
VERIFICATION = "1.2.840.10008.1.1"
ELE, ILE = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2"

# A storescu profile proposing exactly these classes (PS3.8 presentation contexts), as a modality
# configured for its vendor's private objects does; storescu refuses to propose unknown classes
# otherwise ("unknown storage SOP class").
STORESCU_PROFILE = f"""[[TransferSyntaxes]]
[Uncompressed]
TransferSyntax1 = LittleEndianExplicit
TransferSyntax2 = LittleEndianImplicit
[[PresentationContexts]]
[Unknown]
PresentationContext1 = {SIEMENS_CSA_NON_IMAGE}\\Uncompressed
PresentationContext2 = {NEWER_PUBLIC_STORAGE}\\Uncompressed
[[Profiles]]
[Unknown]
PresentationContexts = Unknown
"""


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DimseGateway]:
    clients = [client("MODALITY", scopes=["write"]), client("VIEWER", scopes=["read"])]
    with dimse_gateway(tmp_path_factory.mktemp("unknown"), clients=clients) as running:
        yield running


def instance_of(sop_class: str, *, seed: int, study: str) -> bytes:
    ds = factory.ct_dataset(seed=seed, rows=16, cols=16, study_uid=study)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = factory.new_uid("unknown-class", sop_class, seed)
    return factory.to_part10_bytes(ds, ELE)


def test_storescu_sends_unknown_storage_classes_that_are_stored_and_served_as_sent(
    gw: DimseGateway, tmp_path: Path
) -> None:
    study = factory.new_uid("unknown-study", 1)
    instances = {
        sop_class: instance_of(sop_class, seed=1, study=study)
        for sop_class in (SIEMENS_CSA_NON_IMAGE, NEWER_PUBLIC_STORAGE)
    }
    files = [factory.write(tmp_path / f"{n}.dcm", data) for n, data in enumerate(instances.values())]
    profile = tmp_path / "storescu.cfg"
    profile.write_text(STORESCU_PROFILE)
    argv = ["storescu", "-v", "-xf", str(profile), "Unknown", "-aet", "MODALITY", "-aec", gw.ae_title, "-to", "30"]
    result = subprocess.run(
        [*argv, "127.0.0.1", str(gw.port), *map(str, files)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (
        result.stdout.count("Received Store Response (Success)")
        + result.stderr.count("Received Store Response (Success)")
        == 2
    ), result.stdout + result.stderr

    response = gw.get(f"/studies/{study}", Accept=ACCEPT_AS_STORED)
    assert response.status_code == 200, response.text
    served = {
        str(pydicom.dcmread(pydicom.filebase.DicomBytesIO(part)).SOPClassUID): part
        for _, part in split_multipart(response)
    }
    assert served.keys() == instances.keys()
    for sop_class, original in instances.items():
        assert dataset_bytes(served[sop_class]) == dataset_bytes(original), sop_class
    found = gw.get(f"/studies/{study}/instances?SOPClassUID={SIEMENS_CSA_NON_IMAGE}")
    assert found.status_code == 200
    assert [row["00080016"]["Value"] for row in found.json()] == [[SIEMENS_CSA_NON_IMAGE]]


def test_a_private_class_instance_comes_back_by_c_get(gw: DimseGateway) -> None:
    study = factory.new_uid("unknown-study", 2)
    data = instance_of(SIEMENS_CSA_NON_IMAGE, seed=2, study=study)
    gw.stow(data)
    ae = AE(ae_title="VIEWER")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(SIEMENS_CSA_NON_IMAGE, [ELE, ILE])
    got: list[bytes] = []

    def on_store(event: Any) -> int:
        # In this process the gateway has pynetdicom receive every data set into a file.
        got.append(dataset_bytes(Path(event.dataset_path).read_bytes()))
        return 0x0000

    assoc = ae.associate(
        "127.0.0.1",
        gw.port,
        ae_title=gw.ae_title,
        ext_neg=[build_role(SIEMENS_CSA_NON_IMAGE, scp_role=True)],
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    assert assoc.is_established
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = study
    try:
        statuses = [
            int(status.Status) for status, _ in assoc.send_c_get(identifier, StudyRootQueryRetrieveInformationModelGet)
        ]
    finally:
        assoc.release()
    assert statuses[-1] == 0x0000, statuses
    assert len(got) == 1
    assert got[0] == dataset_bytes(data)  # the data set as stored (Explicit VR Little Endian)


def test_a_read_only_client_storing_a_private_class_is_refused_not_authorized(gw: DimseGateway) -> None:
    data = instance_of(SIEMENS_CSA_NON_IMAGE, seed=3, study=factory.new_uid("unknown-study", 3))
    ae = AE(ae_title="VIEWER")
    ae.requested_contexts = [build_context(SIEMENS_CSA_NON_IMAGE, [ELE])]
    assoc = ae.associate("127.0.0.1", gw.port, ae_title=gw.ae_title)
    assert assoc.is_established
    try:
        status = assoc.send_c_store(pydicom.dcmread(pydicom.filebase.DicomBytesIO(data)))
    finally:
        assoc.release()
    assert int(status.Status) == 0x0124


def test_services_the_gateway_does_not_offer_are_still_refused_at_negotiation(gw: DimseGateway) -> None:
    ae = AE(ae_title="MODALITY")
    ae.requested_contexts = [build_context(uid) for uid in (VERIFICATION, WORKLIST_FIND, MPPS)]
    assoc = ae.associate("127.0.0.1", gw.port, ae_title=gw.ae_title)
    assert assoc.is_established
    try:
        accepted = {str(cx.abstract_syntax) for cx in assoc.accepted_contexts}
        assert int(assoc.send_c_echo().Status) == 0x0000
    finally:
        assoc.release()
    assert accepted == {VERIFICATION}
