"""The Index contract (gateway/ports.py), run over every implementation: SQLite
(gateway/adapters/sqlite_index.py) and PostgreSQL (gateway/adapters/postgres_index.py), each test
on a fresh database (SQLite file, PostgreSQL schema); and the QIDO service over it
(gateway/services/qido.py)."""

from __future__ import annotations

import hashlib
from typing import Any

import anyio
import orjson
import pytest
from pydicom.dataset import Dataset

from gateway.dicom.query import parse_qido
from gateway.errors import IndexError_
from gateway.ports import AddOutcome, Index, InstanceRecord, KeepIf, PixelDescription
from gateway.services import qido
from tests.fixtures_index import Backend

CT = "1.2.840.10008.5.1.4.1.1.2"
SR = "1.2.840.10008.5.1.4.1.1.88.11"
ROOT = "1.2.826.0.1.3680043.8.498"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def record(study: int, series: int, sop: int, *, sha: str | None = None, **attrs: Any) -> InstanceRecord:
    """An InstanceRecord whose metadata is the DICOM JSON of a small dataset."""
    ds = Dataset()
    ds.StudyInstanceUID = f"{ROOT}.{study}"
    ds.SeriesInstanceUID = f"{ROOT}.{study}.{series}"
    ds.SOPInstanceUID = f"{ROOT}.{study}.{series}.{sop}"
    ds.SOPClassUID = attrs.pop("SOPClassUID", CT)
    ds.SeriesNumber = series
    ds.InstanceNumber = sop
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    metadata = orjson.dumps(ds.to_json_dict())
    return InstanceRecord(
        study_uid=ds.StudyInstanceUID,
        series_uid=ds.SeriesInstanceUID,
        sop_uid=ds.SOPInstanceUID,
        sop_class_uid=ds.SOPClassUID,
        transfer_syntax="1.2.840.10008.1.2.1",
        size=len(metadata),
        sha256=sha or hashlib.sha256(metadata).hexdigest(),
        origin="stow",
        metadata=metadata,
    )


async def search(idx: Index, level: str, *params: tuple[str, str], **path: str) -> list[dict[str, Any]]:
    result = await idx.search(parse_qido(level, list(params), **path))  # type: ignore[arg-type]
    return result.rows


def values(rows: list[dict[str, Any]], tag: str) -> list[Any]:
    return [row[tag]["Value"][0] if "Value" in row[tag] else None for row in rows]


def study_uids(rows: list[dict[str, Any]]) -> list[str]:
    return [uid.rsplit(".", 1)[1] for uid in values(rows, "0020000D")]


async def add_all(idx: Index, *records: InstanceRecord) -> None:
    for rec in records:
        assert await idx.add(rec) is AddOutcome.INSERTED


# -- add / get / instances ----------------------------------------------------------------------


@pytest.mark.anyio
async def test_add_get_round_trip(index: Index) -> None:
    pixel = PixelDescription(512, 512, 1, 16, 12, 0, "MONOCHROME2", 0, 2)
    rec = record(1, 1, 1, PatientName="A^B")
    rec = InstanceRecord(**{**rec.__dict__, "frames": (((100, 10), (120, 5)), ((200, 7),)), "pixel": pixel})
    assert await index.add(rec) is AddOutcome.INSERTED
    assert await index.get(rec.study_uid, rec.series_uid, rec.sop_uid) == rec
    assert await index.get(None, None, rec.sop_uid) == rec
    assert await index.get(f"{ROOT}.9", None, rec.sop_uid) is None
    assert await index.get(None, f"{ROOT}.1.9", rec.sop_uid) is None
    assert await index.get(None, None, f"{ROOT}.9.9.9") is None


@pytest.mark.anyio
async def test_identical_and_conflict(index: Index) -> None:
    rec = record(1, 1, 1, PatientName="A^B")
    assert await index.add(rec) is AddOutcome.INSERTED
    assert await index.add(rec) is AddOutcome.IDENTICAL
    other = record(1, 1, 1, PatientName="Other^Name")
    assert await index.add(other) is AddOutcome.CONFLICT
    assert await index.get(None, None, rec.sop_uid) == rec  # nothing changed
    rows = await search(index, "study")
    assert values(rows, "00201208") == [1]


@pytest.mark.anyio
async def test_concurrent_adds_leave_one_row(index: Index) -> None:
    rec = record(1, 1, 1)
    outcomes: list[AddOutcome] = []

    async def add() -> None:
        outcomes.append(await index.add(rec))

    async with anyio.create_task_group() as tg:
        for _ in range(16):
            tg.start_soon(add)
    assert sorted(o.value for o in outcomes) == ["identical"] * 15 + ["inserted"]
    assert len(await index.instances(rec.study_uid)) == 1
    rows = await search(index, "study")
    assert (values(rows, "00201206"), values(rows, "00201208")) == ([1], [1])


@pytest.mark.anyio
async def test_concurrent_adds_through_two_connections(index: Index, backend: Backend) -> None:
    # Another index object on the same database stands for another process or replica: the
    # check-then-insert is atomic across connections too (SQLite: BEGIN IMMEDIATE; PostgreSQL:
    # unique indexes and ON CONFLICT).
    other = backend.open()
    recs = [record(1, 1, n) for n in range(8)]
    outcomes: list[AddOutcome] = []

    async def add(idx: Index, rec: InstanceRecord) -> None:
        outcomes.append(await idx.add(rec))

    async with anyio.create_task_group() as tg:
        for rec in recs:
            for idx in (index, other, index, other):
                tg.start_soon(add, idx, rec)
    await other.aclose()
    assert outcomes.count(AddOutcome.INSERTED) == 8
    assert outcomes.count(AddOutcome.IDENTICAL) == 24
    (row,) = await search(index, "study")
    assert (values([row], "00201206"), values([row], "00201208")) == ([1], [8])


@pytest.mark.anyio
async def test_a_study_keeps_its_patient(index: Index) -> None:
    # A "relational mismatch": the study's PatientID decides who may see it (study restrictions).
    first = record(1, 1, 1, PatientID="P1", IssuerOfPatientID="H1")
    assert await index.add(first) is AddOutcome.INSERTED
    for other in (
        record(1, 1, 2, PatientID="P2", IssuerOfPatientID="H1"),
        record(1, 2, 3, PatientID="P1", IssuerOfPatientID="H2"),
        record(1, 1, 4, PatientID="P1"),
        record(1, 1, 5),
    ):
        assert await index.add(other) is AddOutcome.PATIENT_MISMATCH
    # Padding is not significant (PS3.5 6.2); nothing of the refused instances was kept.
    assert await index.add(record(1, 2, 6, PatientID="P1 ", IssuerOfPatientID="H1")) is AddOutcome.INSERTED
    assert sorted(r.sop_uid for r in await index.instances(first.study_uid)) == [f"{ROOT}.1.1.1", f"{ROOT}.1.2.6"]
    (row,) = await search(index, "study")
    assert (values([row], "00201206"), values([row], "00201208"), values([row], "00100020")) == ([2], [2], ["P1"])


@pytest.mark.anyio
async def test_concurrent_first_instances_of_two_patients_leave_one(index: Index, backend: Backend) -> None:
    # Two writers (replicas) create the same study at once for different patients: one wins,
    # the other is refused, never a study holding both.
    other = backend.open()
    outcomes: dict[str, list[AddOutcome]] = {"P1": [], "P2": []}

    async def add(idx: Index, patient: str, n: int) -> None:
        outcomes[patient].append(await idx.add(record(1, 1, n, PatientID=patient)))

    async with anyio.create_task_group() as tg:
        for n in range(1, 9):
            tg.start_soon(add, index if n % 2 else other, "P1" if n % 2 else "P2", n)
    await other.aclose()
    (row,) = await search(index, "study")
    winner = values([row], "00100020")[0]
    loser = "P2" if winner == "P1" else "P1"
    assert set(outcomes[winner]) == {AddOutcome.INSERTED}
    assert set(outcomes[loser]) == {AddOutcome.PATIENT_MISMATCH}
    assert len(await index.instances(row["0020000D"]["Value"][0])) == 4


@pytest.mark.anyio
async def test_concurrent_adds_of_many_series_through_two_connections(index: Index, backend: Backend) -> None:
    # New series of one study from both sides at once: the study's counters stay exact.
    other = backend.open()
    recs = [record(1, series, n) for series in range(1, 5) for n in range(1, 4)]
    async with anyio.create_task_group() as tg:
        for n, rec in enumerate(recs):
            tg.start_soon((index if n % 2 else other).add, rec)
    await other.aclose()
    (row,) = await search(index, "study")
    assert (values([row], "00201206"), values([row], "00201208")) == ([4], [12])
    assert values(await search(index, "series"), "00201209") == [3, 3, 3, 3]


@pytest.mark.anyio
async def test_concurrent_adds_are_answered_each_on_its_own(index: Index) -> None:
    # Adds arriving together (one STOW's parts, concurrent requests) are each answered for
    # themselves, and a refused one takes nothing of the others with it.
    assert await index.add(record(1, 1, 1, PatientID="P1")) is AddOutcome.INSERTED
    expected = {record(1, 1, n, PatientID="P1"): AddOutcome.INSERTED for n in range(2, 10)}
    expected[record(1, 1, 1, PatientID="P1", sha="0" * 64)] = AddOutcome.CONFLICT
    expected[record(1, 2, 20, PatientID="P2")] = AddOutcome.PATIENT_MISMATCH
    expected[record(2, 1, 1, PatientID="P3")] = AddOutcome.INSERTED
    outcomes: dict[InstanceRecord, AddOutcome] = {}

    async def add(rec: InstanceRecord) -> None:
        outcomes[rec] = await index.add(rec)

    async with anyio.create_task_group() as tg:
        for rec in expected:
            tg.start_soon(add, rec)
    assert outcomes == expected
    assert len(await index.instances(f"{ROOT}.1")) == 9
    assert [r.sop_uid for r in await index.instances(f"{ROOT}.2")] == [f"{ROOT}.2.1.1"]
    rows = {row["0020000D"]["Value"][0]: row for row in await search(index, "study")}
    assert (values([rows[f"{ROOT}.1"]], "00201206"), values([rows[f"{ROOT}.1"]], "00201208")) == ([1], [9])


@pytest.mark.anyio
async def test_first_use_by_several_openers_migrates_once(backend: Backend) -> None:
    # Replicas starting together on an empty database all find one schema.
    indexes = [backend.open() for _ in range(4)]
    async with anyio.create_task_group() as tg:
        for idx in indexes:
            tg.start_soon(idx.ping)
    await indexes[0].add(record(1, 1, 1))
    for idx in indexes:
        assert len(await idx.instances(f"{ROOT}.1")) == 1
        await idx.aclose()


@pytest.mark.anyio
async def test_instances_are_ordered_by_series_and_instance_number(index: Index) -> None:
    await add_all(index, record(1, 2, 1), record(1, 1, 10), record(1, 1, 2), record(1, 2, 3), record(2, 1, 1))
    in_study = await index.instances(f"{ROOT}.1")
    assert [r.sop_uid.removeprefix(f"{ROOT}.1.") for r in in_study] == ["1.2", "1.10", "2.1", "2.3"]
    in_series = await index.instances(f"{ROOT}.1", f"{ROOT}.1.2")
    assert [r.sop_uid for r in in_series] == [f"{ROOT}.1.2.1", f"{ROOT}.1.2.3"]
    assert await index.instances(f"{ROOT}.9") == []


async def remove(index: Index, study: str, series: str, sop: str) -> None:
    """What the gateway does to drop an instance (undo, repair, cache expiry): a removal."""
    token = await index.begin_removal(study, series, sop, keep_if=KeepIf.NEVER)
    assert token is not None
    await index.end_removal(sop, token)


@pytest.mark.anyio
async def test_removal_maintains_counts_and_removes_empty_parents(index: Index) -> None:
    await add_all(index, record(1, 1, 1, Modality="CT"), record(1, 1, 2, Modality="CT"), record(1, 2, 1, Modality="MR"))
    await remove(index, f"{ROOT}.1", f"{ROOT}.1.2", f"{ROOT}.1.2.1")
    rows = await search(index, "study")
    assert (values(rows, "00201206"), values(rows, "00201208")) == ([1], [2])
    assert rows[0]["00080061"]["Value"] == ["CT"]
    await remove(index, f"{ROOT}.1", f"{ROOT}.1.1", f"{ROOT}.1.1.9")  # absent: no error
    await remove(index, f"{ROOT}.1", f"{ROOT}.1.1", f"{ROOT}.1.1.1")
    await remove(index, f"{ROOT}.1", f"{ROOT}.1.1", f"{ROOT}.1.1.2")
    assert await search(index, "study") == []
    assert await search(index, "series") == []


@pytest.mark.anyio
async def test_clear_ping_and_persistence(backend: Backend) -> None:
    first = backend.open()
    await first.ping()
    await first.add(record(1, 1, 1))
    await first.aclose()
    with pytest.raises(IndexError_):
        await first.ping()
    second = backend.open()
    assert len(await second.instances(f"{ROOT}.1")) == 1
    await second.clear()
    assert await second.instances(f"{ROOT}.1") == []
    assert await search(second, "study") == []
    await second.add(record(1, 1, 1))  # counters start again from zero
    assert values(await search(second, "study"), "00201208") == [1]
    await second.aclose()
    backend.set_schema_version(99)
    newer = backend.open()
    with pytest.raises(IndexError_, match="newer"):
        await newer.ping()
    await newer.aclose()


# -- matching -----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_person_names(index: Index) -> None:
    await add_all(
        index,
        record(1, 1, 1, PatientName="Smith^John"),
        record(2, 1, 1, PatientName="Müller^Hans^^"),
        record(3, 1, 1, PatientName="SMITHERS^Waylon"),
        record(4, 1, 1),
    )

    async def names(*params: tuple[str, str]) -> list[str]:
        return sorted(study_uids(await search(index, "study", *params)))

    assert await names(("PatientName", "smith^john")) == ["1"]  # case-insensitive always
    assert await names(("PatientName", "müller^hans")) == ["2"]  # trailing ^ insignificant
    assert await names(("PatientName", "muller^hans")) == []  # accents matter without fuzzy
    assert await names(("PatientName", "smith*")) == ["1", "3"]
    assert await names(("PatientName", "*th*")) == ["1", "3"]
    assert await names(("PatientName", "sm?th^*")) == ["1"]
    assert await names(("PatientName", "smi")) == []
    fuzzy = ("fuzzymatching", "true")
    assert await names(("PatientName", "smi"), fuzzy) == ["1", "3"]
    assert await names(("PatientName", "john"), fuzzy) == ["1"]
    assert await names(("PatientName", "John Smith"), fuzzy) == ["1"]
    assert await names(("PatientName", "MULLER"), fuzzy) == ["2"]
    assert await names(("PatientName", "hans^mül"), fuzzy) == ["2"]
    assert await names(("PatientName", "ith"), fuzzy) == []  # prefixes, not substrings
    assert await names(("PatientName", "")) == ["1", "2", "3", "4"]


@pytest.mark.anyio
async def test_wildcards_and_literal_special_characters(index: Index) -> None:
    await add_all(
        index,
        record(1, 1, 1, PatientID="12345", AccessionNumber="ABC"),
        record(2, 1, 1, PatientID="12%", AccessionNumber="A_C"),
        record(3, 1, 1, PatientID="1[2]", AccessionNumber="a*c"),
    )

    async def match(key: str, value: str) -> list[str]:
        return sorted(study_uids(await search(index, "study", (key, value))))

    assert await match("PatientID", "12%") == ["2"]
    assert await match("PatientID", "12%*") == ["2"]
    assert await match("AccessionNumber", "A_C") == ["2"]
    assert await match("AccessionNumber", "A?C") == ["1", "2"]
    assert await match("AccessionNumber", "abc") == []  # case-sensitive outside PN
    assert await match("PatientID", "1[2]") == ["3"]
    assert await match("PatientID", "1[*") == ["3"]
    assert await match("PatientID", "1*") == ["1", "2", "3"]
    assert await match("PatientID", "?2*") == ["1", "2"]


@pytest.mark.anyio
async def test_dates_and_times(index: Index) -> None:
    await add_all(
        index,
        record(1, 1, 1, StudyDate="20240101", StudyTime="080000"),
        record(2, 1, 1, StudyDate="20240115", StudyTime="103000.25"),
        record(3, 1, 1, StudyDate="20240201", StudyTime="1200"),
        record(4, 1, 1),
    )

    async def match(key: str, value: str) -> list[str]:
        return sorted(study_uids(await search(index, "study", (key, value))))

    assert await match("StudyDate", "20240115") == ["2"]
    assert await match("StudyDate", "20240101-20240131") == ["1", "2"]
    assert await match("StudyDate", "20240110-") == ["2", "3"]
    assert await match("StudyDate", "-20240115") == ["1", "2"]
    assert await match("StudyTime", "1030") == ["2"]
    assert await match("StudyTime", "0800-1030") == ["1", "2"]
    assert await match("StudyTime", "1031-") == ["3"]
    assert await match("StudyTime", "-11") == ["1", "2"]
    assert await match("00080030", "12") == ["3"]


@pytest.mark.anyio
async def test_uid_lists_and_modalities_in_study(index: Index) -> None:
    await add_all(
        index,
        record(1, 1, 1, Modality="CT"),
        record(1, 2, 1, Modality="PT"),
        record(2, 1, 1, Modality="MR"),
        record(3, 1, 1, Modality="SR", SOPClassUID=SR),
    )
    rows = await search(index, "study", ("StudyInstanceUID", f"{ROOT}.1,{ROOT}.3,{ROOT}.77"))
    assert sorted(study_uids(rows)) == ["1", "3"]
    rows = await search(index, "study", ("0020000D", f"{ROOT}.2\\{ROOT}.3"))
    assert sorted(study_uids(rows)) == ["2", "3"]
    rows = await search(index, "study", ("ModalitiesInStudy", "PT"))
    assert study_uids(rows) == ["1"]
    assert rows[0]["00080061"] == {"vr": "CS", "Value": ["CT", "PT"]}
    assert sorted(study_uids(await search(index, "study", ("ModalitiesInStudy", "CT\\MR")))) == ["1", "2"]
    assert sorted(study_uids(await search(index, "study", ("ModalitiesInStudy", "?R")))) == ["2", "3"]
    rows = await search(index, "instance", ("SOPClassUID", SR))
    assert values(rows, "00080018") == [f"{ROOT}.3.1.1"]


@pytest.mark.anyio
async def test_unindexed_keys_match_the_stored_json(index: Index) -> None:
    await add_all(
        index,
        record(1, 1, 1, ReferringPhysicianName="Welby^Marcus", Rows=512, AcquisitionDate="20240101"),
        record(1, 1, 2, Rows=256, AcquisitionDate="20240301", ImageType=["ORIGINAL", "PRIMARY", "AXIAL"]),
        record(2, 1, 1, ReferringPhysicianName="House^Gregory", InstitutionName="General"),
    )
    rows = await search(index, "study", ("ReferringPhysicianName", "WELBY^marcus"))
    assert study_uids(rows) == ["1"]
    rows = await search(index, "study", ("ReferringPhysicianName", "gre"), ("fuzzymatching", "true"))
    assert study_uids(rows) == ["2"]
    assert study_uids(await search(index, "study", ("InstitutionName", "Gen*"))) == ["2"]
    study = f"{ROOT}.1"
    rows = await search(index, "instance", ("Rows", "256"), study=study)
    assert values(rows, "00280010") == [256]
    rows = await search(index, "instance", ("AcquisitionDate", "20240201-"), study=study)
    assert values(rows, "00200013") == [2]
    rows = await search(index, "instance", ("ImageType", "AXIAL"), study=study)  # any value of a multi-valued CS
    assert values(rows, "00200013") == [2]


@pytest.mark.anyio
async def test_unindexed_names_fold_like_python(index: Index) -> None:
    # Case folding is Python's str.casefold in both databases (ß = ss), not the database's own.
    await add_all(
        index,
        record(1, 1, 1, ReferringPhysicianName="Straße^Jürgen", PerformingPhysicianName="Ørsted^Åse"),
        record(2, 1, 1, ReferringPhysicianName="Strasse^Jurgen"),
    )
    rows = await search(index, "study", ("ReferringPhysicianName", "STRASSE^JÜRGEN"))
    assert study_uids(rows) == ["1"]
    rows = await search(index, "study", ("ReferringPhysicianName", "strasse jurgen"), ("fuzzymatching", "true"))
    assert sorted(study_uids(rows)) == ["1", "2"]
    rows = await search(index, "series", ("PerformingPhysicianName", "ørsted*"))
    assert study_uids(rows) == ["1"]


@pytest.mark.anyio
async def test_nul_padded_strings_are_indexed(index: Index) -> None:
    # Some writers pad strings with NULs; the index takes them (PostgreSQL text cannot hold NUL).
    rec = record(1, 1, 1, PatientID="P1\x00", StudyDescription="Head\x00", ImageComments="note\x00")
    assert await index.add(rec) is AddOutcome.INSERTED
    assert await index.get(None, None, rec.sop_uid) == rec  # the metadata bytes are kept exactly
    assert len(await search(index, "study", ("PatientID", "P1*"))) == 1
    rows = await search(index, "instance", ("ImageComments", "note*"), study=f"{ROOT}.1")
    assert len(rows) == 1


# -- return keys, counts, paging ----------------------------------------------------------------


@pytest.mark.anyio
async def test_study_rows_counts_and_includefield(index: Index) -> None:
    await add_all(
        index,
        record(1, 1, 1, Modality="CT", StudyDescription="Head", PatientName="A^B", ProtocolName="P"),
        record(1, 1, 2, Modality="CT"),
        record(1, 2, 1, Modality="SR"),
    )
    (row,) = await search(index, "study")
    assert row["00201206"] == {"vr": "IS", "Value": [2]}
    assert row["00201208"] == {"vr": "IS", "Value": [3]}
    assert row["00080056"] == {"vr": "CS", "Value": ["ONLINE"]}
    assert row["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "A^B"}]}
    assert row["00080050"] == {"vr": "SH"}  # required, absent
    assert "00081030" not in row
    (row,) = await search(index, "study", ("includefield", "00081030,00080060"))
    assert row["00081030"]["Value"] == ["Head"]
    assert "00080060" not in row  # a series attribute: not part of a study row
    (row,) = await search(index, "study", ("includefield", "all"))
    assert row["00081030"]["Value"] == ["Head"]
    assert "00181030" not in row  # ProtocolName is series-level
    series = await search(index, "series", study=f"{ROOT}.1")
    assert values(series, "00201209") == [2, 1]
    assert values(series, "00080060") == ["CT", "SR"]
    assert "00100010" not in series[0]
    spanning = await search(index, "series", ("PatientName", "a^b"))
    assert values(spanning, "00201208") == [3, 3]  # study keys are returned when /series spans studies


@pytest.mark.anyio
async def test_instance_include_all_is_the_whole_metadata(index: Index) -> None:
    rec = record(1, 1, 1, Rows=2, Columns=2, PatientName="A^B", WindowCenter="40")
    await add_all(index, rec)
    (row,) = await search(index, "instance", ("includefield", "all"), study=f"{ROOT}.1")
    stored = orjson.loads(rec.metadata)
    assert {tag: row[tag] for tag in stored} == stored
    assert row["00201209"]["Value"] == [1]  # the series is open in the path: its counts come along
    (row,) = await search(index, "instance", study=f"{ROOT}.1", series=f"{ROOT}.1.1")
    assert row["00280010"]["Value"] == [2]
    assert "00281050" not in row  # WindowCenter only with includefield


@pytest.mark.anyio
async def test_limit_offset_and_more(index: Index) -> None:
    await add_all(index, *(record(n, 1, 1, StudyDate=f"202401{n:02d}") for n in range(1, 8)))
    rows = await search(index, "study")
    assert study_uids(rows) == ["7", "6", "5", "4", "3", "2", "1"]  # newest first
    page = await index.search(parse_qido("study", [("limit", "3"), ("offset", "2")]))
    assert (study_uids(page.rows), page.more) == (["5", "4", "3"], True)
    page = await index.search(parse_qido("study", [("limit", "3"), ("offset", "4")]))
    assert (study_uids(page.rows), page.more) == (["3", "2", "1"], False)
    page = await index.search(parse_qido("study", [("offset", "10")]))
    assert (page.rows, page.more) == ([], False)


@pytest.mark.anyio
async def test_max_results_caps_the_limit(backend: Backend) -> None:
    idx = backend.open(max_results=2)
    await add_all(idx, *(record(n, 1, 1) for n in range(3)))
    for params in ([], [("limit", "100")]):
        page = await idx.search(parse_qido("study", params))
        assert (len(page.rows), page.more) == (2, True)
    await idx.aclose()


@pytest.mark.anyio
async def test_series_and_instance_scoping(index: Index) -> None:
    await add_all(
        index,
        record(1, 1, 1, Modality="CT"),
        record(1, 1, 2, Modality="CT"),
        record(1, 2, 1, Modality="MR"),
        record(2, 1, 1, Modality="CT"),
    )
    assert len(await search(index, "series")) == 3
    assert len(await search(index, "series", ("Modality", "CT"))) == 2
    assert len(await search(index, "series", ("Modality", "CT"), study=f"{ROOT}.1")) == 1
    assert len(await search(index, "series", study=f"{ROOT}.9")) == 0
    assert len(await search(index, "instance")) == 4
    assert len(await search(index, "instance", study=f"{ROOT}.1")) == 3
    assert len(await search(index, "instance", ("Modality", "MR"), study=f"{ROOT}.1")) == 1
    rows = await search(index, "instance", study=f"{ROOT}.1", series=f"{ROOT}.1.1")
    assert values(rows, "00200013") == [1, 2]
    assert len(await search(index, "instance", ("InstanceNumber", "2"))) == 1
    assert len(await search(index, "series", ("SeriesNumber", "2"))) == 1


# -- the QIDO service ---------------------------------------------------------------------------


@pytest.mark.anyio
async def test_service_adds_retrieve_urls(index: Index) -> None:
    await add_all(index, record(1, 1, 1))
    base = "https://example.org/dicomweb/"
    study, series, sop = f"{ROOT}.1", f"{ROOT}.1.1", f"{ROOT}.1.1.1"
    for level, url in (
        ("study", f"https://example.org/dicomweb/studies/{study}"),
        ("series", f"https://example.org/dicomweb/studies/{study}/series/{series}"),
        ("instance", f"https://example.org/dicomweb/studies/{study}/series/{series}/instances/{sop}"),
    ):
        result = await qido.search(index, parse_qido(level, []), base_url=base)  # type: ignore[arg-type]
        assert result.rows[0]["00081190"] == {"vr": "UR", "Value": [url]}
        assert list(result.rows[0]) == sorted(result.rows[0])


@pytest.mark.anyio
async def test_service_makes_bulk_data_uris_absolute(index: Index) -> None:
    rec = record(1, 1, 1)
    meta = orjson.loads(rec.metadata)
    meta["00281201"] = {"vr": "OW", "BulkDataURI": "studies/1/series/2/instances/3/bulkdata/00281201"}
    meta["00089215"] = {"vr": "SQ", "Value": [{"00660023": {"vr": "OF", "BulkDataURI": "studies/x/bulkdata/1"}}]}
    rec = InstanceRecord(**{**rec.__dict__, "metadata": orjson.dumps(meta)})
    await add_all(index, rec)
    query = parse_qido("instance", [("includefield", "all")])
    (row,) = (await qido.search(index, query, base_url="http://h/dicomweb")).rows
    assert row["00281201"]["BulkDataURI"] == "http://h/dicomweb/studies/1/series/2/instances/3/bulkdata/00281201"
    assert row["00089215"]["Value"][0]["00660023"]["BulkDataURI"] == "http://h/dicomweb/studies/x/bulkdata/1"


# -- listing and membership (reindex --repair) ----------------------------------------------------


@pytest.mark.anyio
async def test_instance_keys_pages_through_every_row(index: Index) -> None:
    records = [record(study, series, sop) for study in (1, 2) for series in (1, 2) for sop in (1, 2, 3)]
    await add_all(index, *records)
    expected = sorted(((r.study_uid, r.series_uid, r.sop_uid) for r in records), key=lambda key: key[2])
    for page_size in (1, 5, 12, 1000):
        assert [key async for key in index.instance_keys(page_size=page_size)] == expected
    gone = records[4]
    await remove(index, gone.study_uid, gone.series_uid, gone.sop_uid)
    assert [key async for key in index.instance_keys(page_size=5)] == [
        key for key in expected if key[2] != gone.sop_uid
    ]


@pytest.mark.anyio
async def test_instance_keys_of_an_empty_index(index: Index) -> None:
    assert [key async for key in index.instance_keys()] == []


@pytest.mark.anyio
async def test_indexed_needs_study_series_and_sop_to_match(index: Index) -> None:
    rec = record(1, 1, 1)
    await add_all(index, rec, record(1, 2, 5))
    key = (rec.study_uid, rec.series_uid, rec.sop_uid)
    elsewhere = (rec.study_uid, f"{ROOT}.1.9", rec.sop_uid)  # an object of this SOP under another series
    absent = (rec.study_uid, rec.series_uid, f"{ROOT}.1.1.99")
    assert await index.indexed([key, elsewhere, absent]) == {key}
    assert await index.indexed([]) == set()
    # More keys than one query checks: batches, with the hits in the last one.
    many = [(f"{ROOT}.7", f"{ROOT}.7.1", f"{ROOT}.7.1.{n}") for n in range(1, 1201)]
    assert await index.indexed([*many, key]) == {key}
