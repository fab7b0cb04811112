"""One reader cannot make the gateway hold objects in memory (gateway.services.bulkdata and
gateway.services.budget): bulk data is served by ranged reads, a path the metadata never handed
out is refused without reading the object, and whole-object work has a process-wide budget."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.lowlevel
import httpx
import orjson
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from gateway.adapters.filestore import FileBlobStore
from gateway.app import create_app
from gateway.errors import NotAcceptable, ServiceUnavailable
from gateway.ports import BlobStore
from gateway.services.budget import ByteBudget
from gateway.settings import load_settings
from tests import factory
from tests.http_helpers import stow_body

BASE = "/dicomweb"
PRIVATE_OB = 0x00091010


class CountingStore:
    """A store that counts the reads of Part 10 objects (metadata JSON is not counted)."""

    def __init__(self, inner: BlobStore) -> None:
        self.inner = inner
        self.ranged: list[tuple[int, int]] = []
        self.whole = 0

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    async def read_range(self, key: str, offset: int, length: int) -> bytes:
        self.ranged.append((offset, length))
        return await self.inner.read_range(key, offset, length)

    async def read_all(self, key: str) -> bytes:
        if key.endswith(".dcm"):
            self.whole += 1
        return await self.inner.read_all(key)

    async def download(self, key: str, path: Path) -> None:
        self.whole += 1
        await self.inner.download(key, path)


@dataclass
class App:
    http: httpx.AsyncClient
    store: CountingStore
    budget: ByteBudget


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[App]:
    settings = load_settings(
        environ={}, overrides={"data_dir": tmp_path / "data", "limits": {"whole_object_bytes": 1 << 20}}
    )
    (tmp_path / "objects").mkdir()
    store = CountingStore(FileBlobStore(tmp_path / "objects"))
    asgi = create_app(settings, store=store)  # type: ignore[arg-type]
    transport = httpx.ASGITransport(app=asgi)
    async with (
        asgi.router.lifespan_context(asgi),
        httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http,
    ):
        yield App(http, store, asgi.state.gateway.retrieval.reader.budget)


def instance_with_bulk_data() -> tuple[Dataset, bytes]:
    """A CT with native pixel data, a private OB value and an icon image inside a sequence."""
    ds = factory.ct_dataset(seed=7, rows=64, cols=64)
    ds.add_new(0x00090010, "LO", "GATEWAY TEST")
    ds.add_new(PRIVATE_OB, "OB", bytes(range(256)) * 9)
    icon = Dataset()
    icon.Rows, icon.Columns, icon.BitsAllocated, icon.BitsStored, icon.HighBit = 32, 32, 8, 8, 7
    icon.SamplesPerPixel, icon.PhotometricInterpretation, icon.PixelRepresentation = 1, "MONOCHROME2", 0
    icon.add_new(0x7FE00010, "OB", bytes(reversed(range(256))) * 8)
    ds.IconImageSequence = Sequence([icon])
    return ds, factory.to_part10_bytes(ds)


async def stow(http: httpx.AsyncClient, *instances: bytes) -> None:
    body, content_type = stow_body(list(instances))
    response = await http.post(f"{BASE}/studies", content=body, headers={"Content-Type": content_type})
    assert response.status_code == 200, response.text


def bulk_uris(metadata: object) -> list[str]:
    found: list[str] = []
    if isinstance(metadata, dict):
        uri = metadata.get("BulkDataURI")
        if isinstance(uri, str):
            found.append(uri)
        for value in metadata.values():
            found += bulk_uris(value)
    elif isinstance(metadata, list):
        for value in metadata:
            found += bulk_uris(value)
    return found


def instance_url(ds: Dataset) -> str:
    return f"{BASE}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"


@pytest.mark.anyio
async def test_bulk_data_is_ranged_and_unknown_paths_read_nothing(app: App) -> None:
    ds, data = instance_with_bulk_data()
    await stow(app.http, data)
    url = instance_url(ds)
    metadata = orjson.loads((await app.http.get(f"{url}/metadata")).content)
    uris = sorted(u.split("/bulkdata/", 1)[1] for u in bulk_uris(metadata))
    assert uris == ["00091010", "00880200/0/7FE00010", "7FE00010"]
    expected = {
        "00091010": ds[PRIVATE_OB].value,
        "00880200/0/7FE00010": ds.IconImageSequence[0].PixelData,
        "7FE00010": ds.PixelData,
    }
    app.store.ranged.clear()

    for path, value in expected.items():
        response = await app.http.get(f"{url}/bulkdata/{path}", headers={"Accept": "application/octet-stream"})
        assert response.status_code == 200
        assert response.content == value
    assert app.store.whole == 0
    # The walk reads element headers in one block; each value is one range.
    assert 0 < len(app.store.ranged) <= 2 * len(expected)
    assert max(length for _, length in app.store.ranged) <= max(64 << 10, len(data))

    app.store.ranged.clear()
    unknown = ["00091011", "00100010", "00880200/1/7FE00010", "7fe00010/0/00100010", "..%2F..%2Fx", "00091010%22"]

    async def ask(path: str) -> int:
        return (await app.http.get(f"{url}/bulkdata/{path}")).status_code

    async with anyio.create_task_group() as tasks:
        for i in range(32):
            tasks.start_soon(ask, unknown[i % len(unknown)])
    statuses = {await ask(path) for path in unknown}
    assert statuses == {404}
    assert app.store.ranged == []
    assert app.store.whole == 0


@pytest.mark.anyio
async def test_deflated_bulk_data_is_read_whole_within_the_budget(app: App) -> None:
    ds = factory.ct_dataset(seed=8, rows=16, cols=16)
    await stow(app.http, factory.to_part10_bytes(ds, pydicom.uid.DeflatedExplicitVRLittleEndian))
    response = await app.http.get(
        f"{instance_url(ds)}/bulkdata/7FE00010", headers={"Accept": "application/octet-stream"}
    )
    assert response.status_code == 200
    assert response.content == ds.PixelData
    assert app.store.whole == 1
    assert app.budget.used == 0


@pytest.mark.anyio
async def test_whole_object_work_past_the_budget_is_503_with_retry_after(app: App) -> None:
    ds = factory.ct_dataset(seed=9, rows=64, cols=64)
    await stow(app.http, factory.to_part10_bytes(ds))
    url = instance_url(ds)
    implicit = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2'}
    assert (await app.http.get(url, headers=implicit)).status_code == 200

    app.budget.wait = 0.05
    async with app.budget.reserve(app.budget.total - 100, "another request"):
        busy = await app.http.get(url, headers=implicit)
        # Streamed reads as stored need no budget.
        as_stored = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}
        assert (await app.http.get(url, headers=as_stored)).status_code == 200
    assert busy.status_code == 503
    assert busy.headers["Retry-After"] == "2"
    assert "whole-object work" in busy.json()["reason"]
    assert app.budget.used == 0
    assert (await app.http.get(url, headers=implicit)).status_code == 200


@pytest.mark.anyio
async def test_an_object_larger_than_the_whole_budget_is_refused_with_406(app: App) -> None:
    ds = factory.ct_dataset(seed=10, rows=512, cols=512)  # 512 KiB of pixels: ~1.5 MiB estimated
    await stow(app.http, factory.to_part10_bytes(ds))
    implicit = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2'}
    response = await app.http.get(instance_url(ds), headers=implicit)
    assert response.status_code == 406
    assert "limits.whole_object_bytes" in response.json()["reason"]
    assert app.store.whole == 0


@pytest.mark.anyio
async def test_budget_queues_then_refuses() -> None:
    budget = ByteBudget(100, wait=0.05)
    with pytest.raises(NotAcceptable):
        async with budget.reserve(101, "too big"):
            pass
    order: list[str] = []

    async def hold(seconds: float) -> None:
        async with budget.reserve(80, "first"):
            order.append("first")
            await anyio.sleep(seconds)

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(hold, 0.01)
        await anyio.lowlevel.checkpoint()
        async with budget.reserve(30, "second"):  # waits for the first to end
            order.append("second")
    assert order == ["first", "second"]

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(hold, 1.0)
        await anyio.lowlevel.checkpoint()
        with pytest.raises(ServiceUnavailable):
            async with budget.reserve(30, "second"):
                pass
        tasks.cancel_scope.cancel()
    assert budget.used == 0


@pytest.mark.anyio
async def test_encapsulated_pixel_data_is_one_range_up_to_its_delimiter(app: App) -> None:
    data = factory.jpeg_baseline_instance(seed=11, frames=3, fragments_per_frame=2)
    ds = pydicom.dcmread(io.BytesIO(data))
    await stow(app.http, data)
    app.store.ranged.clear()
    response = await app.http.get(
        f"{instance_url(ds)}/bulkdata/7FE00010", headers={"Accept": "application/octet-stream"}
    )
    assert response.status_code == 200
    assert response.content == ds.PixelData  # items (offset table, fragments), no delimiter
    assert app.store.whole == 0
