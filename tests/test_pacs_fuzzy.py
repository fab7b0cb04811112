"""QIDO ``fuzzymatching=true`` towards a PACS: proposed as C-FIND extended negotiation (PS3.4
C.5.1.1.1, fuzzy semantic matching of person names); a PACS that does not grant it (Orthanc and
dcmqrscp do not) matched literally, and the response says so per PACS (PS3.18 8.3.4.x)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

from gateway.adapters.dimse import FUZZY_NOT_SUPPORTED, DimseUpstream
from gateway.adapters.dimse_contexts import FIND, FUZZY_FIND_REQUEST, FUZZY_QUERY_KIND, association_contexts
from gateway.dicom.query import parse_qido
from gateway.settings import PacsNode
from tests.fixtures_gateway import RunningGateway
from tests.peers.ports import free_port

pytestmark = pytest.mark.timeout(120)

FUZZY_WARNING = f'"{FUZZY_NOT_SUPPORTED}"'


def warnings_of(response: httpx.Response) -> list[str]:
    return response.headers.get_list("warning")


def test_fuzzy_query_is_literal_at_each_pacs_and_says_so(pacs_gateway: RunningGateway) -> None:
    # The catalog's names are ASCII upper case: a literal C-FIND of SMITH* finds them.
    fuzzy = httpx.get(f"{pacs_gateway.url}/studies", params={"PatientName": "SMITH*", "fuzzymatching": "true"})
    assert fuzzy.status_code == 200, fuzzy.text
    named = [w for w in warnings_of(fuzzy) if FUZZY_NOT_SUPPORTED in w]
    assert len(named) == 2, warnings_of(fuzzy)
    assert any("PACS orthanc (ORTHANC@" in w for w in named), named
    assert any("PACS dcmqrscp (DCMQRSCP@" in w for w in named), named
    # The same rows as without fuzzy matching (literal), and no such warning then.
    literal = httpx.get(f"{pacs_gateway.url}/studies", params={"PatientName": "SMITH*"})
    assert literal.status_code == 200, literal.text
    assert not [w for w in warnings_of(literal) if FUZZY_NOT_SUPPORTED in w]
    assert {r["0020000D"]["Value"][0] for r in fuzzy.json()} == {r["0020000D"]["Value"][0] for r in literal.json()}
    assert fuzzy.json(), "the catalog has SMITH studies"


def test_fuzzy_negotiation_item() -> None:
    contexts, items = association_contexts(FUZZY_QUERY_KIND)
    assert FIND in {str(c.abstract_syntax) for c in contexts}
    (item,) = items
    assert (str(item.sop_class_uid), item.service_class_application_information) == (FIND, b"\x00\x00\x01")
    assert FUZZY_FIND_REQUEST[2] == 1  # PS3.4 Table C.5-1: byte 3, fuzzy semantic matching


# A PACS that grants fuzzy matching: none installed here does, so pynetdicom's own SCP answers
# the extended negotiation (the only fake in this file: the behaviour under test is the reply).


@pytest.fixture
def granting_scp() -> Iterator[tuple[int, list[bytes]]]:
    requested: list[bytes] = []

    def on_extended(event: Any) -> dict[str, bytes]:
        items: dict[str, bytes] = event.app_info
        requested.extend(items.values())
        return dict.fromkeys(items, b"\x00\x00\x01")

    def on_find(event: Any) -> Iterator[tuple[int, Dataset | None]]:
        row = Dataset()
        row.QueryRetrieveLevel = "STUDY"
        row.StudyInstanceUID = "1.2.3.4"
        row.PatientName = "MÜLLER^JOSÉ"
        yield 0xFF00, row

    ae = AE("FUZZYPACS")
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
    port = free_port()
    server = ae.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_SOP_EXTENDED, on_extended), (evt.EVT_C_FIND, on_find)]
    )
    try:
        yield port, requested
    finally:
        server.shutdown()


@pytest.mark.anyio
async def test_granted_fuzzy_matching_has_no_warning(granting_scp: tuple[int, list[bytes]], tmp_path: Path) -> None:
    port, requested = granting_scp
    upstream = DimseUpstream(
        PacsNode(name="fuzzy", ae_title="FUZZYPACS", host="127.0.0.1", port=port, dimse_timeout=10),
        ae_title="GATEWAY",
        spool_dir=tmp_path,
    )
    try:
        fuzzy = await upstream.find(parse_qido("study", [("PatientName", "muller"), ("fuzzymatching", "true")]), 10)
        literal = await upstream.find(parse_qido("study", [("PatientName", "MULLER*")]), 10)
    finally:
        await upstream.aclose()
    assert requested == [b"\x00\x00\x01"]  # asked once: only the fuzzy query's association
    assert len(fuzzy.rows) == 1
    assert fuzzy.warnings == ()
    assert literal.warnings == ()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
