"""The composition root: the only module that knows every adapter and wires them together."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from starlette.applications import Starlette

from gateway.dicom.parse import ParseLimits
from gateway.http.context import Gateway
from gateway.http.errors import EXCEPTION_HANDLERS
from gateway.http.routes import all_routes
from gateway.ports import BlobStore, Index
from gateway.services.stow import StowService
from gateway.services.wado import WadoService
from gateway.settings import Settings


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
    )


def build_index(settings: Settings) -> Index:
    from gateway.adapters.sqlite_index import SqliteIndex

    url = urlsplit(settings.effective_index_url)
    path = Path(url.path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return SqliteIndex(path)


def build_gateway(settings: Settings, store: BlobStore, index: Index) -> Gateway:
    limits = settings.limits
    parse_limits = ParseLimits(
        max_sequence_depth=limits.max_sequence_depth, max_inflated_bytes=limits.max_inflated_bytes
    )
    return Gateway(
        settings=settings,
        store=store,
        index=index,
        stow=StowService(store, index, parse_limits),
        wado=WadoService(store, index),
    )


def create_app(settings: Settings, *, store: BlobStore | None = None, index: Index | None = None) -> Starlette:
    """The ASGI app. Adapters are built in the lifespan (or passed in, e.g. by tests)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        own_store = store or build_store(settings)
        own_index = index or build_index(settings)
        try:
            await own_store.ping()
            await own_index.ping()
            app.state.gateway = build_gateway(settings, own_store, own_index)
            yield
        finally:
            if index is None:
                await own_index.aclose()
            if store is None:
                await own_store.aclose()

    handlers: Any = EXCEPTION_HANDLERS
    return Starlette(routes=all_routes(settings.base_path), exception_handlers=handlers, lifespan=lifespan)
