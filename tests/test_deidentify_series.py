"""De-identified metadata answers (issue #18 part 4): a series de-identified at once is what
each of its instances gives alone, and only instances saying Burned In Annotation YES are held
back."""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from gateway.dicom.deidentify import Deidentifier, ProfileOptions
from gateway.dicom.deidentify_bytes import JsonBytesRewriter
from gateway.dicom.dicomjson import dataset_to_json
from gateway.services.deidentified import DeidentifiedViews
from tests import factory
from tests.test_deidentify import KEY, rich_dataset
from tests.test_index_contract import record


def series_json() -> list[dict[str, object]]:
    """Instances of one series as the index answers them: shared attributes, and some that
    differ from one instance to the next (UIDs, positions, a reference, a name, bulk data)."""
    instances = []
    for index in range(4):
        ds = rich_dataset()
        ds.SOPInstanceUID = factory.new_uid("sop", index)
        ds.InstanceNumber = index + 1
        ds.ImagePositionPatient = [0, 0, 2.5 * index]
        if index % 2:
            ds.OperatorsName = f"OTHER^OPERATOR{index}"
            ref = Dataset()
            ref.ReferencedSOPClassUID = ds.SOPClassUID
            ref.ReferencedSOPInstanceUID = factory.new_uid("ref", index)
            ds.ReferencedImageSequence = Sequence([ref])
        js = dataset_to_json(ds, f"studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/x/bulkdata/")
        js["00081190"] = {"vr": "UR", "Value": [f"https://gw/dicomweb/studies/{ds.StudyInstanceUID}"]}
        js["7FE00010"] = {"vr": "OW", "BulkDataURI": f"https://gw/studies/{ds.StudyInstanceUID}/bulkdata/7FE00010"}
        instances.append(dict(sorted(js.items())))  # in tag order, as the index keeps them
    return instances


@pytest.mark.parametrize("options", [ProfileOptions(), ProfileOptions(modified_dates=True, device=True)])
def test_a_series_at_once_is_each_instance_alone(options: ProfileOptions) -> None:
    instances = series_json()
    alone = [Deidentifier(KEY, options).json_dataset(instance) for instance in instances]
    at_once = list(Deidentifier(KEY, options).json_instances(instances))
    assert at_once == alone
    assert at_once[0]["00080018"] != at_once[1]["00080018"]
    assert at_once[0]["00081140"] != at_once[1]["00081140"]  # the reference of each instance
    assert at_once[1]["00081070"] != at_once[3]["00081070"]  # two operators, two pseudonyms
    assert "00091001" not in at_once[2]  # private: removed in every instance
    assert [list(answer) for answer in at_once] == [sorted(answer) for answer in at_once]  # in tag order
    # Attributes out of order (and a mark already present) are de-identified all the same.
    shuffled = [dict(reversed(list(instance.items()))) for instance in instances]
    shuffled[0]["00120062"] = {"vr": "CS", "Value": ["NO"]}
    assert list(Deidentifier(KEY, options).json_instances(shuffled)) == alone


def _series_variants() -> dict[str, list[dict[str, Any]]]:
    """Series the byte rewrite must give exactly what the profile gives element by element:
    with sequences and without, elements removed at either end, marks stored already, an
    element just below the marks' place in one instance only, or missing in one, and texts
    that look like the split's separators inside values."""
    plain = [{tag: e for tag, e in instance.items() if e["vr"] != "SQ"} for instance in series_json()]

    def each(change: dict[str, Any], only: int | None = None) -> list[dict[str, Any]]:
        return [dict(sorted({**i, **change}.items())) if only in (None, n) else i for n, i in enumerate(plain)]

    text = {"vr": "LO", "Value": ['a},"00100010":{"vr":"PN","Value":["b']}
    before_marks = max(tag for tag in plain[3] if tag < "00120062")
    return {
        "with sequences": series_json(),
        "without sequences": plain,
        "private last": each({"7FE10010": {"vr": "LO", "Value": ["private"]}}),
        "private first": each({"00010010": {"vr": "LO", "Value": ["private"]}}),
        "marks stored": each({"00120062": {"vr": "CS", "Value": ["NO"]}, "00280303": {"vr": "CS", "Value": ["X"]}}),
        "between, in one": each({"00101010": {"vr": "AS", "Value": ["054Y"]}}, only=2),
        "missing in one": [*plain[:3], {tag: e for tag, e in plain[3].items() if tag != before_marks}],
        "separator in a value": each({"00181030": text, "00081030": {"vr": "LO", "Value": ['}},{"x']}}),
        "a value ending in brace comma": each({"00181030": {"vr": "LO", "Value": ["a},"]}}, only=1),
        "empty instances": [{}, {}],
        "one instance": plain[:1],
    }


@pytest.mark.parametrize("options", [ProfileOptions(), ProfileOptions(full_dates=True, patient_characteristics=True)])
@pytest.mark.parametrize("variant", list(_series_variants()))
def test_stored_metadata_rewritten_as_bytes_is_what_the_profile_gives(options: ProfileOptions, variant: str) -> None:
    instances = _series_variants()[variant]
    expected = list(Deidentifier(KEY, options).json_instances(instances))
    answer = JsonBytesRewriter(Deidentifier(KEY, options)).answer(orjson.dumps(i) for i in instances)
    assert orjson.loads(answer) == expected
    assert [list(i) for i in orjson.loads(answer)] == [list(i) for i in expected]  # in the same order


# Tags of every kind the rewrite tells apart: kept (no action), removed, emptied, dummies, UIDs,
# cleaned dates (under the modified dates option), a private one, a RetrieveURL, a mark.
_TAGS = ["00080008", "00080016", "00080018", "00080020", "00080050", "00081030", "00100010", "00100020"]
_TAGS += ["00101010", "00120062", "00180015", "0020000D", "00200013", "00091001", "00081190", "7FE00010"]
_VRS = {"00080018": "UI", "0020000D": "UI", "00080016": "UI", "00100010": "PN", "00080020": "DA", "00200013": "IS"}
_TEXT = st.text(alphabet=st.sampled_from('},"{[]\\:a5é^ '), max_size=12)


@st.composite
def _element(draw: st.DrawFn, tag: str, depth: int) -> dict[str, Any]:
    vr = _VRS.get(tag, "LO")
    if tag == "7FE00010":
        return {"vr": "OW", "BulkDataURI": f"https://gw/studies/1.2/series/1.2.3/instances/{draw(st.integers(1, 9))}"}
    if depth < 2 and draw(st.integers(0, 5)) == 0:  # a sequence of items like the data set
        return {"vr": "SQ", "Value": draw(st.lists(_dataset(depth + 1), max_size=2))}
    if vr == "UI":
        return {"vr": vr, "Value": [f"1.2.{draw(st.integers(1, 99))}"]}
    if vr == "PN":
        return {"vr": vr, "Value": [{"Alphabetic": draw(_TEXT)}]}
    if vr == "DA":
        return {"vr": vr, "Value": [draw(st.sampled_from(["20240115", "19991231", "x},"]))]}
    if vr == "IS":
        return {"vr": vr, "Value": [draw(st.integers(0, 3))]}
    return {"vr": vr, "Value": draw(st.lists(_TEXT, max_size=2))} if draw(st.booleans()) else {"vr": vr}


@st.composite
def _dataset(draw: st.DrawFn, depth: int = 0) -> dict[str, Any]:
    tags = draw(st.lists(st.sampled_from(_TAGS), unique=True, max_size=len(_TAGS)))
    return {tag: draw(_element(tag, depth)) for tag in sorted(tags)}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(series=st.lists(_dataset(), min_size=1, max_size=4), modified_dates=st.booleans())
def test_any_stored_metadata_rewritten_as_bytes_is_what_the_profile_gives(
    series: list[dict[str, Any]], modified_dates: bool
) -> None:
    """Whatever the values hold (the split's separators, quotes, brackets, sequences in any
    element), the bytes are what the profile gives element by element, in the same order."""
    options = ProfileOptions(modified_dates=modified_dates)
    expected = list(Deidentifier(KEY, options).json_instances(series))
    answer = orjson.loads(JsonBytesRewriter(Deidentifier(KEY, options)).answer(orjson.dumps(i) for i in series))
    assert answer == expected
    assert [list(i) for i in answer] == [list(i) for i in expected]


@pytest.mark.parametrize(
    ("burned_in", "withheld"),
    [("YES", True), ("yes", True), ("NO", False), (None, False)],
)
def test_only_instances_saying_burned_in_annotation_yes_are_withheld(burned_in: str | None, withheld: bool) -> None:
    views = DeidentifiedViews(None, lambda: KEY, ProfileOptions())  # type: ignore[arg-type]
    attrs = {"StudyDescription": "YES"} if burned_in is None else {"BurnedInAnnotation": burned_in.upper()}
    stored = record(1, 1, 1, SeriesDescription="Yes, contrast", **attrs)
    if burned_in == "yes":  # as a lenient sender wrote it (CS is upper case, PS3.5 6.2)
        stored = dataclasses.replace(stored, metadata=stored.metadata.replace(b'["YES"]', b'["yes"]'))
        assert b'["yes"]' in stored.metadata
    assert views.withholds(stored) is withheld
    assert views.visible([stored]) == ([] if withheld else [stored])


@pytest.mark.anyio
async def test_a_metadata_answer_is_kept_for_the_same_stored_metadata_only() -> None:
    views = DeidentifiedViews(None, lambda: KEY, ProfileOptions())  # type: ignore[arg-type]
    stored = [orjson.dumps(instance) for instance in series_json()]
    first = await views.metadata_answer(iter(stored))
    assert orjson.loads(first) == list(Deidentifier(KEY, ProfileOptions()).json_instances(series_json()))
    assert await views.metadata_answer(iter([bytes(s) for s in stored])) == first  # equal bytes, kept answer
    assert views._metadata_answers.computed == 1
    # One instance stored again with another value: a new answer, never the kept one.
    changed = [*stored[:-1], stored[-1].replace(b"OTHER^OPERATOR3", b"THIRD^OPERATOR")]
    again = await views.metadata_answer(iter(changed))
    assert views._metadata_answers.computed == 2
    assert orjson.loads(again)[:-1] == orjson.loads(first)[:-1]
    assert orjson.loads(again)[-1]["00081070"] != orjson.loads(first)[-1]["00081070"]
    views.forget()
    assert await views.metadata_answer(iter(stored)) == first
    assert views._metadata_answers.computed == 3
