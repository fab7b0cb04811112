"""The bundle of wired services every way in uses, and the one constructor that wires them.

Built from ports only (the adapters are chosen by the composition root, ``gateway/app.py``,
and by the commands), so the HTTP front door, the commands and the next front door (DIMSE)
share one wiring: one instance writer, one visibility rule, one retrieval path.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from gateway.dicom.parse import ParseLimits
from gateway.ports import BlobStore, BridgeState, Index, Upstream
from gateway.services.access_clock import AccessClock
from gateway.services.budget import ByteBudget
from gateway.services.bulk_update import BulkUpdateService
from gateway.services.changefeed import ChangeFeed
from gateway.services.commitment import CommitmentCheck
from gateway.services.deidentified import DeidentifiedViews, deidentify_key, profile_options
from gateway.services.federation import QidoFederation
from gateway.services.forward import ForwardService
from gateway.services.instance_reader import InstanceReader
from gateway.services.instance_writer import InstanceWriter
from gateway.services.pacs_flights import PacsFlights
from gateway.services.protection import StudyProtection
from gateway.services.removal import RemovalService
from gateway.services.rendered import RenderService
from gateway.services.retrieval import RetrievalService
from gateway.services.storage_compression import CompressionPolicy
from gateway.services.stow import StowService
from gateway.services.visibility import Visibility
from gateway.settings import STORAGE_COMPRESSION, Settings
from gateway.spool import process_spool_dir


@dataclass(frozen=True)
class Gateway:
    settings: Settings
    store: BlobStore
    index: Index
    stow: StowService
    qido: QidoFederation  # QIDO over the index and the PACS nodes
    retrieval: RetrievalService  # WADO: the cache, or a PACS through it; frames, bulk data, rendered
    forward: ForwardService | None  # STOW forwarding to settings.forward_to
    commitment: CommitmentCheck  # storage commitment (PS3.4 Annex J): durable, indexed, visible
    changes: ChangeFeed  # the change feed (what entered and left the index)
    removal: RemovalService  # DELETE and rejections
    protection: StudyProtection  # studies kept from retention sweeps
    bulk_update: BulkUpdateService  # metadata corrections ($bulkUpdate) and their operations
    # What principals marked for de-identification receive (PS3.15 E.1); None: built without a key.
    deidentified: DeidentifiedViews | None = None
    upstreams: Mapping[str, Upstream] = field(default_factory=dict)  # the PACS nodes, by name (readiness)


def build_gateway(
    settings: Settings,
    store: BlobStore,
    index: Index,
    *,
    upstreams: Mapping[str, Upstream] | None = None,
    bridge_state: BridgeState | None = None,
) -> Gateway:
    limits = settings.limits
    parse_limits = parse_limits_of(settings)
    # The one instance writer and the one visibility rule, shared by every way in.
    writer = InstanceWriter(store, index)
    visibility = Visibility(index)
    compression = CompressionPolicy(
        syntax=STORAGE_COMPRESSION[settings.storage_compression],
        small_syntax=STORAGE_COMPRESSION[settings.storage_compression_small],
        small_below=settings.storage_compression_small_below,
    )
    stow = StowService(writer, visibility, parse_limits, compression=compression)
    reader = InstanceReader(
        store,
        index,
        max_decoded_frame_bytes=limits.max_decoded_frame_bytes,
        frame_cache_bytes=settings.frame_cache_bytes,
        budget=ByteBudget(limits.whole_object_bytes),
        visibility=visibility,
    )
    # The PACS bridge (all empty without [[pacs]] nodes: then the index alone answers).
    nodes = dict(upstreams or {})
    forward = None
    if settings.forward_to is not None and bridge_state is not None:
        target = next(u for name, u in nodes.items() if name.lower() == settings.forward_to.lower())
        forward = ForwardService(bridge_state, target, store, index, pacs_spool_dir(settings))
    flights = PacsFlights(writer, index, nodes, bridge_state, parse_limits=parse_limits)
    return Gateway(
        settings=settings,
        store=store,
        index=index,
        stow=stow,
        qido=QidoFederation(index, nodes, max_results=limits.max_qido_results),
        retrieval=RetrievalService(
            reader,
            flights,
            RenderService(reader, cache_bytes=settings.rendered_cache_bytes),
            access_clock(settings, index),
        ),
        forward=forward,
        commitment=CommitmentCheck(
            store, index, visibility, cached_copies_expire=settings.pacs_cache_max_age > 0 and bool(nodes)
        ),
        changes=ChangeFeed(index),
        protection=StudyProtection(index, visibility),
        bulk_update=BulkUpdateService(
            store,
            index,
            visibility,
            parse_limits,
            process_spool_dir(settings.effective_spool_dir) / "corrections",
            keep_seconds=settings.bulk_update_keep_original_seconds,
            heartbeat_seconds=settings.bulk_update_heartbeat_seconds,
            stale_seconds=settings.bulk_update_stale_seconds,
        ),
        removal=RemovalService(index, writer, visibility, bridge_state, flights, grace=settings.delete_grace),
        deidentified=DeidentifiedViews(index, lambda: deidentify_key(settings), profile_options(settings.deidentify)),
        upstreams=nodes,
    )


ACCESS_RESOLUTION = 60.0  # seconds: how often at most a read of one series is noted in the index


def access_clock(settings: Settings, index: Index) -> AccessClock | None:
    """With ``max_idle_seconds`` rules: the clock reads note their series on (a quarter of the
    shortest idle time at most, so a series read within it is never idle)."""
    idle = [rule.max_idle_seconds for rule in settings.retention if rule.max_idle_seconds > 0]
    return AccessClock(index, resolution=min(ACCESS_RESOLUTION, min(idle) / 4)) if idle else None


def parse_limits_of(settings: Settings) -> ParseLimits:
    """What parsing one instance may cost, from ``limits.*`` (uploads, PACS cache fill, reindex)."""
    limits = settings.limits
    return ParseLimits(
        max_sequence_depth=limits.max_sequence_depth,
        max_inflated_bytes=limits.max_inflated_bytes,
        max_text_value_bytes=limits.max_text_value_bytes,
    )


def pacs_spool_dir(settings: Settings) -> Path:
    """Where instances received from a PACS (C-GET, C-MOVE) and copies being forwarded to one
    wait: under this process's spool directory, which start-up sweeps once the process is gone
    (gateway.spool), so a crash mid-retrieve leaves nothing behind for good."""
    return process_spool_dir(settings.effective_spool_dir) / "pacs"
