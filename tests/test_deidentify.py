"""De-identified views (issue #18 part 4): the PS3.15 E.1-1 profile, attribute by attribute."""

from __future__ import annotations

import io
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from gateway.dicom.deidentify import Deidentifier, ProfileOptions, action_for
from gateway.dicom.deidentify_part10 import deidentified_part10
from gateway.dicom.deidentify_table import TABLE
from gateway.dicom.dicomjson import dataset_to_json
from gateway.dicom.query import parse_qido
from gateway.errors import SettingsError
from gateway.ports import Index
from gateway.services import deidentified as views_module
from gateway.services.deidentified import deidentify_key
from gateway.settings import load_settings
from tests.dimse_gateway import DimseGateway, client, dimse_gateway
from tests.factory import ct_dataset, new_uid, to_part10_bytes
from tests.fixtures_gateway import stop_gateway
from tests.fixtures_security import (
    Issuer,
    JwksServer,
    SecuredGateway,
    apikey_command,
    bearer,
    create_api_key,
    oidc_config,
    start_secured_gateway,
)
from tests.http_helpers import read, split_multipart, stow_body
from tests.test_index_contract import record as index_record

KEY = b"k" * 32
UID_2_25 = re.compile(r"^2\.25\.[1-9][0-9]*$")


def rich_dataset() -> Dataset:
    """A CT with names, IDs, dates, device and institution identity, references in sequences
    and private attributes: something for most kinds of row of the table."""
    ds = ct_dataset(seed=18, rows=8, cols=8)
    ds.InstitutionName = "St. Elsewhere"
    ds.InstitutionAddress = "1 Main Street"
    ds.StationName = "CT01"
    ds.DeviceSerialNumber = "SN-12345"
    ds.OperatorsName = "SMITH^ANNA"
    ds.PatientAge = "054Y"
    ds.PatientWeight = 81.5
    ds.PatientAddress = "2 High Street"
    ds.OtherPatientIDs = "OTHER-1"
    ds.ContentDate = "20240115"
    ds.ContentTime = "101600"
    ds.AcquisitionDateTime = "20240115101500.000000"
    ds.FrameOfReferenceUID = new_uid("for", 18)
    ds.StudyComments = "call the patient at home"
    ds.BurnedInAnnotation = "NO"
    ref = Dataset()
    ref.ReferencedSOPClassUID = ds.SOPClassUID
    ref.ReferencedSOPInstanceUID = new_uid("ref", 18)
    ds.ReferencedImageSequence = Sequence([ref])
    procedure = Dataset()
    procedure.CodeValue = "P1"
    procedure.CodingSchemeDesignator = "99LOCAL"
    procedure.CodeMeaning = "CT chest"
    ds.ProcedureCodeSequence = Sequence([procedure])
    other = Dataset()
    other.PatientID = "OTHER-2"
    other.IssuerOfPatientID = "HOSP"
    ds.OtherPatientIDsSequence = Sequence([other])
    block = ds.private_block(0x0009, "ACME 1.0", create=True)
    block.add_new(0x01, "LO", "secret note")
    return ds


def deidentified(ds: Dataset, options: ProfileOptions | None = None) -> Dataset:
    options = options or ProfileOptions()
    data = deidentified_part10(to_part10_bytes(ds), Deidentifier(KEY, options))
    return pydicom.dcmread(io.BytesIO(data))


def expected_action(tag: int, options: ProfileOptions) -> str | None:
    """Read straight from the table, as a reviewer would: the option's column when it is on,
    and for a combined action the choice the module's docstring promises."""
    if (tag >> 16) % 2:
        return "X"
    row = TABLE.get(f"{tag:08X}")
    if row is None:
        return None
    action = row.basic
    for name in options.names:
        action = getattr(row, name) or action
    for letter in ("U", "D", "Z"):
        if letter in action:
            return letter
    return action


def check_against_table(original: Dataset, result: Dataset, deid: Deidentifier, options: ProfileOptions) -> int:
    checked = 0
    for elem in original:
        action = expected_action(int(elem.tag), options)
        after = result.get(elem.tag)
        checked += 1
        if action == "X":
            assert after is None, f"{elem.tag} {elem.keyword} should be removed"
        elif action == "Z":
            assert after is not None
            assert after.is_empty, f"{elem.tag} {elem.keyword} should be empty"
        elif action == "U":
            assert after is not None
            if elem.VR == "SQ":
                for item_before, item_after in zip(elem.value, after.value, strict=True):
                    checked += check_against_table(item_before, item_after, deid, options)
            else:
                assert after.value == deid.uid(elem.value), f"{elem.keyword} not mapped"
                assert UID_2_25.match(after.value)
        elif action == "D":
            assert after is not None
            assert not after.is_empty, f"{elem.tag} {elem.keyword} needs a dummy"
            if elem.VR == "SQ":
                for item_before, item_after in zip(elem.value, after.value, strict=True):
                    checked += check_against_table(item_before, item_after, deid, options)
            else:
                assert str(after.value) != str(elem.value), f"{elem.keyword} kept its value"
        elif action == "C":  # Modified Dates: dates move by whole days, times stay
            assert after is not None
            assert (after.value != elem.value) == (elem.VR in ("DA", "DT")), f"{elem.keyword} cleaned wrongly"
        elif elem.VR == "SQ":
            for item_before, item_after in zip(elem.value, after.value, strict=True):
                checked += check_against_table(item_before, item_after, deid, options)
        else:
            assert after is not None
            assert after.value == elem.value, f"{elem.keyword} should be kept"
    return checked


@pytest.mark.parametrize(
    "options",
    [ProfileOptions(), ProfileOptions(modified_dates=True, device=True), ProfileOptions(full_dates=True)],
    ids=["basic", "modified-dates-device", "full-dates"],
)
def test_every_attribute_follows_the_table(options: ProfileOptions) -> None:
    original = rich_dataset()
    result = deidentified(rich_dataset(), options)
    checked = check_against_table(original, result, Deidentifier(KEY, options), options)
    assert checked > 40
    assert result.PatientIdentityRemoved == "YES"
    codes = [item.CodeValue for item in result.DeidentificationMethodCodeSequence]
    assert codes[0] == "113100"
    assert ("113107" in codes) == options.modified_dates
    assert ("113109" in codes) == options.device


def test_named_attributes_as_the_standard_says() -> None:
    """A few rows checked by hand against PS3.15 Table E.1-1, not through the table module."""
    original = rich_dataset()
    result = deidentified(rich_dataset())
    assert result.PatientName == ""  # Z
    assert result.PatientID not in ("", original.PatientID)  # Z/D: a dummy keeps Type 1 IODs valid
    assert result.AccessionNumber == ""  # Z
    assert result.StudyDate == ""  # Z
    assert "PatientAddress" not in result
    assert "OtherPatientIDs" not in result
    assert "PatientAge" not in result
    assert "InstitutionAddress" not in result
    assert "StudyComments" not in result
    assert "OtherPatientIDsSequence" not in result
    assert result.InstitutionName not in ("", original.InstitutionName)  # X/Z/D
    assert result.DeviceSerialNumber != original.DeviceSerialNumber  # X/Z/D
    assert result.Modality == "CT"
    assert result.SOPClassUID == original.SOPClassUID
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID"):
        assert UID_2_25.match(result[keyword].value)
        assert result[keyword].value != original[keyword].value
    assert result.file_meta.MediaStorageSOPInstanceUID == result.SOPInstanceUID
    ref = result.ReferencedImageSequence[0]
    assert ref.ReferencedSOPInstanceUID != original.ReferencedImageSequence[0].ReferencedSOPInstanceUID
    assert ref.ReferencedSOPClassUID == original.SOPClassUID
    assert result.ProcedureCodeSequence[0].CodeValue == "P1"  # X/Z: kept present, emptied of identity
    assert not [e for e in result if e.tag.is_private]
    assert result.PixelData == original.PixelData  # pixels untouched
    assert result.LongitudinalTemporalInformationModified == "REMOVED"


def test_options_keep_what_they_name() -> None:
    original = rich_dataset()
    result = deidentified(rich_dataset(), ProfileOptions(modified_dates=True, device=True, institution=True))
    assert result.DeviceSerialNumber == original.DeviceSerialNumber  # Retain Device Identity: K
    assert result.InstitutionName == original.InstitutionName  # Retain Institution Identity: K
    assert result.StudyDate not in ("", original.StudyDate)
    assert len(result.StudyDate) == 8
    assert result.StudyDate == result.ContentDate  # one shift: intervals survive
    assert result.LongitudinalTemporalInformationModified == "MODIFIED"
    full = deidentified(rich_dataset(), ProfileOptions(full_dates=True))
    assert full.StudyDate == original.StudyDate


def test_uid_mapping_is_deterministic_and_keyed() -> None:
    uid = new_uid("study", 1)
    assert Deidentifier(KEY).uid(uid) == Deidentifier(KEY).uid(uid)
    assert Deidentifier(b"other key").uid(uid) != Deidentifier(KEY).uid(uid)
    mapped = Deidentifier(KEY).uid(uid)
    assert UID_2_25.match(mapped)
    assert len(mapped) <= 64


def test_dicom_json_follows_the_same_table() -> None:
    original = rich_dataset()
    deid = Deidentifier(KEY)
    js = deid.json_dataset(dataset_to_json(original, "studies/x"))
    assert "00100010" in js
    assert "Value" not in js["00100010"]
    assert js["0020000D"]["Value"] == [deid.uid(original.StudyInstanceUID)]
    assert "00090010" not in js
    assert "00091001" not in js
    assert "00101040" not in js  # Patient's Address: X
    assert js["00120062"]["Value"] == ["YES"]
    assert action_for("00100010", ProfileOptions()) == "Z"


def test_burned_in_annotation_is_withheld_unless_served() -> None:
    ds = rich_dataset()
    ds.BurnedInAnnotation = "YES"
    js = dataset_to_json(ds, "studies/x")
    assert Deidentifier(KEY).withholds(js)
    assert not Deidentifier(KEY, ProfileOptions(serve_burned_in=True)).withholds(js)
    assert not Deidentifier(KEY).withholds(dataset_to_json(rich_dataset(), "studies/x"))


# -- through a running gateway ------------------------------------------------------------------

SITE_KEY = "site-secret-for-tests"
DEID_CLAIM = "deid"


@dataclass
class DeidGateway:
    sg: SecuredGateway
    plain: dict[str, str]  # an API key with read and write, answered as stored
    deid: dict[str, str]  # an API key made with --deidentify basic
    rich: Dataset  # the stored rich instance, as sent
    burned: Dataset  # an instance of the same series with Burned In Annotation YES

    def get(self, path: str, headers: dict[str, str], **kwargs: Any) -> httpx.Response:
        return httpx.get(self.sg.url + path, headers=headers, timeout=60, **kwargs)


@pytest.fixture(scope="module")
def dg(tmp_path_factory: pytest.TempPathFactory, jwks_server: JwksServer) -> Iterator[DeidGateway]:
    where = tmp_path_factory.mktemp("deidentify")
    keys = where / "keys.json"
    plain = create_api_key(keys, "uploader", "read", "write")
    deid = create_api_key(keys, "research", "read", deidentify="basic")
    listed = apikey_command("list", "--keys-file", str(keys))
    assert "research" in listed.stdout
    assert "deidentify=basic" in listed.stdout
    extra = f'deidentify_claim = "{DEID_CLAIM}"\n[deidentify]\nkey = "{SITE_KEY}"\n'
    running = start_secured_gateway(where, oidc_config(jwks_server.url, keys_file=keys, extra=extra))
    try:
        rich = rich_dataset()
        burned = rich_dataset()
        burned.SOPInstanceUID = new_uid("burned", 18)
        burned.InstanceNumber = 2
        burned.BurnedInAnnotation = "YES"
        body, content_type = stow_body([to_part10_bytes(rich_dataset()), to_part10_bytes(burned)])
        headers = {**bearer(plain), "Content-Type": content_type, "Accept": "application/dicom+json"}
        response = httpx.post(running.url + "/studies", content=body, headers=headers, timeout=60)
        assert response.status_code == 200, response.text
        yield DeidGateway(running, bearer(plain), bearer(deid), rich, burned)
    finally:
        stop_gateway(running.gw)


def uid_of(row: dict[str, Any], tag: str) -> str:
    return str(row[tag]["Value"][0])


def test_qido_rows_are_deidentified_with_the_same_uids_every_time(dg: DeidGateway) -> None:
    mapped = Deidentifier(SITE_KEY.encode()).uid(dg.rich.StudyInstanceUID)
    answers = [dg.get("/studies", dg.deid).json() for _ in range(2)]
    assert answers[0] == answers[1]
    (row,) = answers[0]
    assert uid_of(row, "0020000D") == mapped
    assert "Value" not in row["00100010"]  # Patient's Name: Z
    assert uid_of(row, "00100020") not in ("", dg.rich.PatientID)
    assert dg.rich.StudyInstanceUID not in str(row)
    assert row["00081190"]["Value"][0].endswith(f"/studies/{mapped}")
    (plain,) = dg.get("/studies", dg.plain).json()
    assert uid_of(plain, "0020000D") == dg.rich.StudyInstanceUID


def test_navigation_with_deidentified_uids(dg: DeidGateway) -> None:
    (study,) = dg.get("/studies", dg.deid).json()
    study_uid = uid_of(study, "0020000D")
    (series,) = dg.get(f"/studies/{study_uid}/series", dg.deid).json()
    series_uid = uid_of(series, "0020000E")
    assert series_uid != dg.rich.SeriesInstanceUID
    instances = dg.get(f"/studies/{study_uid}/series/{series_uid}/instances", dg.deid).json()
    sops = {uid_of(row, "00080018") for row in instances}
    sop = Deidentifier(SITE_KEY.encode()).uid(dg.rich.SOPInstanceUID)
    assert sops == {sop}  # the burned in instance is withheld from the list too
    assert all("00280301" not in row for row in instances)  # looked at, not asked for
    plain_rows = dg.get(f"/studies/{dg.rich.StudyInstanceUID}/instances", dg.plain).json()
    assert len(plain_rows) == 2
    found = dg.get("/instances", dg.deid, params={"SOPInstanceUID": sop}).json()
    assert [uid_of(row, "00080018") for row in found] == [sop]
    path = f"/studies/{study_uid}/series/{series_uid}/instances/{sop}"
    plain_path = (
        f"/studies/{dg.rich.StudyInstanceUID}/series/{dg.rich.SeriesInstanceUID}/instances/{dg.rich.SOPInstanceUID}"
    )
    accept = {"Accept": 'multipart/related; type="application/octet-stream"'}
    frames = dg.get(path + "/frames/1", {**dg.deid, **accept})
    assert frames.status_code == 200, frames.text
    ((headers, frame),) = split_multipart(frames)
    assert sop in headers["content-location"]
    assert dg.rich.SOPInstanceUID not in frames.text
    ((_, plain_frame),) = split_multipart(dg.get(plain_path + "/frames/1", {**dg.plain, **accept}))
    assert frame == plain_frame
    (metadata,) = dg.get(path + "/metadata", dg.deid).json()
    assert metadata["00120062"]["Value"] == ["YES"]
    assert uid_of(metadata, "00080018") == sop
    assert not [tag for tag in metadata if int(tag[3], 16) % 2]
    pixel_uri = metadata["7FE00010"]["BulkDataURI"]
    assert pixel_uri.startswith(dg.sg.url + path)  # under the replacement UIDs
    pixels = httpx.get(pixel_uri, headers={**dg.deid, "Accept": "application/octet-stream"}, timeout=60)
    assert pixels.status_code == 200, pixels.text
    assert pixels.content == dg.rich.PixelData
    rendered = dg.get(path + "/rendered", {**dg.deid, "Accept": "image/png"})
    assert rendered.status_code == 200
    # The original UIDs mean nothing to a de-identified principal.
    assert dg.get(plain_path + "/metadata", dg.deid).status_code == 404


def test_instances_are_rewritten_with_pixels_unchanged(dg: DeidGateway) -> None:
    (study,) = dg.get("/studies", dg.deid).json()
    response = dg.get(
        f"/studies/{uid_of(study, '0020000D')}", {**dg.deid, "Accept": 'multipart/related; type="application/dicom"'}
    )
    assert response.status_code == 200, response.text
    (part,) = split_multipart(response)  # the burned in instance is withheld
    ds = read(part[1])
    assert ds.PatientIdentityRemoved == "YES"
    assert ds.PatientName == ""
    assert ds.SOPInstanceUID == Deidentifier(SITE_KEY.encode()).uid(dg.rich.SOPInstanceUID)
    assert ds.PixelData == dg.rich.PixelData
    assert not [e for e in ds if e.tag.is_private]


def test_burned_in_annotation_is_withheld(dg: DeidGateway) -> None:
    deid = Deidentifier(SITE_KEY.encode())
    path = "/studies/{}/series/{}/instances/{}/metadata".format(
        *(deid.uid(u) for u in (dg.burned.StudyInstanceUID, dg.burned.SeriesInstanceUID, dg.burned.SOPInstanceUID))
    )
    assert dg.get(path, dg.deid).status_code == 404
    b = dg.burned
    plain = f"/studies/{b.StudyInstanceUID}/series/{b.SeriesInstanceUID}/instances/{b.SOPInstanceUID}/metadata"
    assert dg.get(plain, dg.plain).status_code == 200


def test_matching_on_deidentified_attributes_is_refused(dg: DeidGateway) -> None:
    response = dg.get("/studies", dg.deid, params={"PatientName": "DOE*"})
    assert response.status_code == 400
    assert "PatientName" in response.text
    # The dummy Patient ID it was shown finds the patient's studies (a viewer's priors); the
    # real one finds nothing.
    (row,) = dg.get("/studies", dg.deid).json()
    shown = uid_of(row, "00100020")
    assert [uid_of(r, "0020000D") for r in dg.get("/studies", dg.deid, params={"PatientID": shown}).json()] == [
        uid_of(row, "0020000D")
    ]
    assert dg.get("/studies", dg.deid, params={"PatientID": dg.rich.PatientID}).json() == []
    kept = dg.get("/studies", dg.deid, params={"ModalitiesInStudy": "CT"})  # not in the table: matches
    assert kept.status_code == 200, kept.text


def test_wado_uri_honours_anonymize_for_deidentified_principals(dg: DeidGateway) -> None:
    deid = Deidentifier(SITE_KEY.encode())
    params = {
        "requestType": "WADO",
        "studyUID": deid.uid(dg.rich.StudyInstanceUID),
        "seriesUID": deid.uid(dg.rich.SeriesInstanceUID),
        "objectUID": deid.uid(dg.rich.SOPInstanceUID),
        "contentType": "application/dicom",
        "anonymize": "yes",
    }
    response = dg.get("/wado", dg.deid, params=params)
    assert response.status_code == 200, response.text
    assert read(response.content).PatientIdentityRemoved == "YES"
    plain = {**params, "studyUID": dg.rich.StudyInstanceUID, "seriesUID": dg.rich.SeriesInstanceUID,
             "objectUID": dg.rich.SOPInstanceUID}  # fmt: skip
    assert dg.get("/wado", dg.plain, params=plain).status_code == 406


def test_a_token_claim_marks_the_principal(dg: DeidGateway, issuer: Issuer) -> None:
    token = bearer(issuer.token(sub="researcher", scope="read", **{DEID_CLAIM: "basic"}))
    (row,) = dg.get("/studies", token).json()
    assert uid_of(row, "0020000D") == Deidentifier(SITE_KEY.encode()).uid(dg.rich.StudyInstanceUID)
    wrong = bearer(issuer.token(sub="researcher", scope="read", **{DEID_CLAIM: "none"}))
    assert dg.get("/studies", wrong).status_code == 401


# -- the DIMSE front door -------------------------------------------------------------------------


def findscu(gw: DimseGateway, aet: str, *keys: str, tmp: Path) -> tuple[list[Dataset], str]:
    """DCMTK's findscu (Study Root) with ``keys``: the response identifiers and its log."""
    out = tmp / f"{aet}-{len(list(tmp.iterdir()))}"
    out.mkdir()
    argv = ["findscu", "-v", "-S", "-aet", aet, "-aec", gw.ae_title, "-X", "-od", str(out), "-to", "20"]
    argv += ["127.0.0.1", str(gw.port)]
    for key in keys:
        argv += ["-k", key]
    done = subprocess.run(argv, capture_output=True, timeout=60, check=False)
    return [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))], (done.stdout + done.stderr).decode()


@pytest.mark.skipif(shutil.which("findscu") is None, reason="DCMTK is not installed (apt-get install dcmtk)")
def test_a_dimse_client_with_deidentify_gets_deidentified_cfind_answers(tmp_path: Path) -> None:
    clients = [client("PLAINSCU", scopes=["read"]), client("DEIDSCU", scopes=["read"], deidentify="basic")]
    with dimse_gateway(tmp_path / "gw", clients=clients, deidentify={"key": SITE_KEY}) as gw:
        rich = rich_dataset()
        gw.stow(to_part10_bytes(rich_dataset()))
        keys = ("QueryRetrieveLevel=STUDY", "StudyInstanceUID", "PatientName", "PatientID", "StudyDate")
        answers = tmp_path / "answers"
        answers.mkdir()
        (plain,), _ = findscu(gw, "PLAINSCU", *keys, tmp=answers)
        assert plain.PatientName == rich.PatientName
        found, log = findscu(gw, "DEIDSCU", *keys, tmp=answers)
        assert len(found) == 1, log
        (deid,) = found
        mapped = Deidentifier(SITE_KEY.encode()).uid(rich.StudyInstanceUID)
        assert deid.StudyInstanceUID == mapped, log
        assert deid.PatientName == ""
        assert deid.StudyDate == ""
        assert deid.PatientID not in ("", rich.PatientID)
        # The de-identified UID finds the study again; the original finds nothing.
        series, log = findscu(gw, "DEIDSCU", "QueryRetrieveLevel=SERIES", f"StudyInstanceUID={mapped}",
                              "SeriesInstanceUID", tmp=answers)  # fmt: skip
        assert [s.SeriesInstanceUID for s in series] == [Deidentifier(SITE_KEY.encode()).uid(rich.SeriesInstanceUID)]
        none, _ = findscu(gw, "DEIDSCU", "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={rich.StudyInstanceUID}",
                          tmp=answers)  # fmt: skip
        assert none == []
        refused, log = findscu(gw, "DEIDSCU", "QueryRetrieveLevel=STUDY", "PatientName=DOE*", tmp=answers)
        assert refused == []
        assert "UnableToProcess" in log, log


@pytest.mark.skipif(shutil.which("getscu") is None, reason="DCMTK is not installed (apt-get install dcmtk)")
def test_a_dimse_client_with_deidentify_gets_deidentified_instances_by_cget(tmp_path: Path) -> None:
    clients = [client("DEIDSCU", scopes=["read"], deidentify="basic")]
    rich = rich_dataset()
    burned = rich_dataset()
    burned.SOPInstanceUID = new_uid("burned", 18)
    burned.BurnedInAnnotation = "YES"
    deid = Deidentifier(SITE_KEY.encode())
    out = tmp_path / "got"
    out.mkdir()
    with dimse_gateway(tmp_path / "gw", clients=clients, deidentify={"key": SITE_KEY}) as gw:
        gw.stow(to_part10_bytes(rich_dataset()), to_part10_bytes(burned))
        argv = ["getscu", "-v", "-S", "-aet", "DEIDSCU", "-aec", gw.ae_title, "-od", str(out), "-to", "30"]
        argv += ["-k", "QueryRetrieveLevel=SERIES", "-k", f"StudyInstanceUID={deid.uid(rich.StudyInstanceUID)}"]
        argv += ["-k", f"SeriesInstanceUID={deid.uid(rich.SeriesInstanceUID)}", "127.0.0.1", str(gw.port)]
        done = subprocess.run(argv, capture_output=True, timeout=120, check=False)
        log = (done.stdout + done.stderr).decode()
        # By the original UIDs, nothing: they name no study for this peer.
        plain = ["getscu", "-S", "-aet", "DEIDSCU", "-aec", gw.ae_title, "-od", str(out), "-to", "30"]
        plain += ["-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={rich.StudyInstanceUID}"]
        subprocess.run([*plain, "127.0.0.1", str(gw.port)], capture_output=True, timeout=120, check=False)
    files = [pydicom.dcmread(p) for p in out.iterdir() if p.is_file()]
    assert len(files) == 1, log  # the burned in instance is withheld
    (got,) = files
    assert got.SOPInstanceUID == deid.uid(rich.SOPInstanceUID)
    assert got.StudyInstanceUID == deid.uid(rich.StudyInstanceUID)
    assert got.PatientName == ""
    assert got.PatientIdentityRemoved == "YES"
    assert got.PixelData == rich.PixelData
    assert not [e for e in got if e.tag.is_private]


def test_the_change_feed_names_replacement_uids(dg: DeidGateway) -> None:
    response = dg.get("/changefeed", dg.deid, params={"limit": "10"})
    assert response.status_code == 200, response.text
    entries = response.json()
    deid = Deidentifier(SITE_KEY.encode())
    assert {e["SopInstanceUid"] for e in entries} == {
        deid.uid(dg.rich.SOPInstanceUID),
        deid.uid(dg.burned.SOPInstanceUID),
    }
    for original in (dg.rich.StudyInstanceUID, dg.rich.SOPInstanceUID, str(dg.rich.PatientName)):
        assert original not in response.text
    by_sop = {e["SopInstanceUid"]: e for e in entries}
    assert by_sop[deid.uid(dg.burned.SOPInstanceUID)]["Metadata"] is None  # withheld
    assert by_sop[deid.uid(dg.rich.SOPInstanceUID)]["Metadata"]["00120062"]["Value"] == ["YES"]


def dciodvfy_errors(path: Path) -> set[str]:
    done = subprocess.run(["dciodvfy", str(path)], capture_output=True, timeout=60, check=False)
    lines = (done.stdout + done.stderr).decode("utf-8", "replace").splitlines()
    return {line.strip() for line in lines if line.startswith("Error")}


@pytest.mark.skipif(
    shutil.which("dciodvfy") is None, reason="dicom3tools is not installed (apt-get install dicom3tools)"
)
@pytest.mark.parametrize(
    "options", [ProfileOptions(), ProfileOptions(modified_dates=True)], ids=["basic", "modified-dates"]
)
def test_dciodvfy_finds_no_new_errors_in_a_deidentified_instance(tmp_path: Path, options: ProfileOptions) -> None:
    original = tmp_path / "original.dcm"
    original.write_bytes(to_part10_bytes(rich_dataset()))
    deidentified_path = tmp_path / "deidentified.dcm"
    deidentified_path.write_bytes(deidentified_part10(original.read_bytes(), Deidentifier(KEY, options)))
    before, after = dciodvfy_errors(original), dciodvfy_errors(deidentified_path)
    assert after <= before, sorted(after - before)


# -- settings and the key -------------------------------------------------------------------------


def test_the_key_file_is_made_once_and_kept(tmp_path: Path) -> None:
    settings = load_settings(environ={}, overrides={"data_dir": tmp_path / "data"})
    first = deidentify_key(settings)
    path = tmp_path / "data" / "deidentify.key"
    assert path.stat().st_mode & 0o777 == 0o600
    assert deidentify_key(settings) == first
    assert len(first) == 32
    configured = load_settings(environ={}, overrides={"data_dir": tmp_path / "data", "deidentify": {"key": "k"}})
    assert deidentify_key(configured) == b"k"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"deidentify": {"retain_full_dates": True, "retain_modified_dates": True}}, "exclude each other"),
        (
            {"scp_port": 11112, "dimse_clients": [{"name": "x", "ae_title": "X", "deidentify": "full"}]},
            "deidentify 'full' is not \"basic\"",
        ),
    ],
)
def test_settings_refuse_what_cannot_be_done(tmp_path: Path, overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        load_settings(environ={}, overrides={"data_dir": tmp_path, **overrides})


def test_apikey_create_refuses_an_unknown_profile(tmp_path: Path) -> None:
    done = apikey_command(
        "create", "x", "--keys-file", str(tmp_path / "keys.json"), "--scope", "read", "--deidentify", "full"
    )
    assert done.returncode != 0
    assert "invalid choice" in done.stderr


@pytest.mark.parametrize(
    "options",
    [ProfileOptions(), ProfileOptions(modified_dates=True, patient_characteristics=True)],
    ids=["basic", "options"],
)
def test_metadata_and_instance_agree(options: ProfileOptions) -> None:
    """What metadata says (DICOM JSON through the profile) is what the rewritten instance holds."""
    deid = Deidentifier(KEY, options)
    from_json = deid.json_dataset(dataset_to_json(rich_dataset(), "bulk"))
    instance = pydicom.dcmread(io.BytesIO(deidentified_part10(to_part10_bytes(rich_dataset()), deid)))
    from_instance = dataset_to_json(instance, "bulk")
    assert from_json.keys() == from_instance.keys()
    for tag, element in from_json.items():
        # Pixel Data's VR is still ambiguous ("OB or OW") in the data set built in memory.
        if "BulkDataURI" not in element and tag != "7FE00010":
            assert element == from_instance[tag], tag


# -- the way back: remembered pairs and the index -------------------------------------------------


@pytest.mark.anyio
async def test_forgotten_replacements_are_found_again_in_the_index(
    index: Index, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pairs beyond MAX_REMEMBERED are forgotten oldest first and found again by hashing the
    index (at most once per RELEARN_SECONDS); a UID never handed out stays unknown."""
    monkeypatch.setattr(views_module, "MAX_REMEMBERED", 2)
    stored = [index_record(1, 1, n) for n in (1, 2, 3)]
    for r in stored:
        await index.add(r)
    views = views_module.DeidentifiedViews(index, lambda: KEY, ProfileOptions())
    replacements = [views.profile.uid(r.sop_uid) for r in stored]  # only the last 2 remembered
    assert await views.original(replacements[0]) == stored[0].sop_uid  # from the index
    assert await views.original(replacements[2]) == stored[2].sop_uid
    assert await views.original(Deidentifier(KEY).uid("1.2.3.4")) == "0.0"  # never stored
    assert await views.original(stored[1].sop_uid) == "0.0"  # an original is no replacement
    # A new instance is found by the next pass, which waits RELEARN_SECONDS after the last one.
    added = index_record(1, 1, 4)
    await index.add(added)
    assert await views.original(Deidentifier(KEY).uid(added.sop_uid)) == "0.0"
    monkeypatch.setattr(views_module, "RELEARN_SECONDS", 0.0)
    assert await views.original(Deidentifier(KEY).uid(added.sop_uid)) == added.sop_uid


@pytest.mark.anyio
async def test_a_dummy_handed_out_by_another_replica_finds_its_patient(
    index: Index, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dummy Patient ID matches on a gateway that never handed it out (another replica, or
    this one after a restart): the index's Patient IDs are hashed to find it, once per
    RELEARN_SECONDS; a value that is no dummy of a stored Patient ID matches nothing."""
    monkeypatch.setattr(views_module, "_PAGE", 2)  # several pages of studies
    stored = [index_record(s, 1, 1, PatientID=f"PID-{s}") for s in range(1, 6)]
    for r in stored:
        await index.add(r)
    shown = views_module.DeidentifiedViews(index, lambda: KEY, ProfileOptions()).profile.pseudonym("PID-4")
    elsewhere = views_module.DeidentifiedViews(index, lambda: KEY, ProfileOptions())

    async def studies(patient_id: str) -> list[str]:
        query = await elsewhere.original_query(parse_qido("study", [("PatientID", patient_id)]))
        return [uid_of(row, "0020000D") for row in (await index.search(query)).rows]

    assert await studies(shown) == [stored[3].study_uid]
    assert await studies("PID-4") == []  # the stored value is no dummy
    assert await studies(Deidentifier(KEY).pseudonym("PID-9")) == []  # no such patient stored
    # A patient stored since is found by the next pass, RELEARN_SECONDS after the last one.
    added = index_record(9, 1, 1, PatientID="PID-9")
    await index.add(added)
    assert await studies(Deidentifier(KEY).pseudonym("PID-9")) == []
    monkeypatch.setattr(views_module, "RELEARN_SECONDS", 0.0)
    assert await studies(Deidentifier(KEY).pseudonym("PID-9")) == [added.study_uid]


def test_a_dummy_patient_id_shown_before_a_restart_finds_the_study_after(
    tmp_path: Path, jwks_server: JwksServer
) -> None:
    keys = tmp_path / "keys.json"
    plain = bearer(create_api_key(keys, "uploader", "read", "write"))
    deid = bearer(create_api_key(keys, "research", "read", deidentify="basic"))
    config = oidc_config(jwks_server.url, keys_file=keys, extra=f'[deidentify]\nkey = "{SITE_KEY}"\n')
    first = start_secured_gateway(tmp_path, config)
    try:
        body, content_type = stow_body([to_part10_bytes(rich_dataset())])
        headers = {**plain, "Content-Type": content_type, "Accept": "application/dicom+json"}
        assert httpx.post(first.url + "/studies", content=body, headers=headers, timeout=60).status_code == 200
        (row,) = httpx.get(first.url + "/studies", headers=deid, timeout=60).json()
        shown, study = uid_of(row, "00100020"), uid_of(row, "0020000D")
        assert shown.startswith("ANON")
    finally:
        stop_gateway(first.gw)
    again = start_secured_gateway(tmp_path, config)
    try:
        # Asked straight away: the restarted gateway has handed out no dummy yet.
        found = httpx.get(again.url + "/studies", headers=deid, params={"PatientID": shown}, timeout=60)
        assert found.status_code == 200, found.text
        assert [uid_of(r, "0020000D") for r in found.json()] == [study]
    finally:
        stop_gateway(again.gw)
