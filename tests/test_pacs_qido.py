"""QIDO-RS through the PACS bridge: C-FIND at every level against Orthanc and dcmqrscp, and
federated searches over both PACS plus the gateway's own store."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.factory import LATIN1_NAME, UTF8_NAME
from tests.fixtures_gateway import RunningGateway
from tests.fixtures_pacs import GatewayFactory, PacsData, node
from tests.http_helpers import read, stow, uids_of
from tests.peers.dcmqrscp import DcmqrscpPeer
from tests.peers.orthanc import OrthancPeer
from tests.peers.ports import free_port

pytestmark = pytest.mark.timeout(120)

STUDY_UID = "0020000D"
SERIES_UID = "0020000E"
SOP_UID = "00080018"
PATIENT_NAME = "00100010"
MODALITIES_IN_STUDY = "00080061"
STUDY_INSTANCES = "00201208"
STUDY_DESCRIPTION = "00081030"
RETRIEVE_AE = "00080054"
RETRIEVE_URL = "00081190"
PACS = ["orthanc", "dcmqrscp"]
AE_TITLES = {"orthanc": "ORTHANC", "dcmqrscp": "DCMQRSCP"}

Row = dict[str, Any]


def get(url: str, **params: str) -> httpx.Response:
    response = httpx.get(url, params=params, headers={"Accept": "application/dicom+json"}, timeout=30)
    assert response.status_code == 200, response.text
    return response


def rows_of(url: str, **params: str) -> list[Row]:
    rows: list[Row] = get(url, **params).json()
    return rows


def values(rows: list[Row], tag: str) -> list[Any]:
    return [row[tag]["Value"][0] for row in rows]


def names(rows: list[Row]) -> set[str]:
    return {row[PATIENT_NAME]["Value"][0]["Alphabetic"] for row in rows if "Value" in row.get(PATIENT_NAME, {})}


def expected(instances: list[bytes]) -> dict[str, dict[str, set[str]]]:
    """study UID -> series UID -> SOP Instance UIDs."""
    out: dict[str, dict[str, set[str]]] = {}
    for data in instances:
        study, series, sop = uids_of(data)
        out.setdefault(study, {}).setdefault(series, set()).add(sop)
    return out


@pytest.mark.parametrize("pacs", PACS)
def test_every_level_through_each_pacs(pacs_gateway: RunningGateway, pacs_data: PacsData, pacs: str) -> None:
    root = f"{pacs_gateway.url}/pacs/{pacs}"
    tree = expected([*pacs_data.catalog, *pacs_data.series])

    studies = rows_of(root + "/studies")
    assert set(tree) <= set(values(studies, STUDY_UID))
    for row in studies:
        study = row[STUDY_UID]["Value"][0]
        assert row[RETRIEVE_AE]["Value"] == [AE_TITLES[pacs]]
        assert row[RETRIEVE_URL]["Value"] == [f"{root}/studies/{study}"]

    study, series_tree = next(iter(tree.items()))
    series = rows_of(f"{root}/studies/{study}/series")
    assert sorted(values(series, SERIES_UID)) == sorted(series_tree)
    assert all(row[STUDY_UID]["Value"] == [study] for row in series)

    series_uid, sops = next(iter(series_tree.items()))
    instances = rows_of(f"{root}/studies/{study}/series/{series_uid}/instances")
    assert set(values(instances, SOP_UID)) == sops
    assert all(
        row[RETRIEVE_URL]["Value"]
        == [f"{root}/studies/{study}/series/{series_uid}/instances/{row[SOP_UID]['Value'][0]}"]
        for row in instances
    )
    # Series across all studies, matched on a series key (relational C-FIND at SERIES level).
    mr = rows_of(root + "/series", Modality="MR")
    mr_expected = {uids_of(d)[1] for d in pacs_data.catalog if read(d).Modality == "MR"}
    assert set(values(mr, SERIES_UID)) == mr_expected


@pytest.mark.parametrize("pacs", [*PACS, None])
def test_wildcard_date_range_and_non_ascii_names(pacs_gateway: RunningGateway, pacs: str | None) -> None:
    root = pacs_gateway.url + (f"/pacs/{pacs}" if pacs else "")
    assert names(rows_of(root + "/studies", PatientName="DOE*")) == {"DOE^JOHN", "DOE^JANE"}
    # No invented wildcard: a single value matches only that name.
    assert names(rows_of(root + "/studies", PatientName="DOE")) == set()
    in_january = rows_of(root + "/studies", StudyDate="20240101-20240131")
    assert names(in_january) == {"DOE^JOHN", "DOE^JANE", "STREAM^SERIES"}
    assert names(rows_of(root + "/studies", StudyDate="20240601-")) == {UTF8_NAME}
    assert names(rows_of(root + "/studies", PatientName="Müller*")) == {LATIN1_NAME}
    assert names(rows_of(root + "/studies", PatientName="山田*")) == {UTF8_NAME}


def test_includefield_becomes_a_return_key(pacs_gateway: RunningGateway) -> None:
    for pacs in PACS:
        rows = rows_of(f"{pacs_gateway.url}/pacs/{pacs}/studies", PatientName="SMITH*", includefield="StudyDescription")
        assert [row[STUDY_DESCRIPTION]["Value"] for row in rows] == [["CT ABDOMEN"]]


def test_attributes_a_pacs_leaves_out_are_not_invented(pacs_gateway: RunningGateway) -> None:
    dcmqrscp = rows_of(pacs_gateway.url + "/pacs/dcmqrscp/studies")
    assert all(MODALITIES_IN_STUDY not in row and STUDY_INSTANCES not in row for row in dcmqrscp)
    orthanc = rows_of(pacs_gateway.url + "/pacs/orthanc/studies", PatientName="SMITH*")
    assert orthanc[0][MODALITIES_IN_STUDY]["Value"] == ["CT"]
    assert orthanc[0][STUDY_INSTANCES]["Value"] == [4]


def test_latin1_names_without_character_set_are_decoded(pacs_gateway: RunningGateway) -> None:
    # dcmqrscp hands back the stored bytes and no Specific Character Set (PEERS.md).
    rows = rows_of(pacs_gateway.url + "/pacs/dcmqrscp/studies", PatientID="PID-NOCS")
    assert names(rows) == {LATIN1_NAME}


def test_federated_search_merges_by_uid(pacs_gateway: RunningGateway, pacs_data: PacsData) -> None:
    catalog_studies = expected(pacs_data.catalog)
    shared = next(iter(catalog_studies))
    local_copy = [d for d in pacs_data.catalog if uids_of(d)[0] == shared]
    from tests import factory

    local_only = factory.ct_instance(seed=4242, patient_name="LOCAL^ONLY", study_date="19990101")
    assert stow(pacs_gateway.url, [*local_copy, local_only]).status_code == 200

    rows = rows_of(pacs_gateway.url + "/studies")
    study_uids = values(rows, STUDY_UID)
    assert len(study_uids) == len(set(study_uids)), "a study shows up twice"
    by_uid = {row[STUDY_UID]["Value"][0]: row for row in rows}
    every = set(expected([*pacs_data.catalog, *pacs_data.series])) | {uids_of(local_only)[0]}
    assert every <= set(by_uid)
    # Held locally and by both PACS: one row naming both PACS; the gateway URL retrieves it.
    assert by_uid[shared][RETRIEVE_AE]["Value"] == ["ORTHANC", "DCMQRSCP"]
    assert by_uid[shared][RETRIEVE_URL]["Value"] == [f"{pacs_gateway.url}/studies/{shared}"]
    assert by_uid[shared][MODALITIES_IN_STUDY]["Value"] == ["CT"]
    local_row = by_uid[uids_of(local_only)[0]]
    assert RETRIEVE_AE not in local_row
    # Series of the shared study: merged too.
    series = rows_of(f"{pacs_gateway.url}/studies/{shared}/series")
    assert sorted(values(series, SERIES_UID)) == sorted(catalog_studies[shared])


def test_limit_and_offset_page_the_merged_list(pacs_gateway: RunningGateway) -> None:
    everything = values(rows_of(pacs_gateway.url + "/studies"), STUDY_UID)
    assert len(everything) >= 7
    pages: list[str] = []
    for offset in range(0, len(everything), 3):
        response = get(pacs_gateway.url + "/studies", limit="3", offset=str(offset))
        pages += values(response.json(), STUDY_UID)
        more = offset + 3 < len(everything)
        assert ("additional results" in response.headers.get("warning", "")) == more
    assert pages == everything
    assert values(rows_of(pacs_gateway.url + "/studies"), STUDY_UID) == everything  # stable


def test_the_result_limit_cancels_the_c_find(
    pacs_gateway_factory: GatewayFactory, orthanc_pacs: OrthancPeer, dcmqrscp_pacs: DcmqrscpPeer
) -> None:
    gw = pacs_gateway_factory(
        [node("orthanc", orthanc_pacs.dicom_port, orthanc_pacs.aet), node("dcmqrscp", dcmqrscp_pacs.port, "DCMQRSCP")],
        limits={"max_qido_results": 3},
    )
    for pacs in PACS:
        response = get(f"{gw.url}/pacs/{pacs}/studies")
        assert len(response.json()) == 3
        assert "additional results" in response.headers["warning"]
        # The association survives the C-CANCEL (PS3.7 9.3.2.3): the next search on it works.
        assert len(rows_of(f"{gw.url}/pacs/{pacs}/studies", PatientName="DOE*")) == 2


def test_one_pacs_down_costs_only_its_rows(
    pacs_gateway_factory: GatewayFactory, orthanc_pacs: OrthancPeer, dcmqrscp_pacs: DcmqrscpPeer
) -> None:
    closed = free_port()
    gw = pacs_gateway_factory(
        [node("orthanc", orthanc_pacs.dicom_port, orthanc_pacs.aet), node("gone", closed, "GONE", connect_timeout=1)]
    )
    response = get(gw.url + "/studies", PatientName="DOE*")
    assert names(response.json()) == {"DOE^JOHN", "DOE^JANE"}
    warning = response.headers["warning"]
    assert "PACS gone" in warning
    assert "refused" in warning.lower()


def test_unknown_pacs_selector_is_404(pacs_gateway: RunningGateway) -> None:
    response = httpx.get(pacs_gateway.url + "/pacs/nosuch/studies", timeout=10)
    assert response.status_code == 404
    assert "nosuch" in response.json()["reason"]
