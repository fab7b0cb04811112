"""``dicomweb-gateway serve``: run the app under uvicorn."""

from __future__ import annotations

import logging
import socket
import ssl
import sys

import anyio
import uvicorn

from gateway.app import build_index, build_store, check_at_start, create_app
from gateway.errors import GatewayError
from gateway.http.middleware.broken_off import BrokenOffResponses
from gateway.http.middleware.deadlines import protocol_with_limits
from gateway.http.middleware.hosts import default_trusted_hosts
from gateway.malloc import cap_malloc_arenas, trim_periodically
from gateway.observability import configure_logging
from gateway.security.tls import server_context
from gateway.settings import Settings
from gateway.spool import sweep_dead_spools


async def preflight(settings: Settings) -> str | None:
    """Open the store and the index once before serving; a problem is one line, not a traceback.
    Network peers that are merely unavailable are not a problem here (see check_at_start)."""
    try:
        store = build_store(settings)
    except (GatewayError, OSError, ValueError) as exc:
        return f"cannot open the object store {settings.effective_storage_url}: {exc}"
    try:
        index = build_index(settings)
        try:
            await check_at_start(settings, store, index)
        finally:
            await index.aclose()
    except GatewayError as exc:
        return exc.reason
    except (OSError, ValueError) as exc:
        return f"cannot open the index {settings.effective_index_url}: {exc}"
    finally:
        await store.aclose()
    return None


def _base_url(settings: Settings, *, tls: bool) -> str:
    """The DICOMweb base URL a client on this machine would use (the start-up log names it)."""
    host = settings.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1" if host != "::" else "::1"  # every interface: this machine's loopback is one
    if ":" in host:
        host = f"[{host}]"  # an IPv6 literal (RFC 3986 3.2.2)
    return f"{'https' if tls else 'http'}://{host}:{settings.port}{settings.base_path}"


class _Server(uvicorn.Server):
    """uvicorn's server, which also logs the DICOMweb base URL once it listens (uvicorn's own
    line names the socket only, without the base path)."""

    def __init__(self, config: uvicorn.Config, *, base_url: str) -> None:
        super().__init__(config)
        self._base_url = base_url

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            logging.getLogger(__name__).info("DICOMweb base URL: %s", self._base_url)


def serve(settings: Settings) -> int:
    cap_malloc_arenas()  # before any worker thread (gateway.malloc: RSS creep under load)
    trim_periodically(settings.memory_trim_interval)
    configure_logging(settings.log_level, json_lines=settings.log_format == "json")
    problem = anyio.run(preflight, settings)
    if problem:
        print(f"dicomweb-gateway: {problem}", file=sys.stderr)
        return 2
    # What killed gateway processes left in the spool (gateway.spool); live ones keep theirs.
    swept = sweep_dead_spools(settings.effective_spool_dir)
    if swept:
        logging.getLogger(__name__).info("removed %d spool file(s) left by stopped gateway processes", swept)
    tls = settings.tls
    context: ssl.SSLContext | None = None
    if tls.cert_file is not None and tls.key_file is not None:
        try:
            context = server_context(tls.cert_file, tls.key_file, min_version=tls.min_version)
        except (OSError, ssl.SSLError) as exc:
            print(f"dicomweb-gateway: cannot use the TLS certificate or key: {exc}", file=sys.stderr)
            return 2
    if default_trusted_hosts(settings) == ("*",) and not settings.trusted_hosts:
        logging.getLogger(__name__).warning(
            "trusted_hosts is not set and %s names no host: any Host header is accepted, and URLs in "
            "responses follow it; set trusted_hosts or public_base_url",
            settings.host,
        )
    limits = settings.limits
    app = BrokenOffResponses(create_app(settings))
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        # Logging is configured above (JSON lines with request ids); the access log is written by
        # gateway.http.middleware.metrics, which knows the request id and the route.
        log_config=None,
        access_log=False,
        proxy_headers=False,
        server_header=False,
        # DICOM objects are rarely compressible enough to pay for gzip; never compress here.
        timeout_keep_alive=limits.keep_alive_timeout,
        # Slow or flooding clients cannot hold connections or memory: a deadline and size caps
        # on each request head (slowloris, header floods), and a cap on open connections.
        http=protocol_with_limits(
            header_timeout=limits.header_timeout,
            max_head_bytes=limits.max_head_bytes,
            max_header_fields=limits.max_header_fields,
            max_connections=limits.max_connections,
        ),
        h11_max_incomplete_event_size=limits.max_head_bytes,
        ssl_context_factory=(lambda _config, _default: context) if context is not None else None,
    )
    server = _Server(config, base_url=_base_url(settings, tls=context is not None))
    try:
        server.run()
    except OSError as exc:  # e.g. address already in use
        print(f"dicomweb-gateway: cannot serve on {settings.host}:{settings.port}: {exc.strerror}", file=sys.stderr)
        return 1
    return 0 if server.started else 1
