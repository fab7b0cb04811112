"""Text values are bounded wherever they come in (gateway.dicom.textlimits): at ingest through
parse_part10 (STOW, ZIP STOW, PACS cache fill) and in C-FIND responses; and a large QIDO
answer is streamed row by row (gateway.http.qido)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import orjson
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence

from gateway.app import create_app
from gateway.dicom.cfind import response_row
from gateway.dicom.parse import FailureReason, InstanceRejected, ParseLimits, parse_part10
from gateway.http import qido
from gateway.settings import load_settings
from tests import factory
from tests.http_helpers import failure_reasons, stow_body

# Building the oversized values makes pydicom warn, as it should.
pytestmark = pytest.mark.filterwarnings("ignore:.*exceeds the maximum:UserWarning")
IMPLICIT = pydicom.uid.ImplicitVRLittleEndian
BASE = "/dicomweb"


def implicit_ct(**identity: object) -> Dataset:
    return factory.ct_dataset(rows=8, cols=8, **identity)  # type: ignore[arg-type]


def parse(tmp_path: Path, ds: Dataset, *, limits: ParseLimits | None = None) -> None:
    path = factory.write(tmp_path / "x.dcm", factory.to_part10_bytes(ds, IMPLICIT))
    parse_part10(path, origin="stow", limits=limits or ParseLimits())


def refusal(tmp_path: Path, ds: Dataset, **kwargs: object) -> InstanceRejected:
    with pytest.raises(InstanceRejected) as caught:
        parse(tmp_path, ds, **kwargs)  # type: ignore[arg-type]
    return caught.value


def test_a_multi_mebibyte_person_name_is_refused_naming_the_tag(tmp_path: Path) -> None:
    ds = implicit_ct(patient_name="A" * (8 << 20))
    rejected = refusal(tmp_path, ds)
    assert rejected.failure_code == FailureReason.DATA_SET_DOES_NOT_MATCH_SOP_CLASS
    assert "PatientName (0010,0010)" in rejected.reason
    assert "AAAA" not in rejected.reason  # the value itself is never quoted


def test_fixed_maxima_are_tolerant_up_to_four_times(tmp_path: Path) -> None:
    ds = implicit_ct()
    ds.StudyDescription = "S" * 70  # LO over its 64 characters: what sloppy modalities send
    ds.StudyComments = "c" * 10_000  # LT within its 10240
    ds.add_new(0x00204000, "LT", "d" * 40_000)  # ImageComments LT: over, within 4 x 10240 bytes
    ds.OperatorsName = ["OP^" + "x" * 60] * 200  # PN values within bounds, 12.8 KB in all
    parse(tmp_path, ds)
    ds.StudyDescription = "S" * 257
    assert "StudyDescription (0008,1030) LO value of 257 bytes exceeds 256" in refusal(tmp_path, ds).reason


def test_an_element_of_many_values_is_held_to_what_explicit_vr_can_encode(tmp_path: Path) -> None:
    ds = implicit_ct()
    ds.OtherPatientIDs = ["P" * 60] * 2000  # each LO value fine, 122 KB in all: only implicit VR can say so
    rejected = refusal(tmp_path, ds)
    assert "OtherPatientIDs" in rejected.reason
    assert "65535" in rejected.reason


def test_unbounded_text_is_capped_by_the_setting(tmp_path: Path) -> None:
    ds = implicit_ct()
    ds.add_new(0x0040A160, "UT", "t" * (100 << 10))  # TextValue
    rejected = refusal(tmp_path, ds)
    assert rejected.failure_code == FailureReason.OUT_OF_RESOURCES
    assert "TextValue (0040,A160)" in rejected.reason
    assert "limits.max_text_value_bytes" in rejected.reason
    parse(tmp_path, ds, limits=ParseLimits(max_text_value_bytes=1 << 20))


def test_values_inside_sequences_are_bounded_too(tmp_path: Path) -> None:
    ds = implicit_ct()
    item = Dataset()
    item.CodeMeaning = "m" * (2 << 20)  # deferred by the parser: refused by its length alone
    ds.ProcedureCodeSequence = Sequence([item])
    rejected = refusal(tmp_path, ds)
    assert "ProcedureCodeSequence (0008,1032) item 1, CodeMeaning (0008,0104)" in rejected.reason


def test_c_find_values_beyond_the_bounds_are_left_empty_with_a_warning() -> None:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = "1.2.3"
    ds.PatientID = "P1"
    ds.add_new(0x00100010, "PN", "N" * (1 << 20))
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, True
    write_dataset(buffer, ds)
    received = read_dataset(DicomBytesIO(buffer.getvalue()), is_implicit_VR=True, is_little_endian=True)
    notes: list[str] = []
    row = response_row(received, notes)
    assert row["00100010"] == {"vr": "PN"}
    assert row["00100020"]["Value"] == ["P1"]
    assert len(notes) == 1
    assert "PatientName (0010,0010)" in notes[0]


# --- over HTTP, in-process ----------------------------------------------------------------------


@pytest.fixture
async def http(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    settings = load_settings(environ={}, overrides={"data_dir": tmp_path / "data"})
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c,
    ):
        yield c


async def stow(http: httpx.AsyncClient, *instances: bytes) -> httpx.Response:
    body, content_type = stow_body(list(instances))
    return await http.post(f"{BASE}/studies", content=body, headers={"Content-Type": content_type})


@pytest.mark.anyio
async def test_stow_refuses_an_implicit_vr_instance_with_an_8_mib_patient_name(http: httpx.AsyncClient) -> None:
    bad = factory.to_part10_bytes(implicit_ct(seed=1, patient_name="Z" * (8 << 20)), IMPLICIT)
    good = factory.to_part10_bytes(implicit_ct(seed=2), IMPLICIT)
    response = await stow(http, bad, good)
    assert response.status_code == 202  # the good one is stored
    assert failure_reasons(response) == [0xA900]
    assert "PatientName (0010,0010)" in response.headers["warning"]
    studies = await http.get(f"{BASE}/studies")
    assert len(studies.json()) == 1
    assert len(studies.content) < 10_000


@pytest.mark.anyio
async def test_a_large_qido_answer_is_streamed_and_the_same_json(
    http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    instances = [
        factory.to_part10_bytes(implicit_ct(seed=100 + i, study_description=f"STUDY {i} " + "d" * 50), IMPLICIT)
        for i in range(12)
    ]
    assert (await stow(http, *instances)).status_code == 200
    identity = {"Accept-Encoding": "identity"}  # streaming is told by Content-Length of the body as sent
    whole = await http.get(f"{BASE}/studies", params={"limit": 5}, headers=identity)
    assert "content-length" in whole.headers
    monkeypatch.setattr(qido, "STREAM_ROWS", 3)
    monkeypatch.setattr(qido, "_CHUNK", 500)  # several chunks
    streamed = await http.get(f"{BASE}/studies", params={"limit": 5}, headers=identity)
    assert "content-length" not in streamed.headers
    assert streamed.headers["content-type"] == whole.headers["content-type"]
    assert orjson.loads(streamed.content) == orjson.loads(whole.content)
    assert "warning" in streamed.headers  # more results: decided before the body started
    everything = orjson.loads((await http.get(f"{BASE}/studies", params={"includefield": "00081030"})).content)
    assert len(everything) == 12
    assert {row["00081030"]["Value"][0].split()[1] for row in everything} == {str(i) for i in range(12)}


@pytest.mark.anyio
async def test_the_unbounded_text_cap_is_a_setting(tmp_path: Path) -> None:
    ds = implicit_ct(seed=3)
    ds.add_new(0x0040A160, "UT", "t" * (100 << 10))  # TextValue, over the default 64 KiB
    instance = factory.to_part10_bytes(ds, IMPLICIT)
    for cap, status in ((None, 400), (1 << 20, 200)):
        overrides = {"data_dir": tmp_path / f"data-{cap}", "limits": {"max_text_value_bytes": cap} if cap else {}}
        app = create_app(load_settings(environ={}, overrides=overrides))
        transport = httpx.ASGITransport(app=app)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c,
        ):
            response = await stow(c, instance)
        assert response.status_code == status, response.text
        if status == 400:
            assert failure_reasons(response) == [0xA700]
