"""The composition root: the only module that knows every adapter and wires them together."""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
from starlette.applications import Starlette
from starlette.middleware import Middleware

from gateway.dicom.received import receive_into_files
from gateway.dimse.front_door import open_front_door
from gateway.dimse.move_receiver import MoveReceiver
from gateway.errors import ServiceUnavailable
from gateway.http.errors import EXCEPTION_HANDLERS
from gateway.http.middleware.metrics import ObservabilityMiddleware
from gateway.http.middleware.stack import build_security, middleware_stack
from gateway.http.routes import all_routes
from gateway.ports import BlobStore, BridgeState, Index, Upstream, WebhookCursors
from gateway.services.bundle import build_gateway, pacs_spool_dir
from gateway.services.changefeed import ChangeFeed
from gateway.services.retention import RetentionSweep
from gateway.services.webhooks import Webhooks
from gateway.settings import PacsNode, Settings
from gateway.settings_retention import effective_interval, effective_rules
from gateway.spool import process_spool_dir

log = logging.getLogger(__name__)


def build_store(settings: Settings) -> BlobStore:
    url = urlsplit(settings.effective_storage_url)
    if url.scheme == "file":
        from gateway.adapters.filestore import FileBlobStore

        root = Path(url.path)
        root.mkdir(parents=True, exist_ok=True)
        return FileBlobStore(root)
    from gateway.adapters.s3 import S3BlobStore

    s3 = settings.s3
    return S3BlobStore(
        url.netloc,
        url.path.strip("/"),
        endpoint_url=s3.endpoint_url,
        region=s3.region,
        access_key=s3.access_key,
        secret_key=s3.secret_key,
        max_threads=s3.max_threads,
        multipart_threshold=s3.multipart_threshold,
        part_size=s3.part_size,
        connect_timeout=s3.connect_timeout,
        read_timeout=s3.read_timeout,
        max_attempts=s3.max_attempts,
    )


def build_index(settings: Settings) -> Index:
    url = urlsplit(settings.effective_index_url)
    if url.scheme in ("postgresql", "postgres"):
        from gateway.adapters.postgres_index import PostgresIndex

        return PostgresIndex(settings.effective_index_url, max_results=settings.limits.max_qido_results)
    from gateway.adapters.sqlite_index import SqliteIndex

    path = Path(url.path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return SqliteIndex(path, max_results=settings.limits.max_qido_results)


async def check_at_start(settings: Settings, store: BlobStore, index: Index) -> None:
    """Ask the store and the index once before serving.

    A local one (file store, SQLite) that fails stops the start: the problem is on this machine
    (a path, permissions, a full disk) and someone must see it. A network peer (S3, PostgreSQL)
    that is unavailable does not: the gateway serves, ``/readyz`` names it, and the adapters
    reconnect by themselves once it answers; exiting would only make an orchestrator restart
    the process with growing back-off after the peer is back.
    """
    remote_store = urlsplit(settings.effective_storage_url).scheme == "s3"
    remote_index = urlsplit(settings.effective_index_url).scheme in ("postgresql", "postgres")
    for what, ping, remote in (("object store", store.ping, remote_store), ("index", index.ping, remote_index)):
        try:
            await ping()
        except ServiceUnavailable as exc:
            if not remote:
                raise
            log.warning("the %s is unavailable at start-up; serving, /readyz reports it: %s", what, exc.reason)


def build_upstream(settings: Settings, node: PacsNode, scp: MoveReceiver | None = None) -> Upstream:
    """The DIMSE adapter for one ``[[pacs]]`` node (``scp``: where its C-MOVEs arrive)."""
    from gateway.adapters.dimse import DimseUpstream

    return DimseUpstream(node, ae_title=settings.ae_title, spool_dir=pacs_spool_dir(settings), scp=scp)


def build_move_receiver(settings: Settings) -> MoveReceiver | None:
    """Where C-MOVE sub-operations from [[pacs]] nodes arrive: the DIMSE listener's router."""
    if settings.scp_port is None:
        return None
    from gateway.adapters.dimse_watchdog import abort_now

    return MoveReceiver(ae_title=settings.ae_title, spool_dir=pacs_spool_dir(settings), abort=abort_now)


@contextlib.asynccontextmanager
async def open_pacs(
    settings: Settings, receiver: MoveReceiver | None
) -> AsyncIterator[tuple[dict[str, Upstream], BridgeState | None]]:
    """The PACS nodes and the bridge state, for the app's lifetime (their C-MOVEs arrive at
    ``receiver``, which the DIMSE listener feeds)."""
    if not settings.pacs:
        yield {}, None
        return
    from gateway.adapters.sqlite_bridge import SqliteBridgeState

    state = SqliteBridgeState(settings.data_dir / "pacs-bridge.sqlite3")
    upstreams = {node.name: build_upstream(settings, node, receiver) for node in settings.pacs}
    try:
        yield upstreams, state
    finally:
        with anyio.CancelScope(shield=True):
            for upstream in upstreams.values():
                await upstream.aclose()
            await state.aclose()


def replica_id(data_dir: Path) -> str:
    """This replica's name as the holder of webhook leases, kept in its data directory: a
    process that restarts on it (after a crash too) takes its leases back at once instead of
    waiting for them to lapse. A new data directory is a new replica."""
    path = data_dir / "replica-id"
    try:
        return path.read_text().strip() or _new_replica_id(path)
    except FileNotFoundError:
        return _new_replica_id(path)


def _new_replica_id(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    value = uuid.uuid4().hex
    path.write_text(value + "\n")
    return value


def own_base_url(settings: Settings) -> str:
    """The DICOMweb base URL in what the gateway sends out (webhook Metadata's BulkDataURIs)."""
    if settings.public_base_url:
        return settings.public_base_url.rstrip("/")
    host = settings.host if settings.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    host = f"[{host}]" if ":" in host else host
    scheme = "https" if settings.tls.cert_file is not None else "http"
    return f"{scheme}://{host}:{settings.port}{settings.base_path}"


@contextlib.asynccontextmanager
async def open_webhooks(settings: Settings, index: Index) -> AsyncIterator[Webhooks | None]:
    """The webhook deliveries, their cursors created before the gateway serves."""
    if not settings.webhooks:
        yield None
        return
    if not isinstance(index, WebhookCursors):
        raise ServiceUnavailable("this index keeps no webhook cursors ([[webhooks]] need SQLite or PostgreSQL)")
    from gateway.adapters.webhook_http import HttpWebhookSender

    webhooks = Webhooks(
        settings.webhooks,
        ChangeFeed(index),
        index,
        HttpWebhookSender(),
        holder=replica_id(settings.data_dir),
        base_url=own_base_url(settings),
    )
    try:
        await webhooks.prepare()
        yield webhooks
    finally:
        with anyio.CancelScope(shield=True):
            await webhooks.aclose()


def create_app(settings: Settings, *, store: BlobStore | None = None, index: Index | None = None) -> Starlette:
    """The ASGI app. Adapters are built in the lifespan (or passed in, e.g. by tests)."""
    security = build_security(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        own_store = store or build_store(settings)
        own_index = index or build_index(settings)
        stop_receiving_into_files: Callable[[], None] | None = None
        try:
            security.open()
            await check_at_start(settings, own_store, own_index)
            # Every C-STORE this process receives (front door, C-MOVE arrivals, C-GETs from a
            # PACS) goes to disk in its spool as it arrives, not whole into memory.
            stop_receiving_into_files = receive_into_files(process_spool_dir(settings.effective_spool_dir) / "received")
            receiver = build_move_receiver(settings)
            async with (
                contextlib.AsyncExitStack() as stack,
                open_pacs(settings, receiver) as (upstreams, bridge_state),
                anyio.create_task_group() as tasks,
            ):
                gateway = build_gateway(settings, own_store, own_index, upstreams=upstreams, bridge_state=bridge_state)
                gateway.retrieval.start(tasks)
                gateway.removal.start(tasks)
                await gateway.bulk_update.start(tasks, holder=replica_id(settings.data_dir), audit=security.audit.write)
                RetentionSweep(
                    own_index,
                    gateway.removal,
                    effective_rules(settings),
                    interval=effective_interval(settings),
                    audit=security.audit,
                ).start(tasks)
                if gateway.forward is not None:
                    gateway.forward.start(tasks)
                app.state.gateway = gateway
                webhooks = await stack.enter_async_context(open_webhooks(settings, own_index))
                if webhooks is not None:
                    webhooks.start(tasks)
                app.state.webhooks = webhooks
                # The DIMSE front door (and where C-MOVE sub-operations arrive) on scp_port.
                async with open_front_door(
                    gateway,
                    receiver=receiver,
                    audit=security.audit,
                    # C-STORE pushes wait here while stored; swept once this process is gone.
                    spool_dir=process_spool_dir(settings.effective_spool_dir) / "dimse",
                    holder=replica_id(settings.data_dir),
                ) as listener:
                    app.state.dimse_listener = listener
                    yield
                tasks.cancel_scope.cancel()
        finally:
            if stop_receiving_into_files is not None:
                stop_receiving_into_files()
            await security.aclose()
            if index is None:
                await own_index.aclose()
            if store is None:
                await own_store.aclose()

    handlers: Any = EXCEPTION_HANDLERS
    return Starlette(
        routes=all_routes(settings.base_path),
        exception_handlers=handlers,
        lifespan=lifespan,
        # Outermost: request ids, access log and metrics see every answer, auth failures included.
        middleware=[Middleware(ObservabilityMiddleware), *middleware_stack(settings, security)],
    )
