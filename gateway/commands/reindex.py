"""``dicomweb-gateway reindex``: rebuild the index from the object store, or repair the two.

Without ``--repair`` (disaster recovery, when the index is lost or damaged): the index is
cleared and every ``.dcm`` object is parsed again and indexed, its metadata JSON rewritten. The
store is the source of truth: objects that are not valid instances are reported and left alone. Uploads
must be stopped meanwhile (the index is empty until the rebuild ends).

With ``--repair`` (after a crash, or regularly): an in-place reconciliation that keeps the index
and is safe beside live gateways: see :mod:`gateway.commands.repair`.
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
from pathlib import Path

import anyio
from tqdm import tqdm

from gateway.app import build_index, build_store
from gateway.commands.repair import DEFAULT_GRACE, IndexLooksLost, repair
from gateway.dicom import uids
from gateway.dicom.parse import InstanceRejected, ParseLimits, parse_part10
from gateway.errors import GatewayError
from gateway.ports import BlobStore, Corrections, Index
from gateway.services.bundle import build_gateway, parse_limits_of
from gateway.settings import Settings
from gateway.spool import sweep_dead_spools


async def reindex(
    store: BlobStore, index: Index, *, progress: bool, limits: ParseLimits | None = None
) -> tuple[int, int]:
    """Rebuild ``index`` from ``store``; returns (instances indexed, objects rejected). ``limits``:
    those the uploads were parsed with (the configured ``limits.*``), so that what was accepted
    is indexed again."""
    limits = limits or ParseLimits()
    uncommitted = await _uncommitted_versions(index)
    listed = [k async for k in store.list_keys("studies/") if k.endswith(".dcm")]
    instance_keys = _newest_versions([k for k in listed if k not in uncommitted])
    await index.clear()
    indexed = rejected = 0
    with tempfile.TemporaryDirectory(prefix="reindex-") as tmp:
        local = Path(tmp) / "instance.dcm"
        for key in tqdm(instance_keys, unit="inst", disable=not progress, file=sys.stderr):
            versioned = uids.parse_version_key(key)
            where, version = versioned if versioned is not None else (uids.parse_instance_key(key), "")
            await store.download(key, local)
            try:
                record = await anyio.to_thread.run_sync(lambda: parse_part10(local, origin="stow", limits=limits))
            except InstanceRejected as exc:
                rejected += 1
                print(f"rejected {key}: {exc.reason}", file=sys.stderr)
                continue
            if where is None or where != (record.study_uid, record.series_uid, record.sop_uid):
                rejected += 1
                print(f"rejected {key}: its UIDs do not match its key", file=sys.stderr)
                continue
            record = dataclasses.replace(record, version=version)
            metadata_key = uids.metadata_key(*where, version)
            await store.put_bytes(metadata_key, record.metadata, content_type="application/dicom+json")
            await index.add(record)
            indexed += 1
    return indexed, rejected


async def _uncommitted_versions(index: Index) -> set[str]:
    """Keys of corrected versions the index knows were not committed: those of an operation
    still recorded unfinished (its replica was killed and has not been restarted, nor has
    another replica failed it yet) that the instance's row does not name. The rows are read
    before the index is cleared; an index lost entirely knows nothing of them (the limit is in
    docs/dicomweb.md)."""
    if not isinstance(index, Corrections):
        return set()
    keys: set[str] = set()
    for operation in await index.unfinished_operations():
        for study in operation.request.get("studyInstanceUids", []):
            for record in await index.instances(study):
                if record.version != operation.id:
                    keys.add(uids.instance_key(record.study_uid, record.series_uid, record.sop_uid, operation.id))
    return keys


def _newest_versions(keys: list[str]) -> list[str]:
    """Of each instance's objects, the newest: its latest corrected version (version names sort
    by time, gateway.services.bulk_update) or, never corrected, the object under its UIDs.
    Keys that name no instance are kept, to be reported."""
    chosen: dict[tuple[str, str, str], tuple[str, str]] = {}
    others: list[str] = []
    for key in keys:
        versioned = uids.parse_version_key(key)
        where, version = versioned if versioned is not None else (uids.parse_instance_key(key), "")
        if where is None:
            others.append(key)
        elif where not in chosen or version > chosen[where][0]:
            chosen[where] = (version, key)
    return [key for _, key in chosen.values()] + others


def run_reindex(
    settings: Settings, *, repair: bool, progress: bool, grace: float | None = None, dry_run: bool = False
) -> int:
    """The ``reindex`` sub-command; ``grace`` and ``dry_run`` apply to ``--repair``."""

    async def main() -> int:
        store = build_store(settings)
        index = build_index(settings)
        build_gateway(settings, store, index)  # validates the wiring like the server does
        try:
            if repair:
                return await _repair(settings, store, index, grace=grace, dry_run=dry_run)
            indexed, rejected = await reindex(store, index, progress=progress, limits=parse_limits_of(settings))
        except GatewayError as exc:
            print(f"dicomweb-gateway: reindex failed: {exc.reason}", file=sys.stderr)
            return 1
        finally:
            await index.aclose()
            await store.aclose()
        print(f"indexed {indexed} instance(s); {rejected} object(s) rejected")
        return 0

    return anyio.run(main)


async def _repair(settings: Settings, store: BlobStore, index: Index, *, grace: float | None, dry_run: bool) -> int:
    grace = DEFAULT_GRACE if grace is None else grace
    try:
        report = await repair(store, index, grace=grace, dry_run=dry_run)
    except IndexLooksLost as exc:
        print(f"dicomweb-gateway: repair refused: {exc}", file=sys.stderr)
        return 1
    report.spool_files = await anyio.to_thread.run_sync(
        lambda: sweep_dead_spools(settings.effective_spool_dir, remove=not dry_run)
    )
    for line in report.lines(dry_run=dry_run, grace=grace):
        print(line)
    return 0
