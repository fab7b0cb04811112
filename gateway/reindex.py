"""``dicomweb-gateway reindex``: rebuild the index from the object store, the source of truth.

Every ``.dcm`` object is parsed again and indexed; its metadata JSON is rewritten. With
``--repair``, objects that are not valid instances and metadata objects without their instance
(left by a crash between the two writes) are deleted.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import anyio
from tqdm import tqdm

from gateway.app import build_gateway, build_index, build_store
from gateway.dicom import uids
from gateway.dicom.parse import InstanceRejected, parse_part10
from gateway.errors import GatewayError
from gateway.ports import BlobStore, Index
from gateway.settings import Settings


async def reindex(store: BlobStore, index: Index, *, repair: bool, progress: bool) -> tuple[int, int]:
    """Rebuild ``index`` from ``store``; returns (instances indexed, objects rejected)."""
    keys = [k async for k in store.list_keys("studies/")]
    instance_keys = [k for k in keys if k.endswith(".dcm")]
    present = set(instance_keys)
    await index.clear()
    indexed = rejected = 0
    with tempfile.TemporaryDirectory(prefix="reindex-") as tmp:
        local = Path(tmp) / "instance.dcm"
        for key in tqdm(instance_keys, unit="inst", disable=not progress, file=sys.stderr):
            where = uids.parse_instance_key(key)
            await store.download(key, local)
            try:
                record = await anyio.to_thread.run_sync(lambda: parse_part10(local, origin="stow"))
            except InstanceRejected as exc:
                rejected += 1
                print(f"rejected {key}: {exc.reason}", file=sys.stderr)
                if repair:
                    await store.delete(key)
                continue
            if where != (record.study_uid, record.series_uid, record.sop_uid):
                rejected += 1
                print(f"rejected {key}: its UIDs do not match its key", file=sys.stderr)
                if repair:
                    await store.delete(key)
                continue
            await store.put_bytes(uids.metadata_key(*where), record.metadata, content_type="application/dicom+json")
            await index.add(record)
            indexed += 1
    if repair:
        for key in keys:
            if key.endswith(".json") and key[: -len(".json")] + ".dcm" not in present:
                await store.delete(key)
    return indexed, rejected


def run_reindex(settings: Settings, *, repair: bool, progress: bool) -> int:
    async def main() -> int:
        store = build_store(settings)
        index = build_index(settings)
        build_gateway(settings, store, index)  # validates the wiring like the server does
        try:
            indexed, rejected = await reindex(store, index, repair=repair, progress=progress)
        except GatewayError as exc:
            print(f"dicomweb-gateway: reindex failed: {exc.reason}", file=sys.stderr)
            return 1
        finally:
            await index.aclose()
            await store.aclose()
        print(f"indexed {indexed} instance(s); {rejected} object(s) rejected")
        return 0

    return anyio.run(main)
