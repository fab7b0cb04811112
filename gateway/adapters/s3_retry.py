"""Which S3 failures are retried, how long to wait between attempts, and when to stop asking.

Every S3 call of :class:`gateway.adapters.s3.S3BlobStore` goes through one retry loop (its
``_attempt``), with botocore's own retries switched off, because botocore retries timeouts too:
with a store that accepts connections but never answers (a hung or SIGSTOPped server, a
stalled load balancer) three attempts of a 6 s read timeout keep a client waiting 18 s or more,
while an internet client (and the issue's bound) expects an answer within 10 s.

Failures come in five kinds (:func:`classify`):

========== ============================================================= ======= =============
kind       what                                                          retried trips breaker
========== ============================================================= ======= =============
throttled  SlowDown / 503 / 429 and the other throttling codes           yes     no
server     500, 502, 504, InternalError, RequestTimeout: the store        yes     no
           answered, so it is alive
unreachable connection refused, reset or closed before an answer          yes     yes
stalled    connect or read timeout: nothing arrived for a whole timeout   no      yes
other      any other answer (404, 412, 403...), bad credentials, local   no      no
           file errors
========== ============================================================= ======= =============

Backoff is exponential with full jitter, ``uniform(0, min(20, base * 2**(attempt-1)))``, the
base 1 s after throttling (S3 asks for a lower request rate) and 50 ms otherwise: botocore's
"standard" mode numbers. With ``max_attempts`` = 3 a throttled call waits at most 1 + 2 = 3 s
in all before it gives up.

The breaker (:class:`StoreBreaker`): once a call ended *unreachable* or *stalled* the store is
taken as down for :data:`COOLDOWN` seconds, and calls fail at once instead of each waiting out
its own timeout (a STOW's clean-up deletes, queued calls, later requests). After the cool-down
calls go through again; the first success (or readiness probe) closes it.
"""

from __future__ import annotations

import enum
import logging
import random
import threading
import time

from botocore.exceptions import (
    ClientError,
    ConnectTimeoutError,
    HTTPClientError,
    IncompleteReadError,
    ReadTimeoutError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from gateway.errors import StorageError

log = logging.getLogger("gateway.adapters.s3")

COOLDOWN = 3.0  # seconds a store that stalled or refused is not asked again
MAX_BACKOFF = 20.0
_THROTTLED_BASE = 1.0
_OTHER_BASE = 0.05
_JITTER = random.Random()

# Error codes S3 and compatible stores use when a client is over its request rate.
THROTTLING_CODES = frozenset(
    {
        "SlowDown",
        "503",
        "ServiceUnavailable",  # S3's other 503 code: "Reduce your request rate"
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "RequestThrottled",
        "TooManyRequests",
        "TooManyRequestsException",
        "429",
        "BandwidthLimitExceeded",
    }
)
# Answers that say the store failed this once: worth another attempt (botocore's list).
SERVER_ERROR_CODES = frozenset(
    {"500", "502", "504", "InternalError", "RequestTimeout", "RequestTimeoutException", "PriorRequestNotComplete"}
)


class Failure(enum.Enum):
    THROTTLED = "throttled"
    SERVER = "server"
    UNREACHABLE = "unreachable"
    STALLED = "stalled"
    FINAL = "other"

    @property
    def retryable(self) -> bool:
        return self in (Failure.THROTTLED, Failure.SERVER, Failure.UNREACHABLE)

    @property
    def store_down(self) -> bool:
        return self in (Failure.UNREACHABLE, Failure.STALLED)


def error_code(exc: ClientError) -> str:
    """The S3 error code, or the HTTP status for answers without a body (HEAD: "404", "503")."""
    error = exc.response.get("Error", {})
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "")
    return str(error.get("Code") or status)


def classify(exc: BaseException) -> Failure:
    if isinstance(exc, ClientError):
        code = error_code(exc)
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in THROTTLING_CODES or status in (429, 503):
            return Failure.THROTTLED
        if code in SERVER_ERROR_CODES or status in (500, 502, 504):
            return Failure.SERVER
        return Failure.FINAL
    # ConnectTimeoutError is a ConnectionError in botocore's tree: ask about timeouts first.
    if isinstance(exc, (ConnectTimeoutError, ReadTimeoutError, TimeoutError)):
        return Failure.STALLED
    # Refused, reset, closed, a proxy or TLS failure, a truncated body: the store was not reached.
    if isinstance(exc, (BotoConnectionError, HTTPClientError, IncompleteReadError, ConnectionError)):
        return Failure.UNREACHABLE
    return Failure.FINAL  # other botocore errors (credentials, parameters), or a local file's OSError


def backoff(failure: Failure, attempt: int, rng: random.Random | None = None) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based): full jitter."""
    base = _THROTTLED_BASE if failure is Failure.THROTTLED else _OTHER_BASE
    ceiling = min(MAX_BACKOFF, base * 2.0 ** (attempt - 1))
    return (rng or _JITTER).uniform(0, ceiling)


def worst_case_backoff(max_attempts: int) -> float:
    """The longest a call can sleep between its attempts (all of them throttled)."""
    return sum(min(MAX_BACKOFF, _THROTTLED_BASE * 2.0 ** (n - 1)) for n in range(1, max_attempts))


class StoreUnavailable(StorageError):
    """Raised without asking the store: it was found down less than COOLDOWN seconds ago."""


class StoreBreaker:
    """Whether the store was found down lately (thread-safe: checked from worker threads)."""

    def __init__(self, name: str, cooldown: float = COOLDOWN) -> None:
        self._name = name
        self._cooldown = cooldown
        self._lock = threading.Lock()
        self._open_until = 0.0
        self._down_since: float | None = None
        self._reason = ""

    @property
    def down(self) -> bool:
        """True from a failure that tripped it until the next success."""
        return self._down_since is not None

    def check(self) -> None:
        """Raise :class:`StoreUnavailable` while the cool-down runs."""
        with self._lock:
            remaining = self._open_until - time.monotonic()
            reason = self._reason
        if remaining > 0:
            raise StoreUnavailable(
                f"{self._name} unavailable ({reason}); not asked again for {remaining:.1f} s",
                retry_after=max(1, round(remaining + 0.5)),
            )

    def failed(self, failure: Failure, reason: str) -> None:
        if not failure.store_down:
            return
        with self._lock:
            now = time.monotonic()
            first = self._down_since is None
            if first:
                self._down_since = now
            self._open_until = now + self._cooldown
            self._reason = reason
        if first:
            log.warning(
                "%s is unavailable (%s): calls fail at once for %.0f s at a time", self._name, reason, self._cooldown
            )

    def succeeded(self) -> None:
        if self._down_since is None:  # the common case, without the lock
            return
        with self._lock:
            since, self._down_since, self._open_until = self._down_since, None, 0.0
        if since is not None:
            log.warning("%s is available again after %.1f s", self._name, time.monotonic() - since)
