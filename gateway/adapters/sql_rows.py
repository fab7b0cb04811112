"""InstanceRecord ↔ table rows, shared by the SQLite and PostgreSQL indexes.

Both keep the same columns: the indexed attributes (:data:`gateway.adapters.sql_search.COLUMNS`)
per level, ``attrs`` (a level's attributes as DICOM JSON text), and for instances what the record
holds (frames and pixel description as JSON text, metadata as the DICOM JSON bytes unchanged).
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from typing import Any, Self

import orjson

from gateway.adapters.sql_search import column_values
from gateway.dicom.attributes import SERIES_INSTANCE_UID, SERIES_TAGS, STUDY_INSTANCE_UID, STUDY_TAGS
from gateway.dicom.dicomjson import str_value
from gateway.ports import InstanceKey, InstanceRecord, PixelDescription

# The columns :func:`record_from_row` takes, in order (``i`` is the instances table).
RECORD_COLUMNS = (
    "i.study_uid, i.series_uid, i.sop_uid, i.sop_class_uid, i.transfer_syntax, i.size, i.sha256,"
    " i.origin, i.metadata, i.frames, i.pixel, i.stored_at, i.shared, i.version"
)


@dataclasses.dataclass(frozen=True)
class IndexRow:
    """An InstanceRecord with everything the three tables need, derived from its metadata.
    ``meta`` is the decoded metadata (for adapters that derive more columns)."""

    record: InstanceRecord
    meta: dict[str, Any]
    study: dict[str, object]
    series: dict[str, object]
    instance: dict[str, object]

    @classmethod
    def from_record(cls, record: InstanceRecord) -> Self:
        meta = decode_metadata(record)
        return cls(
            record=record,
            meta=meta,
            study=study_values(record, meta),
            series=series_values(record, meta),
            instance=instance_values(record, meta),
        )

    @property
    def patient(self) -> tuple[str, str]:
        """(PatientID, IssuerOfPatientID) of the instance, "" for either when absent."""
        return patient_identity(self.meta)


# PatientID and IssuerOfPatientID (PS3.3 C.7.1.1): together they name the patient.
_PATIENT_ID, _ISSUER_OF_PATIENT_ID = "00100020", "00100021"


def patient_identity(attrs: dict[str, Any]) -> tuple[str, str]:
    """(PatientID, IssuerOfPatientID) of DICOM JSON attributes (a study's ``attrs``, an
    instance's metadata), "" for either when absent or empty.

    The index refuses an instance whose identity differs from its study's (AddOutcome
    .PATIENT_MISMATCH): who may see a study is decided by its PatientID."""
    return (_significant(str_value(attrs, _PATIENT_ID)), _significant(str_value(attrs, _ISSUER_OF_PATIENT_ID)))


def _significant(value: str | None) -> str:
    # Leading and trailing spaces and NUL padding are not significant in LO (PS3.5 6.2), and
    # PostgreSQL's text cannot hold NUL (the stored copy lost it).
    return (value or "").replace("\x00", "").strip()


def decode_metadata(record: InstanceRecord) -> dict[str, Any]:
    meta = orjson.loads(record.metadata)
    if not isinstance(meta, dict):
        raise ValueError("InstanceRecord.metadata must be one DICOM JSON object")
    return meta


def study_values(record: InstanceRecord, meta: dict[str, Any]) -> dict[str, object]:
    """The ``studies`` row (without counters) of an instance's study."""
    attrs = {t: e for t, e in meta.items() if t in STUDY_TAGS}
    attrs[STUDY_INSTANCE_UID] = {"vr": "UI", "Value": [record.study_uid]}
    return {"study_uid": record.study_uid, **column_values("study", meta), "attrs": _text(attrs)}


def series_values(record: InstanceRecord, meta: dict[str, Any]) -> dict[str, object]:
    """The ``series`` row (without counter) of an instance's series."""
    attrs = {t: e for t, e in meta.items() if t in SERIES_TAGS}
    attrs[SERIES_INSTANCE_UID] = {"vr": "UI", "Value": [record.series_uid]}
    return {
        "study_uid": record.study_uid,
        "series_uid": record.series_uid,
        **column_values("series", meta),
        "attrs": _text(attrs),
    }


def instance_values(record: InstanceRecord, meta: dict[str, Any]) -> dict[str, object]:
    """The ``instances`` row of an instance."""
    # orjson writes a dataclass as dataclasses.asdict would, only faster.
    pixel = None if record.pixel is None else orjson.dumps(record.pixel).decode()
    return {
        "sop_uid": record.sop_uid,
        "study_uid": record.study_uid,
        "series_uid": record.series_uid,
        **column_values("instance", meta),
        # The record's own SOP Class UID wins over the metadata's copy.
        "sop_class_uid": record.sop_class_uid,
        "transfer_syntax": record.transfer_syntax,
        "size": record.size,
        "sha256": record.sha256,
        "origin": record.origin,
        "stored_at": record.stored_at,
        "frames": orjson.dumps(record.frames).decode(),
        "pixel": pixel,
        "metadata": record.metadata,
        "version": record.version,
    }


def record_from_row(row: tuple[Any, ...]) -> InstanceRecord:
    """The InstanceRecord of one row of :data:`RECORD_COLUMNS`."""
    study, series, sop, sop_class, syntax, size, sha256, origin, metadata, frames, pixel, stored_at, shared, version = (
        row
    )
    return InstanceRecord(
        study_uid=study,
        series_uid=series,
        sop_uid=sop,
        sop_class_uid=sop_class,
        transfer_syntax=syntax,
        size=size,
        sha256=sha256,
        origin=origin,
        metadata=bytes(metadata),
        frames=tuple(tuple((int(o), int(n)) for o, n in frame) for frame in orjson.loads(frames)),
        pixel=None if pixel is None else PixelDescription(**orjson.loads(pixel)),
        stored_at=stored_at,
        shared=bool(shared),
        version=version,
    )


def _text(attrs: dict[str, Any]) -> str:
    return orjson.dumps(attrs).decode()


def instance_sql(placeholder: str, study: str | None, series: str | None, sop: str) -> tuple[str, list[object]]:
    """SELECT of one instance; ``study``/``series`` None match any (``?`` or ``%s`` placeholders)."""
    sql = f"SELECT {RECORD_COLUMNS} FROM instances AS i WHERE i.sop_uid = {placeholder}"
    params: list[object] = [sop]
    if study is not None:
        sql += f" AND i.study_uid = {placeholder}"
        params.append(study)
    if series is not None:
        sql += f" AND i.series_uid = {placeholder}"
        params.append(series)
    return sql, params


def instances_sql(placeholder: str, study: str, series: str | None) -> tuple[str, list[object]]:
    """SELECT of a study's or series' instances, by series then instance number (NULLs first,
    SQLite's default, spelled out so PostgreSQL orders the same)."""
    sql = (
        f"SELECT {RECORD_COLUMNS} FROM instances AS i"
        " JOIN series AS se ON se.study_uid = i.study_uid AND se.series_uid = i.series_uid"
        f" WHERE i.study_uid = {placeholder}"
    )
    params: list[object] = [study]
    if series is not None:
        sql += f" AND i.series_uid = {placeholder}"
        params.append(series)
    sql += " ORDER BY se.series_number NULLS FIRST, i.series_uid, i.instance_number NULLS FIRST, i.sop_uid"
    return sql, params


# Runs one SELECT with parameters and returns its rows (each adapter's own connection handling).
Fetch = Callable[[str, list[object]], Awaitable[list[tuple[Any, ...]]]]
# Instances whose membership one query checks: far below every driver's parameter limit.
MEMBERSHIP_BATCH = 500


async def iter_instance_keys(fetch: Fetch, placeholder: str, page_size: int) -> AsyncIterator[InstanceKey]:
    """Every indexed instance in SOP Instance UID order, one page per query (keyset pagination:
    each page is one range scan of the primary key however deep, and no query stays open)."""
    after: str | None = None
    while True:
        if after is None:
            sql = f"SELECT study_uid, series_uid, sop_uid FROM instances ORDER BY sop_uid LIMIT {placeholder}"
            rows = await fetch(sql, [page_size])
        else:
            sql = (
                "SELECT study_uid, series_uid, sop_uid FROM instances"
                f" WHERE sop_uid > {placeholder} ORDER BY sop_uid LIMIT {placeholder}"
            )
            rows = await fetch(sql, [after, page_size])
        for study, series, sop in rows:
            yield study, series, sop
        if len(rows) < page_size:
            return
        after = rows[-1][2]


async def find_indexed(fetch: Fetch, placeholder: str, keys: Collection[InstanceKey]) -> set[InstanceKey]:
    """Those of ``keys`` indexed under exactly their study and series (by SOP Instance UID in
    batches, then compared whole: an instance indexed elsewhere is not the one asked for)."""
    wanted = set(keys)
    sops = sorted({sop for _, _, sop in wanted})
    found: set[InstanceKey] = set()
    for start in range(0, len(sops), MEMBERSHIP_BATCH):
        batch: list[object] = list(sops[start : start + MEMBERSHIP_BATCH])
        marks = ", ".join([placeholder] * len(batch))
        rows = await fetch(f"SELECT study_uid, series_uid, sop_uid FROM instances WHERE sop_uid IN ({marks})", batch)
        found.update((study, series, sop) for study, series, sop in rows)
    return found & wanted
