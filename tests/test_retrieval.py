"""The retrieval service as a front door other than HTTP would use it (a C-GET/C-MOVE SCP):
plain values in (a principal's restriction, a study/series/instance selection, a transfer
syntax), every instance out as Part 10 bytes, stored or fetched from a real PACS as it arrives."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from contextlib import aclosing
from pathlib import Path

import anyio
import pydicom
import pytest

from gateway.adapters.dimse import DimseUpstream
from gateway.adapters.filestore import FileBlobStore
from gateway.adapters.sqlite_index import SqliteIndex
from gateway.dicom.media import EXPLICIT_VR_LITTLE_ENDIAN as ELE
from gateway.dicom.media import IMPLICIT_VR_LITTLE_ENDIAN as ILE
from gateway.dicom.parse import ParseLimits, parse_part10
from gateway.errors import NotFound
from gateway.ports import Upstream
from gateway.security.access import Restriction
from gateway.services.instance_reader import InstanceReader
from gateway.services.instance_writer import InstanceWriter
from gateway.services.pacs_flights import PacsFlights
from gateway.services.rendered import RenderService
from gateway.services.retrieval import RetrievalService, instance_identity
from gateway.settings import PacsNode
from tests import factory
from tests.fixtures_pacs import GATEWAY_AET, PacsData
from tests.http_helpers import uids_of
from tests.peers.orthanc import OrthancPeer
from tests.test_pacs_wado import dataset_bytes

pytestmark = pytest.mark.timeout(120)


def retrieval_over(store: FileBlobStore, index: SqliteIndex, upstreams: dict[str, Upstream]) -> RetrievalService:
    reader = InstanceReader(store, index)
    flights = PacsFlights(InstanceWriter(store, index), index, upstreams, None, parse_limits=ParseLimits())
    return RetrievalService(reader, flights, RenderService(reader))


async def every_instance(
    service: RetrievalService, selection: tuple[str, ...], restriction: Restriction, syntax: str | None
) -> dict[str, tuple[str, bytes]]:
    """SOP Instance UID → (stored syntax, bytes in ``syntax``) of each instance selected."""
    found: dict[str, tuple[str, bytes]] = {}
    retrieval = await service.stream(*selection, restriction=restriction)
    async with aclosing(retrieval.items) as items:
        async for item in items:
            sop, stored = instance_identity(item)
            found[sop] = (stored, await collect(service.instance_bytes(item, syntax)))
    return found


async def collect(body: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in body])


def read(data: bytes) -> pydicom.Dataset:
    return pydicom.dcmread(io.BytesIO(data))


@pytest.mark.anyio
async def test_stored_instances_as_stored_and_transcoded(tmp_path: Path) -> None:
    store = FileBlobStore(tmp_path / "objects")
    index = SqliteIndex(tmp_path / "index.sqlite3")
    try:
        originals = factory.ct_series(3, rows=32, cols=32, seed=7, patient_name="SCP^STORED")
        writer = InstanceWriter(store, index)
        for n, data in enumerate(originals):
            path = tmp_path / f"in-{n}.dcm"
            path.write_bytes(data)
            await writer.write(parse_part10(path, origin="stow"), path)
        study, series, _ = uids_of(originals[0])
        service = retrieval_over(store, index, {})
        allowed = Restriction(study_uids=frozenset({study}))

        as_stored = await every_instance(service, (study, series), allowed, None)
        assert {sop: data for sop, (_, data) in as_stored.items()} == {uids_of(d)[2]: d for d in originals}
        assert {stored for stored, _ in as_stored.values()} == {ELE}

        implicit = await every_instance(service, (study, series), allowed, ILE)
        for sop, (_, data) in implicit.items():
            ds = read(data)
            assert ds.file_meta.TransferSyntaxUID == ILE
            assert ds.PixelData == read(as_stored[sop][1]).PixelData

        # Outside the principal's restriction: exactly as absent.
        with pytest.raises(NotFound) as denied:
            await service.stream(study, series, restriction=Restriction(patient_ids=frozenset({"SOMEONE-ELSE"})))
        with pytest.raises(NotFound) as absent:
            await service.stream("1.2.3.999", series, restriction=allowed)
        assert str(denied.value).replace(study, "1.2.3.999") == str(absent.value)
    finally:
        await index.aclose()


@pytest.mark.anyio
async def test_pacs_instances_as_they_arrive_and_transcoded(
    tmp_path: Path, orthanc_pacs: OrthancPeer, pacs_data: PacsData
) -> None:
    """Not in the store: fetched from Orthanc by C-GET, each handed out as it arrives (as sent)
    or once cached (transcoded), and written through to the cache."""
    store = FileBlobStore(tmp_path / "objects")
    index = SqliteIndex(tmp_path / "index.sqlite3")
    upstream = DimseUpstream(
        PacsNode(name="orthanc", ae_title=orthanc_pacs.aet, host="127.0.0.1", port=orthanc_pacs.dicom_port),
        ae_title=GATEWAY_AET,
        spool_dir=tmp_path / "spool",
    )
    study, _, _ = uids_of(pacs_data.catalog[-1])
    expected = {uids_of(d)[2]: d for d in pacs_data.catalog if uids_of(d)[0] == study}
    patient = str(read(pacs_data.catalog[-1]).PatientID)
    try:
        service = retrieval_over(store, index, {"orthanc": upstream})
        async with anyio.create_task_group() as tasks:
            service.start(tasks)
            allowed = Restriction(patient_ids=frozenset({patient}))

            as_sent = await every_instance(service, (study,), allowed, None)
            assert {sop: dataset_bytes(data) for sop, (_, data) in as_sent.items()} == {
                sop: dataset_bytes(data) for sop, data in expected.items()
            }

            implicit = await every_instance(service, (study,), allowed, ILE)
            assert implicit.keys() == expected.keys()
            assert {str(read(data).file_meta.TransferSyntaxUID) for _, data in implicit.values()} == {ILE}

            with pytest.raises(NotFound):
                await service.stream(study, restriction=Restriction(patient_ids=frozenset({"SOMEONE-ELSE"})))
            tasks.cancel_scope.cancel()
        assert sorted(r.sop_uid for r in await index.instances(study, None)) == sorted(expected)
    finally:
        await upstream.aclose()
        await index.aclose()
