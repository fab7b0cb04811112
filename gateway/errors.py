"""The gateway's one error tree.

Every failure the gateway reports to a client is one of these; adapters translate library
errors into them (keeping the original as ``__cause__``) and ``http/errors.py`` maps them to
HTTP responses in one place::

    GatewayError                      500  (never raised directly)
    ├── BadRequest                    400  malformed request or query
    │   └── InvalidUID                400  a UID fails PS3.5 9.1
    ├── NotFound                      404  unknown study / series / instance / frame
    ├── NotAcceptable                 406  no acceptable representation (PS3.18 8.7.3)
    ├── RequestTimeout                408  the client stopped sending its request body
    ├── Conflict                      409  e.g. a different object under a stored SOP Instance UID
    ├── PayloadTooLarge               413  a configured input limit was exceeded
    ├── UnsupportedMediaType          415  STOW body is not what PS3.18 10.5 allows
    ├── RangeNotSatisfiable           416  a byte range past the end of a frame or bulk data
    ├── ClientDisconnected            499  the client hung up before its request was complete
    ├── UpstreamError                 502  a PACS refused, failed or could not be reached
    ├── ServiceUnavailable            503  object store or index unavailable (Retry-After)
    └── UpstreamTimeout               504  a PACS did not answer in time
"""

from __future__ import annotations


class GatewayError(Exception):
    """Base class; ``status`` is the HTTP status the error maps to."""

    status: int = 500

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class BadRequest(GatewayError):
    status = 400


class InvalidUID(BadRequest):
    pass


class NotFound(GatewayError):
    status = 404


class NotAcceptable(GatewayError):
    status = 406


class RequestTimeout(GatewayError):
    status = 408


class Conflict(GatewayError):
    status = 409


class OperationTakenOver(Conflict):
    """A replica's long-running operation was taken over by another replica (its heartbeat had
    stopped, gateway.services.bulk_update): it may not commit any more of it."""


class PayloadTooLarge(GatewayError):
    status = 413


class UnsupportedMediaType(GatewayError):
    status = 415


class RangeNotSatisfiable(GatewayError):
    """A ``Range`` that selects no byte of the value; ``length`` is the value's size (the 416
    answer says it in ``Content-Range: bytes */length``, RFC 9110 15.5.17)."""

    status = 416

    def __init__(self, reason: str, length: int) -> None:
        super().__init__(reason)
        self.length = length


class ClientDisconnected(GatewayError):
    """The client closed the connection mid-request: no answer can reach it, so nothing was
    acknowledged. 499 is nginx's "client closed request", seen only in logs and metrics."""

    status = 499


class UpstreamError(GatewayError):
    status = 502


class ServiceUnavailable(GatewayError):
    status = 503

    def __init__(self, reason: str, *, retry_after: int = 5) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class UpstreamTimeout(GatewayError):
    status = 504


class StorageError(ServiceUnavailable):
    """The object store failed (unreachable, refused, throttled past retries)."""


class MetadataNotWritten(StorageError):
    """``BlobStore.put_instance`` created the object but could not write its metadata: the
    object stays, unindexed, for the writer to undo (or ``reindex --repair`` to sweep)."""


class IndexError_(ServiceUnavailable):
    """The index database failed."""


class IndexOutcomeUnknown(IndexError_):
    """The connection broke while a commit was under way and the database cannot be asked since:
    the row may or may not exist. A writer must then keep what the row would point to (an
    uncommitted object is swept by ``reindex --repair``; a row without its object would be a lie)."""


class AlreadyExists(GatewayError):
    """Create-only write found the key taken. Internal: never reaches a client as such."""

    status = 409


class SettingsError(Exception):
    """A setting is missing, malformed or inconsistent; the message is one line for the user.

    Not a client failure (outside the tree above): the gateway refuses to start with it.
    """
