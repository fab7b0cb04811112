"""The C-STORE SCP of the DIMSE front door: DCMTK's storescu (and pynetdicom where a status or a
raw data set must be controlled) pushing to the gateway, then DICOMweb reading what it stored."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.presentation import build_context

from gateway.adapters.filestore import FileBlobStore
from gateway.errors import StorageError
from gateway.spool import process_spool_dir
from tests import factory
from tests.dimse_gateway import DimseGateway, client, dimse_gateway
from tests.http_helpers import split_multipart

pytestmark = [
    pytest.mark.skipif(shutil.which("storescu") is None, reason="DCMTK is not installed (apt-get install dcmtk)"),
    pytest.mark.timeout(180),
]

CLIENTS = [
    client("MODALITY", scopes=["write"]),
    client("VIEWER", scopes=["read"]),
    client("WARD", scopes=["read", "write"], restriction={"PatientID": ["WARD-1"]}),
]
ACCEPT_AS_STORED = 'multipart/related; type="application/dicom"; transfer-syntax=*'


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DimseGateway]:
    where = tmp_path_factory.mktemp("store")
    with dimse_gateway(where, clients=CLIENTS, audit={"destination": str(where / "audit.jsonl")}) as running:
        yield running


def dataset_bytes(part10: bytes) -> bytes:
    """The data set of a Part 10 file, after its File Meta Information (PS3.10 7.1): each side
    writes its own meta header; the data set must be the same bytes."""
    assert part10[128:132] == b"DICM"
    (meta_length,) = struct.unpack("<I", part10[140:144])
    return part10[144 + meta_length :]


# storescu proposes the uncompressed syntaxes plus one compressed family per run (each option
# below); files in another compressed syntax would be decompressed, so each family is its own run.
_STORESCU_FAMILY = {
    "1.2.840.10008.1.2.5": "-xr",  # RLE Lossless
    "1.2.840.10008.1.2.4.90": "-xv",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.80": "-xt",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.70": "-xs",  # JPEG Lossless SV1
}


def storescu(gw: DimseGateway, files: list[Path], *, aet: str) -> subprocess.CompletedProcess[str]:
    """DCMTK's storescu sends ``files`` as they are (one run per compressed family; the last run's
    result, or the first that failed)."""
    groups: dict[str, list[Path]] = {}
    for path in files:
        syntax = str(pydicom.filereader.read_file_meta_info(path).TransferSyntaxUID)
        groups.setdefault(_STORESCU_FAMILY.get(syntax, "-x="), []).append(path)
    result: subprocess.CompletedProcess[str] | None = None
    for option, paths in groups.items():
        argv = ["storescu", "-v", option, "-aet", aet, "-aec", gw.ae_title, "-to", "30", "127.0.0.1", str(gw.port)]
        result = subprocess.run([*argv, *map(str, paths)], capture_output=True, text=True, timeout=120, check=False)
        if result.returncode != 0:
            break
    assert result is not None
    return result


def write_files(tmp: Path, instances: list[bytes]) -> list[Path]:
    return [factory.write(tmp / f"{i:04d}.dcm", data) for i, data in enumerate(instances)]


def c_store(gw: DimseGateway, data: bytes | Path, *, aet: str) -> Dataset:
    """One C-STORE by pynetdicom (a file path is sent raw, without decoding); the response status."""
    if isinstance(data, bytes):
        ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(data))
        sop_class, syntax = ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.TransferSyntaxUID
    else:
        meta = pydicom.filereader.read_file_meta_info(data)
        sop_class, syntax = meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID
    ae = AE(ae_title=aet)
    ae.requested_contexts = [build_context(sop_class, [syntax]), build_context("1.2.840.10008.1.1")]
    assoc = ae.associate("127.0.0.1", gw.port, ae_title=gw.ae_title)
    assert assoc.is_established
    try:
        status: Dataset = assoc.send_c_store(ds if isinstance(data, bytes) else data)
        assert "Status" in status, "no C-STORE response: the association was dropped"
        # The association is still usable after a refusal: bad input never drops it.
        assert assoc.send_c_echo().Status == 0x0000
    finally:
        assoc.release()
    return status


def retrieve(gw: DimseGateway, study: str) -> dict[str, bytes]:
    response = gw.get(f"/studies/{study}", Accept=ACCEPT_AS_STORED)
    assert response.status_code == 200, response.text
    return {
        str(pydicom.dcmread(pydicom.filebase.DicomBytesIO(part)).SOPInstanceUID): part
        for _, part in split_multipart(response)
    }


def test_storescu_pushes_a_study_that_comes_back_byte_identical_and_findable(gw: DimseGateway, tmp_path: Path) -> None:
    study = factory.new_uid("store-study", 1)
    ident = {"study_uid": study}
    instances = [
        *factory.ct_series(12, rows=64, cols=64, study_uid=study, series_uid=factory.new_uid("store-ct", 1), seed=1),
        factory.enhanced_ct(seed=2, **ident),  # multi-frame
        factory.multiframe_xa(seed=3, frames=10, rows=64, cols=64, **ident),
        factory.rle_instance(seed=4, frames=3, **ident),
        factory.j2k_lossless_instance(seed=5, **ident),
        factory.jpegls_lossless_instance(seed=6, **ident),
        factory.ct_instance(seed=7, transfer_syntax="1.2.840.10008.1.2", **ident),  # implicit VR
    ]
    result = storescu(gw, write_files(tmp_path, instances), aet="MODALITY")
    assert result.returncode == 0, result.stdout + result.stderr
    originals = {str(pydicom.dcmread(pydicom.filebase.DicomBytesIO(d)).SOPInstanceUID): d for d in instances}
    received = retrieve(gw, study)
    assert set(received) == set(originals)
    for sop, original in originals.items():
        assert dataset_bytes(received[sop]) == dataset_bytes(original), sop
        stored_syntax = pydicom.dcmread(pydicom.filebase.DicomBytesIO(received[sop])).file_meta.TransferSyntaxUID
        assert stored_syntax == pydicom.dcmread(pydicom.filebase.DicomBytesIO(original)).file_meta.TransferSyntaxUID
    found = gw.get(f"/studies?StudyInstanceUID={study}")
    assert found.status_code == 200
    assert found.json()[0]["0020000D"]["Value"] == [study]
    # The same files again (a modality retrying): every one succeeds, nothing changes.
    again = storescu(gw, write_files(tmp_path, instances), aet="MODALITY")
    assert again.returncode == 0, again.stdout + again.stderr
    assert retrieve(gw, study).keys() == received.keys()


def test_a_read_only_client_is_refused_not_authorized(gw: DimseGateway) -> None:
    data = factory.ct_instance(seed=20, study_uid=factory.new_uid("store-refused", 20))
    status = c_store(gw, data, aet="VIEWER")
    assert status.Status == 0x0124
    assert "write" in status.ErrorComment
    found = gw.get(f"/studies?StudyInstanceUID={factory.new_uid('store-refused', 20)}")
    assert found.status_code == 204 or found.json() == []


def test_a_read_only_client_sees_the_refusal_in_storescu(gw: DimseGateway, tmp_path: Path) -> None:
    files = write_files(tmp_path, [factory.ct_instance(seed=21, study_uid=factory.new_uid("store-refused", 21))])
    result = storescu(gw, files, aet="VIEWER")
    output = result.stdout + result.stderr
    # DCMTK has no name for the general status 0x0124 (PS3.7 C.5.2) on a C-STORE: it prints the code.
    assert "Received Store Response (Unknown Status: 0x124)" in output, output


def test_a_restricted_client_stores_its_patients_only(gw: DimseGateway) -> None:
    other_study = factory.new_uid("store-other-patient", 30)
    gw.stow(factory.ct_instance(seed=30, study_uid=other_study, patient=factory.Patient(id="OTHER-1")))
    # Into another patient's study, even claiming its own patient: refused, nothing told.
    intruder = factory.ct_instance(seed=31, study_uid=other_study, patient=factory.Patient(id="WARD-1"))
    status = c_store(gw, intruder, aet="WARD")
    assert status.Status == 0x0124
    outside = factory.ct_instance(
        seed=32, study_uid=factory.new_uid("store-outside", 32), patient=factory.Patient(id="X")
    )
    refused = c_store(gw, outside, aet="WARD")
    assert refused.Status == 0x0124
    # The hidden study is answered exactly as any study outside the restriction.
    assert status.ErrorComment == refused.ErrorComment
    own = factory.ct_instance(
        seed=33, study_uid=factory.new_uid("store-ward", 33), patient=factory.Patient(id="WARD-1")
    )
    assert c_store(gw, own, aet="WARD").Status == 0x0000


def test_a_different_object_under_a_stored_sop_instance_uid_is_refused(gw: DimseGateway) -> None:
    study = factory.new_uid("store-dup", 40)
    sop = factory.new_uid("store-dup-sop", 40)
    first = factory.ct_instance(seed=40, study_uid=study, sop_uid=sop)
    assert c_store(gw, first, aet="MODALITY").Status == 0x0000
    assert c_store(gw, first, aet="MODALITY").Status == 0x0000  # identical re-send
    other = factory.ct_instance(seed=41, study_uid=study, sop_uid=sop)
    status = c_store(gw, other, aet="MODALITY")
    assert status.Status == 0x0111
    assert dataset_bytes(retrieve(gw, study)[sop]) == dataset_bytes(first)


def test_an_unparseable_data_set_is_a_failure_status_not_a_dropped_association(
    gw: DimseGateway, tmp_path: Path
) -> None:
    good = factory.ct_instance(seed=50, study_uid=factory.new_uid("store-bad", 50))
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(factory.truncated(good, drop=1000))  # cut in the middle of its pixel data
    status = c_store(gw, broken, aet="MODALITY")
    assert status.Status >> 12 == 0xC or status.Status == 0xA900, hex(status.Status)
    assert status.ErrorComment


def test_each_stored_or_refused_instance_is_audited_and_counted(gw: DimseGateway) -> None:
    study = factory.new_uid("store-audit", 60)
    stored = factory.ct_instance(seed=60, study_uid=study)
    assert c_store(gw, stored, aet="MODALITY").Status == 0x0000
    assert c_store(gw, factory.ct_instance(seed=61, study_uid=study), aet="VIEWER").Status == 0x0124
    audit_file = Path(gw.settings.audit.destination)
    lines = [json.loads(line) for line in audit_file.read_text().splitlines()]
    stores = [e for e in lines if e.get("dimse", {}).get("operation") == "C-STORE"]
    sop = factory.new_uid("sop", 60, 1, 1)
    mine = [e for e in stores if any(o["ParticipantObjectID"] == sop for o in e["ParticipantObjectIdentification"])]
    assert mine, stores
    event = mine[-1]
    assert event["ActiveParticipant"][0]["UserID"] == "dimse:modality"
    assert event["dimse"]["status"] == "0x0000"
    assert event["EventIdentification"]["EventOutcomeIndicator"] == 0
    refused = [e for e in stores if e["ActiveParticipant"][0]["UserID"] == "dimse:viewer"]
    assert refused
    assert refused[-1]["dimse"]["status"] == "0x0124"
    assert refused[-1]["EventIdentification"]["EventOutcomeIndicator"] == 4
    metrics = gw.run(gw.http.get("/metrics")).text
    assert (
        'dicomweb_gateway_dimse_scp_operations_total{operation="C-STORE",outcome="success",peer="modality"}' in metrics
    )
    assert 'dicomweb_gateway_dimse_scp_operations_total{operation="C-STORE",outcome="failure",peer="viewer"}' in metrics


class FailingStore(FileBlobStore):
    """The object store, refusing every write while ``down`` (as S3 does during an outage)."""

    down = False

    async def put_file(self, key: str, path: Path, *, sha256: str, content_type: str) -> None:
        if self.down:
            raise StorageError("the object store is unavailable")
        await super().put_file(key, path, sha256=sha256, content_type=content_type)

    async def put_instance(self, key: str, path: Path, *, sha256: str, metadata_key: str, metadata: bytes) -> None:
        if self.down:
            raise StorageError("the object store is unavailable")
        await super().put_instance(key, path, sha256=sha256, metadata_key=metadata_key, metadata=metadata)


def test_an_unavailable_store_is_out_of_resources_and_the_retry_succeeds(tmp_path: Path) -> None:
    (tmp_path / "objects").mkdir()
    store = FailingStore(tmp_path / "objects")
    data = factory.ct_instance(seed=70, study_uid=factory.new_uid("store-down", 70))
    with dimse_gateway(tmp_path, clients=CLIENTS, store=store) as gw:
        store.down = True
        status = c_store(gw, data, aet="MODALITY")
        assert status.Status == 0xA700
        assert "unavailable" in status.ErrorComment
        store.down = False
        assert c_store(gw, data, aet="MODALITY").Status == 0x0000


def test_storage_compression_applies_to_c_store_as_to_stow(tmp_path: Path) -> None:
    study = factory.new_uid("store-compressed", 80)
    data = factory.ct_instance(seed=80, study_uid=study)
    with dimse_gateway(tmp_path, clients=CLIENTS, storage_compression="jpeg-ls") as gw:
        assert c_store(gw, data, aet="MODALITY").Status == 0x0000
        assert c_store(gw, data, aet="MODALITY").Status == 0x0000  # the same upload again: identical
        stored = next(iter(retrieve(gw, study).values()))
    stored_ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(stored))
    assert stored_ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.80"
    original = pydicom.dcmread(pydicom.filebase.DicomBytesIO(data))
    assert (stored_ds.pixel_array == original.pixel_array).all()  # lossless


def test_a_data_set_over_the_instance_limit_aborts_the_association(tmp_path: Path) -> None:
    small = factory.ct_instance(seed=90, study_uid=factory.new_uid("store-cap", 90))
    big = factory.ct_instance(seed=91, rows=512, cols=512, study_uid=factory.new_uid("store-cap", 91))
    # Small PDUs: the data set arrives in pieces, and the listener stops it past the limit.
    limits = {"limits": {"max_part_bytes": 200_000}, "dimse": {"max_pdu_length": 16384}}
    with dimse_gateway(tmp_path, clients=CLIENTS, **limits) as gw:
        assert c_store(gw, small, aet="MODALITY").Status == 0x0000
        ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(big))
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
        assoc = ae.associate("127.0.0.1", gw.port, ae_title=gw.ae_title)
        assert assoc.is_established
        status = assoc.send_c_store(ds)
        assert "Status" not in status  # no answer: the association was aborted
        assoc.abort()
        # The listener serves on.
        assert c_store(gw, small, aet="MODALITY").Status == 0x0000
        found = gw.get(f"/studies?StudyInstanceUID={factory.new_uid('store-cap', 91)}")
        assert found.status_code == 204 or found.json() == []


def test_a_c_find_is_audited_with_its_level_and_key_names_only(gw: DimseGateway) -> None:
    ae = AE(ae_title="VIEWER")
    ae.add_requested_context("1.2.840.10008.5.1.4.1.2.2.1")
    assoc = ae.associate("127.0.0.1", gw.port, ae_title=gw.ae_title)
    assert assoc.is_established
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.PatientName = "SECRET^NAME*"
    query.StudyInstanceUID = ""
    statuses = [int(status.Status) for status, _ in assoc.send_c_find(query, "1.2.840.10008.5.1.4.1.2.2.1")]
    assoc.release()
    assert statuses[-1] == 0x0000
    lines = Path(gw.settings.audit.destination).read_text()
    assert "SECRET" not in lines  # values are patient data: never in the trail
    finds = [json.loads(line) for line in lines.splitlines() if '"C-FIND"' in line]
    event = finds[-1]
    assert event["ActiveParticipant"][0]["UserID"] == "dimse:viewer"
    assert event["dimse"]["level"] == "STUDY"
    keys = event["ParticipantObjectIdentification"][-1]["ParticipantObjectQuery"]
    assert "PatientName" in keys


def test_nothing_is_left_in_the_spool(gw: DimseGateway, tmp_path: Path) -> None:
    study = factory.new_uid("store-spool", 100)
    assert c_store(gw, factory.ct_instance(seed=100, study_uid=study), aet="MODALITY").Status == 0x0000
    assert c_store(gw, factory.ct_instance(seed=101, study_uid=study), aet="VIEWER").Status == 0x0124
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(factory.truncated(factory.ct_instance(seed=102, study_uid=study), drop=1000))
    assert c_store(gw, broken, aet="MODALITY").Status != 0x0000
    leftovers = [p for p in gw.settings.effective_spool_dir.rglob("*") if p.is_file()]
    assert leftovers == []


def test_storescu_of_three_hundred_instances(gw: DimseGateway, tmp_path: Path) -> None:
    study = factory.new_uid("store-many", 110)
    instances = [
        data
        for series in range(3)
        for data in factory.ct_series(
            100,
            rows=32,
            cols=32,
            study_uid=study,
            series_uid=factory.new_uid("store-many", 110, series),
            seed=110 + series,
        )
    ]
    result = storescu(gw, write_files(tmp_path, instances), aet="MODALITY")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("Received Store Response (Success)") + result.stderr.count(
        "Received Store Response (Success)"
    ) == len(instances)
    received = retrieve(gw, study)
    originals = {sop_of(data): data for data in instances}
    assert received.keys() == originals.keys()
    assert all(dataset_bytes(received[sop]) == dataset_bytes(data) for sop, data in originals.items())
    found = gw.get(f"/studies?StudyInstanceUID={study}&includefield=NumberOfStudyRelatedInstances")
    assert found.json()[0]["00201208"]["Value"] == [300]


def sop_of(part10: bytes) -> str:
    return str(pydicom.dcmread(pydicom.filebase.DicomBytesIO(part10), stop_before_pixels=True).SOPInstanceUID)


def test_a_client_killed_in_the_middle_of_a_c_store_leaves_nothing_behind(gw: DimseGateway, tmp_path: Path) -> None:
    study = factory.new_uid("store-killed", 120)
    xa = factory.multiframe_xa(seed=120, frames=400, rows=512, cols=512, study_uid=study)  # 100 MB
    big = factory.write(tmp_path / "big.dcm", xa)
    argv = ["storescu", "-aet", "MODALITY", "-aec", gw.ae_title, "--max-send-pdu", "16384", "127.0.0.1", str(gw.port)]
    sender = subprocess.Popen([*argv, str(big)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while gw.receiving() < 1 << 20 and sender.poll() is None:
            time.sleep(0.01)
        sender.kill()  # a megabyte of the data set in, 99 more on their way: cut off in the middle
        assert gw.receiving() < len(xa)
    finally:
        sender.wait(30)
    while gw.open_associations():  # the association ends, however long that takes
        time.sleep(0.05)
    found = gw.get(f"/studies?StudyInstanceUID={study}")
    assert found.status_code == 204 or found.json() == []
    assert [p for p in gw.settings.effective_spool_dir.rglob("*") if p.is_file()] == []
    assert c_store(gw, factory.ct_instance(seed=121, study_uid=study), aet="MODALITY").Status == 0x0000


@pytest.mark.parametrize(
    ("make", "name", "seed"),
    [(factory.latin1_instance, factory.LATIN1_NAME, 130), (factory.utf8_instance, factory.UTF8_NAME, 131)],
)
def test_names_in_latin1_and_utf8_are_stored_as_sent_and_found_by_qido(
    gw: DimseGateway, tmp_path: Path, make: Any, name: str, seed: int
) -> None:
    study = factory.new_uid("store-charset", seed)
    data = make(seed=seed, study_uid=study)
    result = storescu(gw, write_files(tmp_path, [data]), aet="MODALITY")
    assert result.returncode == 0, result.stdout + result.stderr
    assert dataset_bytes(next(iter(retrieve(gw, study).values()))) == dataset_bytes(data)
    found = gw.get(f"/studies?StudyInstanceUID={study}&includefield=PatientName")
    assert found.json()[0]["00100010"]["Value"][0]["Alphabetic"] == name


@pytest.fixture
def receive_dir(gw: DimseGateway) -> Path:
    """Where pynetdicom puts the files it receives C-STORE data sets into: the process's spool."""
    where = process_spool_dir(gw.settings.effective_spool_dir) / "received"
    assert list(where.iterdir()) == []
    return where


def test_a_large_multi_frame_push_is_received_on_disk_and_comes_back_byte_identical(
    gw: DimseGateway, tmp_path: Path, receive_dir: Path
) -> None:
    study = factory.new_uid("store-large", 140)
    xa = factory.multiframe_xa(seed=140, frames=160, rows=512, cols=512, study_uid=study)  # 40 MB
    argv = ["storescu", "-aet", "MODALITY", "-aec", gw.ae_title, "--max-send-pdu", "16384", "127.0.0.1", str(gw.port)]
    sender = subprocess.Popen(
        [*argv, "-v", str(factory.write(tmp_path / "xa.dcm", xa))],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        while gw.receiving() < 1 << 20 and sender.poll() is None:
            time.sleep(0.01)
        # Past the first megabyte the data set is in a file, not in the listener's memory.
        assert [p.stat().st_size for p in receive_dir.iterdir()] != []
    finally:
        output, _ = sender.communicate(timeout=120)
    assert sender.returncode == 0, output
    received = retrieve(gw, study)
    assert [dataset_bytes(part) for part in received.values()] == [dataset_bytes(xa)]
    assert list(receive_dir.iterdir()) == []  # pynetdicom's file is gone once stored


def test_a_push_cut_off_mid_data_set_leaves_no_received_file(
    gw: DimseGateway, tmp_path: Path, receive_dir: Path
) -> None:
    xa = factory.multiframe_xa(seed=141, frames=400, rows=512, cols=512)  # 100 MB
    argv = ["storescu", "-aet", "MODALITY", "-aec", gw.ae_title, "--max-send-pdu", "16384", "127.0.0.1", str(gw.port)]
    sender = subprocess.Popen([*argv, str(factory.write(tmp_path / "xa.dcm", xa))], stderr=subprocess.DEVNULL)
    try:
        while gw.receiving() < 1 << 20 and sender.poll() is None:
            time.sleep(0.01)
        partial = list(receive_dir.iterdir())
        sender.kill()
    finally:
        sender.wait(30)
    assert len(partial) == 1
    while gw.open_associations():  # the association ends, however long that takes
        time.sleep(0.05)
    assert list(receive_dir.iterdir()) == []


def test_a_pushed_instance_is_indexed_with_the_origin_of_its_client(gw: DimseGateway, tmp_path: Path) -> None:
    study = factory.new_uid("store-origin", 150)
    pushed, stowed = factory.ct_instance(seed=150, study_uid=study), factory.ct_instance(seed=151, study_uid=study)
    result = storescu(gw, write_files(tmp_path, [pushed]), aet="MODALITY")
    assert result.returncode == 0, result.stdout + result.stderr
    gw.stow(stowed)
    origins = {record.sop_uid: record.origin for record in gw.run(gw.index.instances(study))}
    assert origins == {sop_of(pushed): "dimse:modality", sop_of(stowed): "stow"}
