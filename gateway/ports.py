"""The small interfaces the services depend on, and the records that cross them.

Data flows routes → services → ports ← adapters: services import only this module (and the
pure ``gateway.dicom`` helpers); adapters implement these Protocols.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from gateway.dicom.query import QidoQuery

# Re-exported: the records' home is the pure floor below (gateway.dicom.records).
from gateway.dicom.records import InstanceRecord as InstanceRecord
from gateway.dicom.records import PixelDescription as PixelDescription
from gateway.dicom.records import ReceivedInstance as ReceivedInstance
from gateway.dicom.records import Span as Span
from gateway.dicom.restriction import Restriction
from gateway.dicom.uids import instance_key

# A DICOM JSON object (PS3.18 F.2): {"0020000D": {"vr": "UI", "Value": [...]}, ...}
DicomJson = dict[str, Any]

# ---------------------------------------------------------------------------------------------
# Object store
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    sha256: str | None  # hex digest when the store knows it (S3 user metadata / computed)


@dataclass(frozen=True)
class ListedObject:
    """One object as a listing sees it (no digest: listings do not read objects)."""

    key: str
    size: int
    modified: float  # last write, seconds since the epoch


@dataclass(frozen=True)
class UnfinishedWrite:
    """A write that neither completed nor was cleaned up, because its process died mid-way: an
    S3 multipart upload never completed nor aborted (its parts are stored, and billed, until
    aborted), or a file store temp file. Never visible as an object."""

    key: str  # the object key it was writing
    started: float  # seconds since the epoch
    handle: str  # what :meth:`BlobStore.discard_unfinished` needs (upload id, temp file path)


class BlobStore(Protocol):
    """Object storage for Part 10 files and their metadata JSON (local disk or S3).

    Errors: :class:`gateway.errors.AlreadyExists` for a taken key on create-only writes,
    :class:`gateway.errors.NotFound` for a missing key, :class:`gateway.errors.StorageError`
    when the store itself fails.
    """

    async def put_file(self, key: str, path: Path, *, sha256: str, content_type: str) -> None:
        """Create ``key`` from a local file, create-only: a taken key raises AlreadyExists and
        leaves the existing object untouched. Returns only once the object is durable."""

    async def put_bytes(self, key: str, data: bytes, *, content_type: str) -> None:
        """Write a small object, replacing any existing one (metadata JSON). Durable on return."""

    async def put_instance(self, key: str, path: Path, *, sha256: str, metadata_key: str, metadata: bytes) -> None:
        """:meth:`put_file` of the instance's Part 10 file under ``key``, then :meth:`put_bytes`
        of its DICOM JSON under ``metadata_key``, done as one step where that is cheaper (the
        file store: one thread hop, one directory fsync for both). Durable on return. A taken
        ``key`` raises AlreadyExists with nothing written; a failure of the metadata write, once
        the object is created, raises :class:`gateway.errors.MetadataNotWritten` (the object
        stays); any other error means no object was created."""

    async def stat(self, key: str) -> ObjectInfo | None:
        """Size and digest of ``key``, or None when absent."""

    def stream(self, key: str, *, chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
        """The object's bytes in chunks; NotFound before the first chunk when absent."""

    async def read_range(self, key: str, offset: int, length: int) -> bytes:
        """Exactly ``length`` bytes from ``offset`` (one ranged read)."""

    async def read_all(self, key: str) -> bytes:
        """The whole object; for small objects only (metadata JSON)."""

    async def download(self, key: str, path: Path) -> None:
        """Copy the object to a local file (reindex, transcoding)."""

    async def delete(self, key: str) -> None:
        """Remove ``key``; absent keys are not an error."""

    def list_keys(self, prefix: str = "") -> AsyncIterator[str]:
        """Every key under ``prefix``, in no guaranteed order."""

    async def ping(self) -> None:
        """Raise StorageError when the store cannot be reached (readiness)."""

    async def aclose(self) -> None:
        """Release clients and thread pools."""

    def list_objects(self, prefix: str = "") -> AsyncIterator[ListedObject]:
        """Every object under ``prefix`` with its size and modification time, in no guaranteed
        order (``reindex --repair`` needs their age: young ones may be uploads in flight)."""

    def list_unfinished(self, started_before: float) -> AsyncIterator[UnfinishedWrite]:
        """Writes started before ``started_before`` (seconds since the epoch) that never
        finished: what a killed process leaves behind (see :class:`UnfinishedWrite`)."""

    async def discard_unfinished(self, write: UnfinishedWrite) -> None:
        """Abort or remove one unfinished write; one already gone is not an error."""


# ---------------------------------------------------------------------------------------------
# Index
# ---------------------------------------------------------------------------------------------


# A removal (see Index.begin_removal) whose process died lapses after this many seconds. Long
# enough for a slow store to finish deleting two objects (its calls are bounded by the S3
# timeouts), short enough that an instance is not blocked for long after a crash.
REMOVAL_LAPSE = 300.0


class AddOutcome(enum.Enum):
    INSERTED = "inserted"
    IDENTICAL = "identical"  # same SOP Instance UID with the same bytes already indexed
    CONFLICT = "conflict"  # same SOP Instance UID with different bytes: refused, nothing changed
    # A removal of this SOP Instance UID (an undone upload, a sweep) is deleting its objects right
    # now: nothing changed; write the objects again once it is over, then add again.
    REMOVING = "removing"
    # The study is indexed under another patient (PatientID, IssuerOfPatientID) than the
    # instance names: refused, nothing changed (a "relational mismatch").
    PATIENT_MISMATCH = "patient_mismatch"


class KeepIf(enum.Enum):
    """When :meth:`Index.begin_removal` must leave an instance alone (and answer None)."""

    INDEXED = "indexed"  # any row at this key: the objects are committed (sweeps of orphans)
    SHARED = "shared"  # a row another upload was also told is stored (undoing one's own upload)
    NEVER = "never"  # remove whatever the row says (cache expiry)


@dataclass(frozen=True)
class RemovalCause:
    """Why an instance leaves the index, as its change-feed entry records it (``origin``:
    ``delete``, ``reject``, ``expiry``, ``undo``, ``repair``); ``principal`` (its audit id) and
    ``reason`` (a rejection's code, e.g. ``113039^DCM``) when a request caused it."""

    origin: str
    principal: str | None = None
    reason: str | None = None


UNDONE = RemovalCause("undo")  # an upload refused as a whole, or objects nobody was told are stored


@dataclass(frozen=True)
class RetentionMatch:
    """Which instances a retention rule selects (:meth:`Index.retention_candidates`). ``origin``:
    an exact origin (``stow``, ``import``, ``dimse:<name>``, ``pacs:<name>``) or, ending in
    ``:``, every origin with that prefix (``dimse:``, ``pacs:``); "" any. ``modality`` (of the
    series) and ``sop_class``: "" any. Instances cached from a PACS that an upload was told are
    stored (``shared``) are never matched by a ``pacs:`` origin: they are not mere copies."""

    origin: str = ""
    modality: str = ""
    sop_class: str = ""
    # True: the time limit applies to the last use (the later of when the instance was stored
    # and when its series was last read, Index.record_access), not to when it was stored.
    idle: bool = False


@dataclass(frozen=True)
class RetentionCandidate:
    """An instance a rule selects, with when it was stored and when its series was last read
    (seconds since the epoch; None: not since access times are recorded)."""

    study_uid: str
    series_uid: str
    sop_uid: str
    origin: str
    stored_at: float
    accessed_at: float | None = None

    @property
    def last_used(self) -> float:
        return max(self.stored_at, self.accessed_at or 0.0)


class ChangeAction(enum.Enum):
    CREATE = "create"
    DELETE = "delete"
    UPDATE = "update"  # a metadata correction switched the instance to a new version (bulk update)


class ChangeState(enum.Enum):
    """The state of the instance an entry names, decided when the feed is read (Microsoft's
    model): the entry is its latest and a create or update (CURRENT); a later create or update
    replaced it (REPLACED); its latest entry is a delete (DELETED)."""

    CURRENT = "current"
    REPLACED = "replaced"
    DELETED = "deleted"


@dataclass(frozen=True)
class ChangeEntry:
    """One change-feed entry: an instance entered (``create``), left (``delete``) or was corrected
    in (``update``) the index, written in the same transaction as that row. ``sequence`` strictly increases with commit
    order on one database (across replicas on PostgreSQL); ``timestamp`` is seconds since the
    epoch. ``origin``: the record's origin for a create (``stow``, ``dimse:<name>``,
    ``pacs:<name>``), the :class:`RemovalCause` origin for a delete or an update. ``metadata``: the
    instance's DICOM JSON (relative BulkDataURIs) when asked for and it is still indexed."""

    sequence: int
    timestamp: float
    action: ChangeAction
    study_uid: str
    series_uid: str
    sop_uid: str
    origin: str
    state: ChangeState
    principal: str | None = None
    reason: str | None = None
    metadata: bytes | None = None


@dataclass(frozen=True)
class ChangeQuery:
    """Which entries :meth:`Index.changes` returns: those with ``start <= timestamp < end``
    (None: unbounded) and a sequence above ``after``, in sequence order, ``offset`` of them
    skipped (Microsoft's v2: offset counts entries), at most ``limit``; with a ``restriction``
    only its studies' entries (the rule of :mod:`gateway.services.visibility`, applied in the
    database as QIDO's is)."""

    limit: int
    offset: int = 0
    after: int | None = None  # only entries with a greater sequence (a follower's position)
    start: float | None = None
    end: float | None = None
    restriction: Restriction | None = None
    include_metadata: bool = False


@dataclass(frozen=True)
class SearchResult:
    """QIDO rows as DICOM JSON objects (without RetrieveURL: the service adds it)."""

    rows: list[DicomJson]
    more: bool = False  # more matches exist beyond limit/offset (PS3.18 8.3.4.4 Warning)
    extra: dict[str, Any] = field(default_factory=dict)


# An instance's place in the index and the store: (study, series, SOP Instance) UIDs.
InstanceKey = tuple[str, str, str]


class Index(Protocol):
    """The queryable metadata index (SQLite embedded, PostgreSQL shared)."""

    async def add(self, record: InstanceRecord) -> AddOutcome:
        """Insert atomically; concurrent adds of one SOP Instance UID leave exactly one row."""

    async def get(self, study: str | None, series: str | None, sop: str) -> InstanceRecord | None:
        """One instance; ``study``/``series`` None means "any" (WADO-URI looks up by SOP only)."""

    async def instances(self, study: str, series: str | None = None) -> list[InstanceRecord]:
        """All instances of a study or series, ordered by series then instance number."""

    async def search(self, query: QidoQuery) -> SearchResult:
        """Answer a QIDO query (its restriction, if any, applied in the database)."""

    async def begin_removal(
        self, study: str, series: str, sop: str, *, keep_if: KeepIf, cause: RemovalCause = UNDONE
    ) -> str | None:
        """Before deleting an instance's objects: atomically remove its row (unless ``keep_if``
        says to keep it: then None) and record a removal of ``sop`` in progress, so that no
        upload on any replica commits a row for it until :meth:`end_removal` (its ``add`` answers
        REMOVING instead). Returns the removal's token. The index row is the commit point of a
        write, so this is what makes "delete the objects" safe against a concurrent upload.

        When a row is removed, a ``delete`` change-feed entry saying ``cause`` is written in the
        same transaction: the feed says "deleted" exactly when the index no longer serves it
        (a removal that finds no row, e.g. of objects never indexed, writes none)."""

    async def end_removal(self, sop: str, token: str) -> None:
        """The objects are gone: uploads of ``sop`` may commit again. A removal never ended (its
        process died) lapses after :data:`REMOVAL_LAPSE` seconds."""

    async def retention_candidates(
        self, match: RetentionMatch, stored_before: float, limit: int
    ) -> list[RetentionCandidate]:
        """Up to ``limit`` instances ``match`` selects, stored (with ``match.idle``: last used)
        before ``stored_before``, oldest first, outside protected studies (:meth:`set_protected`)."""

    async def record_access(self, series: Collection[tuple[str, str]], now: float) -> None:
        """Note that these (study, series) were read at ``now`` (for ``max_idle_seconds`` rules;
        callers keep it cheap: :class:`gateway.services.access_clock.AccessClock`)."""

    async def set_protected(self, study: str, protected: bool) -> None:
        """Protect ``study`` from retention sweeps, or lift that (kept while the study is absent)."""

    async def is_protected(self, study: str) -> bool:
        """Whether ``study`` is protected from retention sweeps."""

    async def take_lease(self, name: str, holder: str, seconds: float) -> bool:
        """Hold the lease ``name`` for ``seconds`` (renewing it when ``holder`` holds it already);
        False while another holder's lease runs. What one replica at a time may do (the
        retention sweep) runs under it."""

    async def release_lease(self, name: str, holder: str) -> None:
        """Give the lease ``name`` up if ``holder`` holds it (a replica stopping), so that
        another takes it at once rather than when it runs out; another holder's is left."""

    async def clear(self) -> None:
        """Remove every row (reindex), each with its ``delete`` change-feed entry (origin
        ``reindex``); the feed's history stays."""

    async def changes(self, query: ChangeQuery) -> list[ChangeEntry]:
        """Change-feed entries (see :class:`ChangeQuery`), oldest first."""

    async def latest_change(
        self, restriction: Restriction | None = None, *, include_metadata: bool = False
    ) -> ChangeEntry | None:
        """The entry with the highest sequence (of ``restriction``'s studies), None when none."""

    async def ping(self) -> None:
        """Raise IndexError_ when the database cannot be reached (readiness)."""

    async def aclose(self) -> None:
        """Close connections."""

    def instance_keys(self, *, page_size: int = 1000) -> AsyncIterator[InstanceKey]:
        """Every indexed instance, ordered by SOP Instance UID and read in pages of ``page_size``
        rows, each page one short query: safe beside writers, and bounded in memory on millions
        of rows. Rows added or removed meanwhile may or may not be seen."""

    async def indexed(self, keys: Collection[InstanceKey]) -> set[InstanceKey]:
        """Those of ``keys`` that have an index row under exactly that study and series."""


@dataclass(frozen=True)
class KeptVersion:
    """A version of an instance that a correction replaced, kept retrievable until its time is
    over (``bulk_update_keep_original_seconds``): where its object is and what it was."""

    study_uid: str
    series_uid: str
    sop_uid: str
    version: str  # "" the object stored under its UIDs (gateway.dicom.uids.instance_key)
    sha256: str
    size: int
    transfer_syntax: str
    replaced_at: float  # seconds since the epoch

    @property
    def object_key(self) -> str:
        return instance_key(self.study_uid, self.series_uid, self.sop_uid, self.version)


@dataclass(frozen=True)
class Replacement:
    """One instance of a correction: ``record`` describes its new version (already durable in
    the store); it replaces the row only if that still describes ``old_version`` / ``old_sha256``."""

    record: InstanceRecord
    old_version: str
    old_sha256: str


@dataclass(frozen=True)
class Operation:
    """A long-running request (Microsoft's DICOM service operations), kept in the index so that
    ``GET {base}/operations/{id}`` answers from any replica and after a restart. ``request`` and
    ``results`` are JSON objects; ``holder`` is the replica running it."""

    id: str
    kind: str  # "update"
    status: str  # notStarted, running, succeeded, failed
    created: float
    updated: float
    percent_complete: int
    request: dict[str, Any]
    results: dict[str, Any]
    holder: str
    principal: str | None = None


@runtime_checkable
class Corrections(Protocol):
    """Metadata corrections in the index (gateway.services.bulk_update): the switch of a
    study's instances to corrected versions, the versions they replaced, and the operations
    that run them."""

    async def replace_instances(
        self, study: str, replacements: list[Replacement], cause: RemovalCause, *, holder: str | None = None
    ) -> list[str]:
        """In one transaction: with ``holder``, first that the operation named by the new
        records' version is still held by ``holder`` unfinished (else
        :class:`gateway.errors.OperationTakenOver`, nothing changed); then each instance whose
        row still describes the replacement's old version takes its new record (the old version
        kept, :class:`KeptVersion`), with an ``update`` change-feed entry saying ``cause``; the
        study row takes the study attributes of the new records. Returns the SOP Instance UIDs
        switched; the others changed meanwhile (deleted, stored anew, corrected by another
        request) and are left as they are."""

    async def kept_versions(self, sop: str) -> list[KeptVersion]:
        """The replaced versions of ``sop`` still kept, oldest first (the first is the original)."""

    async def expired_versions(self, replaced_before: float, limit: int) -> list[KeptVersion]:
        """Up to ``limit`` kept versions replaced before ``replaced_before``, oldest first."""

    async def forget_version(self, sop: str, version: str) -> None:
        """The kept version's object is gone: forget it."""

    async def save_operation(self, operation: Operation) -> None:
        """Insert or replace ``operation``."""

    async def operation(self, operation_id: str) -> Operation | None:
        """The operation, None when unknown."""

    async def running_operations(self, holder: str) -> list[Operation]:
        """Operations of ``holder`` not finished (notStarted or running)."""

    async def unfinished_operations(self) -> list[Operation]:
        """Operations of any holder not finished (notStarted or running)."""

    async def heartbeat_operation(self, operation_id: str, holder: str, now: float) -> bool:
        """Set the operation's ``updated`` to ``now`` if ``holder`` still holds it unfinished;
        False when it does not (another replica took it over, or it finished)."""

    async def take_over_stale_operations(self, holder: str, updated_before: float, now: float) -> list[Operation]:
        """Make ``holder`` the holder of every unfinished operation of another replica not
        updated since ``updated_before`` (its replica stopped), atomically: of several replicas
        asking at once, each operation goes to one. Returns them as taken over."""


@dataclass(frozen=True)
class WebhookCursor:
    """Where a webhook's delivery stands: ``sequence``, the last change-feed entry it passed
    (acknowledged by the receiver, or skipped by its filters); ``pending``, entries after it;
    ``holder`` and ``lease_until``, the replica delivering it and until when (epoch seconds)."""

    name: str
    sequence: int
    pending: int
    holder: str | None
    lease_until: float | None


@runtime_checkable
class WebhookCursors(Protocol):
    """Each webhook's position in the change feed, kept in the index database beside the feed,
    so that it survives restarts and replicas share it: one replica at a time delivers a webhook
    (the holder of its lease), and an entry is passed only once the receiver acknowledged it."""

    async def add_webhook(self, name: str) -> None:
        """Create the cursor of a webhook not seen before at the feed's newest entry (it is sent
        the entries written from now on); an existing cursor is left as it is."""

    async def claim_webhook(self, name: str, holder: str, until: float) -> int | None:
        """Take or renew the lease of ``name`` for ``holder`` until ``until`` (epoch seconds)
        when it is free, lapsed or already ``holder``'s; its cursor then, else None."""

    async def advance_webhook(self, name: str, holder: str, sequence: int, until: float) -> bool:
        """Move the cursor forward to ``sequence`` (and renew the lease) if ``holder`` still
        holds the lease; False when it does not (another replica took over: stop)."""

    async def release_webhook(self, name: str, holder: str) -> None:
        """Give up ``holder``'s lease (a replica stopping): another takes the webhook at once."""

    async def webhook_cursors(self) -> list[WebhookCursor]:
        """Every webhook's cursor, with the number of entries after it."""


@dataclass(frozen=True)
class PendingCommitment:
    """A storage commitment request (PS3.4 J.3.2) answered and not yet reported, as the index
    keeps it: ``key`` names it (a Transaction UID may be reused while pending, J.3.3.1.2);
    ``references``, (SOP Class UID, SOP Instance UID) of each Referenced SOP Sequence item;
    ``duplicate``, its Transaction UID was in use when it came (it is reported failed)."""

    key: str
    transaction_uid: str
    ae_title: str  # the calling AE title: the peer it is reported to
    address: str  # where the request came from
    references: tuple[tuple[str, str], ...]
    duplicate: bool
    accepted_at: float  # epoch seconds


@runtime_checkable
class PendingCommitments(Protocol):
    """Storage commitment requests answered but not yet reported, kept in the index database so
    that a report still reaches its peer after a restart (PS3.4 J.3.3 gives the SCP no way out
    once it answered the N-ACTION), and so that with several replicas one reports each: the
    holder of its lease, taken over by another once it lapses (its replica stopped)."""

    async def add_commitment(self, pending: PendingCommitment, holder: str, until: float) -> None:
        """Record a request, durably, held by ``holder`` until ``until`` (epoch seconds)."""

    async def claim_commitments(self, holder: str, until: float, *, mine: bool, limit: int) -> list[PendingCommitment]:
        """Take the lease of up to ``limit`` requests, oldest first: those held by nobody or
        whose lease lapsed, and with ``mine`` those ``holder`` holds already (this replica
        restarting). Atomic: of replicas claiming at once, each request goes to one."""

    async def renew_commitment(self, key: str, holder: str, until: float) -> bool:
        """Extend ``holder``'s lease; False when another replica holds it now (or it is gone)."""

    async def remove_commitment(self, key: str) -> None:
        """Forget a request once reported (or given up)."""

    async def release_commitments(self, holder: str) -> None:
        """Give up every lease of ``holder`` (a replica stopping): another takes them at once."""

    async def pending_commitments(self) -> list[PendingCommitment]:
        """Every pending request, oldest first."""


class WebhookSender(Protocol):
    """POSTs one webhook delivery over HTTP(S)."""

    async def post(self, url: str, body: bytes, headers: dict[str, str], *, within: float) -> str | None:
        """None when the receiver answered 2xx (acknowledged); else why not (a status, a
        connection error, no answer within ``within`` seconds), for the log and /readyz. Never raises for the receiver's
        failures."""

    async def aclose(self) -> None:
        """Close connections."""


# ---------------------------------------------------------------------------------------------
# Upstream PACS (DIMSE)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FindResult:
    """A PACS's QIDO rows (DICOM JSON, without RetrieveURL) for one C-FIND.

    ``more`` says the PACS had matches beyond the requested limit (the C-FIND was cancelled);
    ``warnings`` are human-readable notes for a Warning header (e.g. a warning status).
    """

    rows: list[DicomJson]
    more: bool = False
    warnings: tuple[str, ...] = ()


class MoveReceiver(Protocol):
    """Where a PACS's C-MOVE sub-operations arrive (PS3.4 C.4.2.3): the gateway's DIMSE listener
    (``gateway.dimse.move_receiver``), handed to the DIMSE adapter by the composition root.

    Each C-STORE it receives from ``calling_ae`` carrying the Message ID that :meth:`expect`
    returned is spooled and given to ``sink``, on the listener's thread."""

    @property
    def ae_title(self) -> str:
        """The move destination to name in the C-MOVE request (the gateway's own AE title)."""

    def expect(self, calling_ae: str, sink: Callable[[ReceivedInstance], None]) -> int:
        """Register a C-MOVE about to be sent to ``calling_ae``; returns the Message ID to use."""

    def done(self, calling_ae: str, message_id: int, *, failed: bool = False) -> None:
        """The move has ended. ``failed``: the gateway gave up on it, so what the PACS still has
        open towards the listener is aborted unless another of its moves is in progress."""


class Upstream(Protocol):
    """One legacy PACS reached by DIMSE (PS3.4 Annex C Query/Retrieve, Annex B Storage).

    Errors: :class:`gateway.errors.UpstreamError` (refused, rejected, failure status: 502) and
    :class:`gateway.errors.UpstreamTimeout` (no answer in time: 504), each naming the PACS.
    """

    @property
    def name(self) -> str:
        """The configured node name (``origin`` of cached instances is ``pacs:<name>``)."""

    @property
    def ae_title(self) -> str:
        """The PACS's AE title (the RetrieveAETitle of its rows)."""

    async def find(self, query: QidoQuery, limit: int) -> FindResult:
        """C-FIND (Study Root) for a QIDO query; at most ``limit`` rows, then C-CANCEL. With
        ``query.fuzzy`` the association asks for fuzzy person-name matching; a PACS that does not
        grant it matched literally, which ``warnings`` says (PS3.18 8.3.4.x)."""

    def retrieve(
        self,
        study: str,
        series: str | None = None,
        sop: str | None = None,
        *,
        sop_classes: frozenset[str] = frozenset(),
        warnings: list[str] | None = None,
    ) -> AsyncGenerator[ReceivedInstance, None]:
        """C-GET or C-MOVE of a study, series or instance (the level is the deepest UID given),
        yielding each instance as soon as it is received. Raises after the last instance when
        the retrieve failed; closing the iterator early aborts the retrieve.

        ``sop_classes``: the SOP Classes of the instances, when a C-FIND told them (a C-GET then
        proposes them with every syntax, so originals come as stored). ``warnings``: a final
        warning status (some sub-operations failed, PS3.4 C.4.2.1.5) is appended there, as a
        sentence naming the PACS and the counts."""

    async def store(self, path: Path, *, sop_class_uid: str, sop_uid: str, transfer_syntax: str) -> None:
        """C-STORE one Part 10 file to the PACS (STOW forwarding)."""

    async def echo(self) -> float:
        """C-ECHO on a fresh association; the round trip in seconds (association included)."""

    async def aclose(self) -> None:
        """Release pooled associations and abort those in use."""


@dataclass(frozen=True)
class ForwardJob:
    """One instance waiting to be C-STOREd to a PACS (durable until done)."""

    id: int
    node: str
    study_uid: str
    series_uid: str
    sop_uid: str
    attempts: int = 0
    last_error: str | None = None


class BridgeState(Protocol):
    """Small durable state of the PACS bridge: which retrievals completed (so a cached series
    is known to be whole) and the queue of instances to forward to a PACS."""

    async def mark_retrieved(self, key: str, node: str) -> None:
        """Record that the entity ``key`` (``study[/series[/sop]]``) was retrieved whole."""

    async def retrieved(self, keys: list[str]) -> bool:
        """Whether any of ``keys`` was retrieved whole."""

    async def forget_retrieved(self, study: str, series: str) -> None:
        """The cache no longer holds all of the series (its instances expire): remove the marks
        of the study, the series and its instances."""

    async def enqueue_forward(self, node: str, study_uid: str, series_uid: str, sop_uid: str) -> None:
        """Add an instance to the forward queue (idempotent per node and SOP Instance UID)."""

    async def due_forwards(self, now: float, limit: int) -> list[ForwardJob]:
        """Queued jobs whose next attempt is due, oldest first."""

    async def next_forward_at(self) -> float | None:
        """When the earliest queued job is due (seconds since the epoch), None when empty."""

    async def forward_done(self, job_id: int) -> None:
        """Remove a job that succeeded."""

    async def forward_failed(self, job_id: int, error: str, next_attempt: float) -> None:
        """Record a failed attempt and when to try again."""

    async def forward_counts(self) -> dict[str, int]:
        """``{"pending": n, "failing": m}``: jobs queued, and those that failed at least once."""

    async def aclose(self) -> None:
        """Close the database."""


# ---------------------------------------------------------------------------------------------
# Bulk import sources (dicomweb-gateway import)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SourceEntry:
    """One file of an import source, as its listing sees it (nothing read yet).

    ``name`` is how the report and the state file name it: an absolute path, ``ARCHIVE!MEMBER``
    for a ZIP member, ``s3://bucket/key``. ``version`` says the file has not changed since an
    earlier run saw it: the modification time (ns) of a file, the CRC-32 of a ZIP member and
    the modification time of its archive, the ETag of an S3 object."""

    name: str
    size: int
    version: str


class ImportSource(Protocol):
    """Where ``dicomweb-gateway import`` reads files from: a folder tree, a ZIP, an S3 prefix."""

    @property
    def label(self) -> str:
        """The source as the operator named it (for messages)."""

    def entries(self) -> AsyncIterator[SourceEntry]:
        """Every file of the source (directories, links and the like left out)."""

    async def fetch(self, entry: SourceEntry, target: Path) -> None:
        """Copy the bytes of ``entry`` into the new file ``target`` (a private spool file: what
        is stored is this copy, never the operator's file). Raises GatewayError when the source
        cannot be read or the entry is not what its listing claimed."""

    async def aclose(self) -> None:
        """Release what the source holds open."""
