"""Metrics (Prometheus) and request ids: what every part of the gateway reports through.

One registry (:data:`REGISTRY`, served at ``/metrics`` by :mod:`gateway.http.middleware.metrics`) holds
every metric, so that adapters and services report with plain function calls, without wiring:

* HTTP — counted by the ASGI middleware in :mod:`gateway.http.middleware.metrics`:
  ``dicomweb_gateway_http_requests_total{method,route,status}``,
  ``dicomweb_gateway_http_request_duration_seconds{method,route,status}`` (``route`` is the
  route's template, e.g. ``/dicomweb/studies/{study}/series``, never the concrete path),
  ``dicomweb_gateway_http_requests_in_flight`` and
  ``dicomweb_gateway_http_body_bytes_total{direction="in"|"out"}``;
* DIMSE — :func:`dimse_operation` (or :func:`observe_dimse`) for each C-ECHO/C-FIND/C-GET/
  C-MOVE/C-STORE a PACS node is asked: ``dicomweb_gateway_dimse_operations_total`` and
  ``dicomweb_gateway_dimse_duration_seconds``, both by ``{node,operation,outcome}``;
* caches — :func:`cache_lookup`: ``dicomweb_gateway_cache_lookups_total{cache,result}``
  (``result`` hit or miss; ``cache`` e.g. ``thumbnail``, ``frames``, ``pacs``);
  and what the bounded in-memory caches hold, :func:`cache_size`:
  ``dicomweb_gateway_cache_bytes{cache}``;
* index — :func:`index_memory`: ``dicomweb_gateway_index_memory_bytes``, the memory the embedded
  SQLite library holds (page caches of every connection, statements), so that RSS growth can be
  told apart from it;
* STOW — :func:`stow_instances`: ``dicomweb_gateway_stow_instances_total{outcome}`` (stored,
  failed);
* object store — :func:`store_error` and :func:`store_retry`:
  ``dicomweb_gateway_store_errors_total{kind}`` (calls that failed, after their retries: kind
  throttled, server, unreachable, stalled, other, or circuit_open when refused without asking a
  store found down) and ``dicomweb_gateway_store_retries_total{kind}``; an outage shows as a
  rising ``unreachable``/``stalled``/``circuit_open``.

Request ids: the middleware takes a sane incoming ``X-Request-ID`` or makes one, answers with it,
and keeps it in a context variable for the request's duration (worker threads started with
``anyio.to_thread`` inherit it). :func:`current_request_id` gives it to whoever logs or talks to a
PACS on the request's behalf, and :class:`JsonFormatter` puts it in every log line.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import re
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

__all__ = [
    "REGISTRY",
    "DimseObservation",
    "JsonFormatter",
    "cache_lookup",
    "cache_size",
    "configure_logging",
    "current_request_id",
    "dimse_operation",
    "dimse_scp_rejected",
    "index_memory",
    "last_dimse",
    "metrics_exposition",
    "observe_dimse",
    "observe_dimse_scp",
    "store_error",
    "store_retry",
    "stow_instances",
]

REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)
GCCollector(registry=REGISTRY)

# Latency buckets from a cached QIDO (~1 ms) to a large series retrieve from a PACS (minutes).
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)

HTTP_REQUESTS = Counter(
    "dicomweb_gateway_http_requests", "HTTP requests answered", ["method", "route", "status"], registry=REGISTRY
)
HTTP_DURATION = Histogram(
    "dicomweb_gateway_http_request_duration_seconds",
    "HTTP request latency, until the response body was sent",
    ["method", "route", "status"],
    buckets=_BUCKETS,
    registry=REGISTRY,
)
HTTP_IN_FLIGHT = Gauge("dicomweb_gateway_http_requests_in_flight", "HTTP requests being answered", registry=REGISTRY)
HTTP_BYTES = Counter(
    "dicomweb_gateway_http_body_bytes", "HTTP body bytes received (in) and sent (out)", ["direction"], registry=REGISTRY
)
DIMSE_OPERATIONS = Counter(
    "dicomweb_gateway_dimse_operations",
    "DIMSE operations asked of PACS nodes",
    ["node", "operation", "outcome"],
    registry=REGISTRY,
)
DIMSE_DURATION = Histogram(
    "dicomweb_gateway_dimse_duration_seconds",
    "DIMSE operation latency per PACS node",
    ["node", "operation", "outcome"],
    buckets=_BUCKETS,
    registry=REGISTRY,
)
DIMSE_SCP_OPERATIONS = Counter(
    "dicomweb_gateway_dimse_scp_operations",
    "DIMSE operations answered by the gateway's front door, by peer, operation and final status class",
    ["peer", "operation", "outcome"],
    registry=REGISTRY,
)
DIMSE_SCP_DURATION = Histogram(
    "dicomweb_gateway_dimse_scp_duration_seconds",
    "DIMSE front door operation latency, by peer and operation",
    ["peer", "operation", "outcome"],
    buckets=_BUCKETS,
    registry=REGISTRY,
)
DIMSE_SCP_REJECTIONS = Counter(
    "dicomweb_gateway_dimse_scp_rejected_associations",
    "Associations the DIMSE front door rejected, by PS3.8 reason",
    ["reason"],
    registry=REGISTRY,
)
CACHE_LOOKUPS = Counter(
    "dicomweb_gateway_cache_lookups", "Cache lookups by cache and result", ["cache", "result"], registry=REGISTRY
)
CACHE_BYTES = Gauge(
    "dicomweb_gateway_cache_bytes", "Bytes held by a bounded in-memory cache", ["cache"], registry=REGISTRY
)
INDEX_MEMORY = Gauge(
    "dicomweb_gateway_index_memory_bytes",
    "Memory held by the embedded index library (SQLite page caches and statements); 0 for PostgreSQL",
    registry=REGISTRY,
)
STOW_INSTANCES = Counter(
    "dicomweb_gateway_stow_instances", "STOW-RS instances by outcome", ["outcome"], registry=REGISTRY
)
STORE_ERRORS = Counter(
    "dicomweb_gateway_store_errors", "Object store calls that failed, by kind of failure", ["kind"], registry=REGISTRY
)
STORE_RETRIES = Counter(
    "dicomweb_gateway_store_retries", "Object store call attempts retried, by kind", ["kind"], registry=REGISTRY
)
WEBHOOK_DELIVERIES = Counter(
    "dicomweb_gateway_webhook_deliveries",
    "Webhook POSTs by webhook and outcome (acknowledged: a 2xx; failed: retried later)",
    ["webhook", "outcome"],
    registry=REGISTRY,
)
WEBHOOK_PENDING = Gauge(
    "dicomweb_gateway_webhook_pending",
    "Change-feed entries after a webhook's cursor (not yet acknowledged or passed by its filters)",
    ["webhook"],
    registry=REGISTRY,
)
WEBHOOK_FAILING = Gauge(
    "dicomweb_gateway_webhook_failing",
    "Failed attempts of the entry a webhook is retrying now on this replica (0: delivering normally)",
    ["webhook"],
    registry=REGISTRY,
)


def metrics_exposition() -> tuple[bytes, str]:
    """The registry in Prometheus text format, and its content type."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


# -- what adapters and services call ------------------------------------------------------------


def observe_dimse(node: str, operation: str, outcome: str, seconds: float) -> None:
    """One DIMSE operation: ``operation`` e.g. ``C-FIND``; ``outcome`` one of success, warning,
    failure, refused, timeout, cancel (PS3.7 status classes, plus what the network did)."""
    DIMSE_OPERATIONS.labels(node, operation, outcome).inc()
    DIMSE_DURATION.labels(node, operation, outcome).observe(seconds)
    _LAST_DIMSE[node] = (operation, outcome, time.monotonic())


# The last operation per PACS node, for /readyz: what the gateway saw, without probing the PACS.
_LAST_DIMSE: dict[str, tuple[str, str, float]] = {}


def last_dimse(node: str) -> tuple[str, str, float] | None:
    """(operation, outcome, seconds ago) of the last DIMSE operation with ``node``, if any."""
    found = _LAST_DIMSE.get(node)
    return None if found is None else (found[0], found[1], time.monotonic() - found[2])


@dataclass
class DimseObservation:
    """Set ``outcome`` inside a :func:`dimse_operation` block when it is not plain success."""

    outcome: str = "success"


@contextlib.contextmanager
def dimse_operation(node: str, operation: str) -> Iterator[DimseObservation]:
    """Time a DIMSE operation; an exception leaving the block records ``failure`` (unless the
    block set another outcome first)::

        with dimse_operation(node.name, "C-FIND") as op:
            status = ...
            if is_warning(status):
                op.outcome = "warning"
    """
    observation = DimseObservation()
    started = time.perf_counter()
    try:
        yield observation
    except BaseException:
        if observation.outcome == "success":
            observation.outcome = "failure"
        raise
    finally:
        observe_dimse(node, operation, observation.outcome, time.perf_counter() - started)


def observe_dimse_scp(peer: str, operation: str, outcome: str, seconds: float) -> None:
    """One operation answered by the DIMSE front door (``outcome``: success, warning, failure, cancel)."""
    DIMSE_SCP_OPERATIONS.labels(peer, operation, outcome).inc()
    DIMSE_SCP_DURATION.labels(peer, operation, outcome).observe(seconds)


def dimse_scp_rejected(reason: str) -> None:
    DIMSE_SCP_REJECTIONS.labels(reason).inc()


def cache_lookup(cache: str, *, hit: bool) -> None:
    """One lookup in a per-replica cache (thumbnails, decoded frames, PACS retrieves)."""
    CACHE_LOOKUPS.labels(cache, "hit" if hit else "miss").inc()


def cache_size(cache: str, read: Callable[[], float]) -> None:
    """Report the bytes ``cache`` holds by calling ``read`` at each scrape (the last cache
    registered under a name is the one reported: one per process outside tests)."""
    CACHE_BYTES.labels(cache).set_function(read)


def index_memory(read: Callable[[], float]) -> None:
    """Report the index library's memory by calling ``read`` at each scrape."""
    INDEX_MEMORY.set_function(read)


def stow_instances(*, stored: int = 0, failed: int = 0) -> None:
    """Instances a STOW-RS request stored or refused."""
    if stored:
        STOW_INSTANCES.labels("stored").inc(stored)
    if failed:
        STOW_INSTANCES.labels("failed").inc(failed)


def store_error(kind: str) -> None:
    """An object store call failed for good (its retries spent, or refused by the breaker)."""
    STORE_ERRORS.labels(kind).inc()


def store_retry(kind: str) -> None:
    """An object store call attempt failed and is retried."""
    STORE_RETRIES.labels(kind).inc()


def webhook_delivery(webhook: str, *, acknowledged: bool) -> None:
    """One webhook POST and its outcome."""
    WEBHOOK_DELIVERIES.labels(webhook, "acknowledged" if acknowledged else "failed").inc()


def webhook_state(webhook: str, *, pending: int, failing: int) -> None:
    """A webhook's entries pending and the failed attempts of the one being retried."""
    WEBHOOK_PENDING.labels(webhook).set(pending)
    WEBHOOK_FAILING.labels(webhook).set(failing)


# -- request ids and logs -------------------------------------------------------------------------

_REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("dicomweb_gateway_request_id", default=None)
_SANE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def current_request_id() -> str | None:
    """The id of the HTTP request being served (None outside a request): log it, and pass it to
    a PACS's log context (e.g. in a DIMSE association's log lines) so one request can be followed
    across systems."""
    return _REQUEST_ID.get()


def new_request_id(incoming: str | None) -> str:
    """The client's ``X-Request-ID`` when it is sane (bounded, header- and log-safe), else a new one."""
    if incoming is not None and _SANE_ID.fullmatch(incoming):
        return incoming
    return uuid.uuid4().hex


@contextlib.contextmanager
def request_context(request_id: str) -> Iterator[None]:
    token = _REQUEST_ID.set(request_id)
    try:
        yield
    finally:
        _REQUEST_ID.reset(token)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request id (when serving one),
    exception text, and any ``extra={...}`` fields given to the logging call."""

    _STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None) or current_request_id()
        if request_id:
            entry["request_id"] = request_id
        for key, value in record.__dict__.items():
            if key not in self._STANDARD and key not in entry and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure_logging(level: str, *, json_lines: bool = True) -> None:
    """Log to stderr, as JSON lines (default) or as plain text, for the whole process
    (uvicorn's loggers included: pass ``log_config=None`` to uvicorn so it leaves them be)."""
    handler = logging.StreamHandler(sys.stderr)
    if json_lines:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
