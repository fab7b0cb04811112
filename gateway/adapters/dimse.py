"""The DIMSE adapter: one legacy PACS as an :class:`gateway.ports.Upstream`, over pynetdicom.

Blocking pynetdicom calls run in worker threads, at most ``max_associations`` at a time per
node (an anyio CapacityLimiter), on pooled associations (:mod:`gateway.adapters.dimse_pool`).
Statuses are acted on by class (PS3.7 Annex C, :mod:`gateway.dicom.dimse_status`): failure
raises :class:`UpstreamError` naming the status, warnings are reported, a lost connection or an
expired deadline raises UpstreamError / :class:`UpstreamTimeout`.

* C-FIND (PS3.4 C.4.1): Study Root; once ``limit`` rows are in and one more arrives, a C-CANCEL
  (PS3.7 9.3.2.3) stops the PACS and the result says ``more``.
* C-GET (PS3.4 C.4.3): the instances come back as C-STORE sub-operations on the same
  association (SCP role negotiated per storage SOP Class, PS3.7 D.3.3.4); each is spooled and
  handed to the consumer at once.
* C-MOVE (PS3.4 C.4.2): the PACS stores into the gateway's DIMSE listener, whose
  :class:`gateway.ports.MoveReceiver` routes each instance back here by Move Originator
  Message ID.
* C-STORE (PS3.4 B.2) for STOW forwarding; C-ECHO (PS3.7 9.1.5) for ``dicomweb-gateway echo``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections.abc import AsyncGenerator, Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import anyio
from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.association import Association

from gateway import observability
from gateway.adapters.dimse_contexts import (
    FIND,
    FUZZY_QUERY_KIND,
    GET,
    GET_KIND,
    MOVE,
    QUERY_KIND,
    association_contexts,
    fuzzy_accepted,
    get_kind,
)
from gateway.adapters.dimse_pool import AssociationPool, AssociationRefused, ConnectionLost
from gateway.adapters.dimse_watchdog import abort_now
from gateway.dicom import cfind
from gateway.dicom.dimse_status import StatusClass, describe, status_class
from gateway.dicom.query import QidoQuery
from gateway.dicom.received import spool_received
from gateway.errors import UpstreamError, UpstreamTimeout
from gateway.ports import FindResult, MoveReceiver, ReceivedInstance
from gateway.settings import PacsNode

log = logging.getLogger(__name__)

CANCEL_GRACE = 5.0  # seconds a PACS gets to honour a C-CANCEL before the association is aborted
# PS3.18 8.3.4.x (QIDO-RS response, Warning header): the words the standard gives.
FUZZY_NOT_SUPPORTED = "The fuzzymatching parameter is not supported. Only literal matching has been performed."


@dataclass
class _Retrieval:
    """State shared by a retrieve's worker thread and the async side."""

    assoc: Association | None = None
    model: str = ""  # the Q/R SOP Class and Message ID of the C-GET / C-MOVE (for its C-CANCEL)
    message_id: int = 0
    cancelled: bool = False  # the consumer left: stop the PACS
    cancel_sent: bool = False
    fallback: threading.Timer | None = None  # aborts when the PACS ignores the C-CANCEL
    over: bool = False  # the operation has ended (its association may be pooled again)
    warned: bool = False
    warnings: list[str] = field(default_factory=list)  # final warning statuses, for the caller
    delivered: set[str] = field(default_factory=set)  # SOP Instance UIDs handed over
    last_activity: float = field(default_factory=time.monotonic)


class _OperationFailed(UpstreamError):
    """A C-GET / C-MOVE ended with a Failure status (PS3.4 C.4.2.1.5, C.4.3.1.4)."""


class DimseUpstream:
    """One PACS node (see the module docstring). ``scp``, where C-MOVE sub-operations arrive,
    is needed to retrieve by C-MOVE."""

    def __init__(self, node: PacsNode, *, ae_title: str, spool_dir: Path, scp: MoveReceiver | None = None) -> None:
        self.node = node
        self._calling_ae = ae_title
        self._spool_dir = spool_dir
        self._scp = scp
        self._pool = AssociationPool(node, ae_title, association_contexts)
        self._limiter: anyio.CapacityLimiter | None = None
        self._ids = 0
        self._ids_lock = threading.Lock()

    @property
    def name(self) -> str:
        return self.node.name

    @property
    def ae_title(self) -> str:
        return self.node.ae_title

    def _limits(self) -> anyio.CapacityLimiter:
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self.node.max_associations)
        return self._limiter

    def _message_id(self) -> int:
        with self._ids_lock:
            self._ids = self._ids % 65535 + 1
            return self._ids

    # -- C-ECHO ----------------------------------------------------------------------------

    async def echo(self) -> float:
        return await anyio.to_thread.run_sync(self._echo, limiter=self._limits())

    def _echo(self) -> float:
        started = time.perf_counter()
        with self._observed("C-ECHO"):
            assoc = self._pool.open(QUERY_KIND)  # always a fresh association: echo tests connectivity
            try:
                status = assoc.send_c_echo(msg_id=self._message_id())
            finally:
                self._pool.discard(assoc)
            self._check_final(status, "C-ECHO", answered=False, last=started)
        return time.perf_counter() - started

    @contextlib.contextmanager
    def _observed(self, operation: str) -> Iterator[observability.DimseObservation]:
        """Metrics and /readyz: each operation with its outcome (gateway.observability)."""
        with observability.dimse_operation(self.name, operation) as observation:
            try:
                yield observation
            except UpstreamTimeout:
                observation.outcome = "timeout"
                raise
            except AssociationRefused:
                observation.outcome = "refused"
                raise

    # -- C-FIND ----------------------------------------------------------------------------

    async def find(self, query: QidoQuery, limit: int) -> FindResult:
        identifier = cfind.identifier(query)
        # Fuzzy matching is a property of the association (PS3.4 C.5.1.1.1), not of a C-FIND.
        kind = FUZZY_QUERY_KIND if query.fuzzy else QUERY_KIND

        def observed() -> FindResult:
            with self._observed("C-FIND") as observation:
                result = self._pool.run(kind, partial(self._find, identifier, limit, query.fuzzy))
                observation.outcome = "cancel" if result.more else "warning" if result.warnings else "success"
                return result

        return await anyio.to_thread.run_sync(observed, limiter=self._limits())

    def _find(self, identifier: Dataset, limit: int, fuzzy: bool, assoc: Association) -> FindResult:
        message_id = self._message_id()
        rows: list[dict[str, Any]] = []
        warnings: list[str] = []
        if fuzzy and not fuzzy_accepted(assoc.acceptor.sop_class_extended):
            # PS3.18 8.3.4.x: the PACS's rows come from literal matching; say so, naming it.
            warnings.append(f"{self._pool.where}: {FUZZY_NOT_SUPPORTED}")
        more = False
        for kind, code, found in self._find_responses(assoc, identifier, message_id):
            if kind is StatusClass.PENDING:
                if more:
                    continue  # responses already in flight when the C-CANCEL arrived
                if found is None:
                    warnings.append(f"{self._pool.where}: a C-FIND response could not be decoded")
                elif len(rows) < limit:
                    notes: list[str] = []
                    rows.append(cfind.response_row(found, notes))
                    warnings.extend(f"{self._pool.where}: {note}" for note in notes)
                else:
                    # One match beyond the limit: there are more. Stop the PACS (C-CANCEL, PS3.7 9.3.2.3).
                    more = True
                    assoc.send_c_cancel(message_id, query_model=FIND)
            elif kind is StatusClass.WARNING:
                warnings.append(f"{self._pool.where}: C-FIND status {describe(code)}")
        return FindResult(rows=rows, more=more, warnings=tuple(warnings))

    def _find_responses(
        self, assoc: Association, identifier: Dataset, message_id: int
    ) -> Iterator[tuple[StatusClass, int, Dataset | None]]:
        """The C-FIND's responses as (status class, status, identifier); a lost association, a
        DIMSE timeout or a Failure status is raised instead."""
        answered, last = False, time.monotonic()
        responses = self._send(lambda: assoc.send_c_find(identifier, FIND, msg_id=message_id), "C-FIND")
        for status, found in responses:
            if "Status" not in status:
                raise self._lost("C-FIND", answered=answered, last=last)
            answered, last = True, time.monotonic()
            code = int(status.Status)
            kind = status_class(code)
            if kind is StatusClass.FAILURE:
                raise UpstreamError(f"{self._pool.where}: C-FIND failed with status {describe(code)}")
            yield kind, code, found

    # -- C-GET / C-MOVE --------------------------------------------------------------------

    async def retrieve(
        self,
        study: str,
        series: str | None = None,
        sop: str | None = None,
        *,
        sop_classes: frozenset[str] = frozenset(),
        warnings: list[str] | None = None,
    ) -> AsyncGenerator[ReceivedInstance, None]:
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "IMAGE" if sop else "SERIES" if series else "STUDY"
        identifier.StudyInstanceUID = study
        if series:
            identifier.SeriesInstanceUID = series
        if sop:
            identifier.SOPInstanceUID = sop
        send, receive = anyio.create_memory_object_stream[ReceivedInstance | BaseException | None](math.inf)
        loop = asyncio.get_running_loop()
        state = _Retrieval()

        def push(item: ReceivedInstance | BaseException | None) -> None:
            # Hand over without waiting for the event loop: the C-STORE response (and so the
            # PACS's next sub-operation) must not wait for a loop turn. RuntimeError when the
            # loop is gone. (The gateway runs on asyncio, under uvicorn.)
            loop.call_soon_threadsafe(_send_or_discard, send, item)

        def work() -> None:
            outcome: BaseException | None = None
            move = self.node.retrieve == "move"
            try:
                with self._observed("C-MOVE" if move else "C-GET") as observation:
                    if move:
                        self._pool.run(QUERY_KIND, partial(self._move, identifier, push, state))
                    else:
                        self._c_get(identifier, push, state, sop_classes)
                    observation.outcome = "cancel" if state.cancelled else "warning" if state.warned else "success"
            except BaseException as exc:
                outcome = exc
            if state.fallback is not None:
                state.fallback.cancel()
            try:
                push(outcome)  # the end marker: None, or the error
                # The association is closed or pooled now: only then is the capacity free again.
                loop.call_soon_threadsafe(limiter.release_on_behalf_of, borrower)
            except RuntimeError:
                log.debug("retrieve from %s ended after the event loop", self.name)

        limiter, borrower = self._limits(), object()
        await limiter.acquire_on_behalf_of(borrower)
        finished = False
        try:
            threading.Thread(target=work, name=f"retrieve-{self.name}", daemon=True).start()
        except BaseException:
            limiter.release_on_behalf_of(borrower)
            raise
        try:
            async for item in receive:
                if item is None or isinstance(item, BaseException):
                    finished = True
                    if warnings is not None:  # written by the worker before it pushed the end
                        warnings.extend(state.warnings)
                    if item is None:
                        return
                    raise item
                yield item
        finally:
            if not finished:
                self._stop_retrieval(state, receive)
            receive.close()

    @staticmethod
    def _stop_retrieval(state: _Retrieval, receive: Any) -> None:
        """The consumer left early: have the worker cancel the retrieve (abort if the PACS does
        not stop within a few seconds) and discard what was received. (No await here, so nothing
        arrives in between; later arrivals find the stream closed and are discarded.)"""
        state.cancelled = True
        if state.assoc is not None:
            assoc = state.assoc

            def abort_unless_over() -> None:
                if not state.over:  # never abort an association that went back to the pool
                    abort_now(assoc)

            state.fallback = threading.Timer(CANCEL_GRACE, abort_unless_over)
            state.fallback.daemon = True
            state.fallback.start()
        while True:
            try:
                item = receive.receive_nowait()
            except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                return
            if isinstance(item, ReceivedInstance):
                item.path.unlink(missing_ok=True)

    def _receiver(self, push: Callable[[Any], None], state: _Retrieval) -> Callable[[Any], int]:
        """The EVT_C_STORE handler of a C-GET: spool the instance and hand it over."""

        def on_store(event: Any) -> int:
            self._cancel_if_abandoned(state)
            try:
                item = spool_received(event, self._spool_dir)
            except OSError as exc:
                log.error("cannot spool an instance from %s: %s", self.name, exc)
                return 0xA700  # PS3.4 B.2.3: Refused, out of resources
            try:
                self._deliver(push, state, item)
            except Exception:
                item.path.unlink(missing_ok=True)
                return 0xA700
            return 0x0000

        return on_store

    @staticmethod
    def _deliver(push: Callable[[Any], None], state: _Retrieval, item: ReceivedInstance) -> None:
        """Hand one received instance to the consumer; raises when nobody will take it."""
        state.last_activity = time.monotonic()
        if state.cancelled:
            raise RuntimeError("the retrieve was abandoned")
        if item.sop_uid in state.delivered:  # sent again by a repeated C-GET: already handed over
            item.path.unlink(missing_ok=True)
            return
        try:
            push(item)
        except Exception:
            state.cancelled = True  # the consumer is gone (or the event loop stopped)
            raise
        state.delivered.add(item.sop_uid)

    def _c_get(
        self, identifier: Dataset, push: Callable[[Any], None], state: _Retrieval, sop_classes: frozenset[str]
    ) -> None:
        """C-GET over contexts for the located classes (originals as stored), else the wide set.

        The classes come from the PACS's own SOP Classes in Study (0008,0062); when that list
        misses a class the study holds, the PACS has no context to send those instances on and
        fails the C-GET (Orthanc: C000H at the first one). Then the classes are asked instance
        by instance (an IMAGE-level C-FIND returning SOP Class UID) and the C-GET runs once more
        with them; instances that already arrived are not handed over twice.
        """
        kind = get_kind(sop_classes)
        try:
            self._pool.run(kind, partial(self._get, identifier, push, state))
        except _OperationFailed as exc:
            if kind == GET_KIND or state.cancelled:
                raise
            classes = self._pool.run(QUERY_KIND, partial(self._instance_classes, identifier))
            if classes <= sop_classes:
                raise  # the classes were right: the failure is something else
            log.warning("%s; SOP Classes %s were not located: asking again", exc.reason, sorted(classes - sop_classes))
            state.over = False
            self._pool.run(get_kind(classes), partial(self._get, identifier, push, state))

    def _instance_classes(self, retrieve_identifier: Dataset, assoc: Association) -> frozenset[str]:
        """The SOP Class UIDs of the instances a retrieve identifier names (IMAGE-level C-FIND)."""
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "IMAGE"
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
            setattr(identifier, keyword, retrieve_identifier.get(keyword, ""))
        identifier.SOPClassUID = ""
        classes: set[str] = set()
        for kind, _, found in self._find_responses(assoc, identifier, self._message_id()):
            if kind is StatusClass.PENDING and found is not None and found.get("SOPClassUID"):
                classes.add(str(found.SOPClassUID))
        return frozenset(classes)

    def _get(self, identifier: Dataset, push: Callable[[Any], None], state: _Retrieval, assoc: Association) -> None:
        state.assoc, state.model, state.message_id = assoc, GET, self._message_id()
        handler = self._receiver(push, state)
        assoc.bind(evt.EVT_C_STORE, handler)
        try:
            responses = self._send(lambda: assoc.send_c_get(identifier, GET, msg_id=state.message_id), "C-GET")
            self._drain(responses, "C-GET", state)
        finally:
            state.over = True
            assoc.unbind(evt.EVT_C_STORE, handler)

    def _move(self, identifier: Dataset, push: Callable[[Any], None], state: _Retrieval, assoc: Association) -> None:
        if self._scp is None:  # settings validation requires scp_port for retrieve = "move"
            raise UpstreamError(f"{self._pool.where}: C-MOVE needs the gateway's DIMSE listener (scp_port)")
        message_id = self._scp.expect(self.node.ae_title, partial(self._deliver, push, state))
        state.assoc, state.model, state.message_id = assoc, MOVE, message_id
        failed = True
        try:
            responses = self._send(
                lambda: assoc.send_c_move(identifier, self._scp_ae(), MOVE, msg_id=message_id), "C-MOVE"
            )
            self._drain(responses, "C-MOVE", state)
            failed = False
        finally:
            state.over = True
            self._scp.done(self.node.ae_title, message_id, failed=failed)

    def _scp_ae(self) -> str:
        assert self._scp is not None
        return self._scp.ae_title

    @staticmethod
    def _cancel_if_abandoned(state: _Retrieval) -> None:
        """From the worker thread, between responses: C-CANCEL (PS3.7 9.3.3.3 / 9.3.4.3) a
        retrieve nobody reads any more, so the association ends the operation cleanly."""
        if state.cancelled and not state.cancel_sent and state.assoc is not None:
            state.cancel_sent = True
            state.assoc.send_c_cancel(state.message_id, query_model=state.model)

    def _drain(self, responses: Any, operation: str, state: _Retrieval) -> None:
        answered = False
        for status, _ in responses:
            if "Status" not in status:
                raise self._lost(operation, answered=answered, last=state.last_activity)
            answered = True
            state.last_activity = time.monotonic()
            code = int(status.Status)
            kind = status_class(code)
            if kind is StatusClass.PENDING:
                self._cancel_if_abandoned(state)
                continue
            counts = _sub_operations(status)
            if kind is StatusClass.FAILURE:
                hint = ""
                if operation == "C-MOVE":
                    hint = f"; does the PACS know {self._scp_ae()} as a move destination?"
                raise _OperationFailed(
                    f"{self._pool.where}: {operation} failed with status {describe(code)}{counts}{hint}"
                )
            if kind is StatusClass.WARNING:
                state.warned = True
                state.warnings.append(f"{self._pool.where}: {operation} finished with status {describe(code)}{counts}")
                log.warning("%s: %s finished with status %s%s", self._pool.where, operation, describe(code), counts)
            if kind is StatusClass.CANCEL and not state.cancelled:
                raise UpstreamError(f"{self._pool.where}: {operation} was cancelled by the PACS{counts}")

    # -- C-STORE ---------------------------------------------------------------------------

    async def store(self, path: Path, *, sop_class_uid: str, sop_uid: str, transfer_syntax: str) -> None:
        kind = ("store", sop_class_uid, transfer_syntax)

        def observed() -> None:
            with self._observed("C-STORE"):
                self._pool.run(kind, partial(self._store, path))

        await anyio.to_thread.run_sync(observed, limiter=self._limits())

    def _store(self, path: Path, assoc: Association) -> None:
        started = time.monotonic()
        status = self._send(lambda: assoc.send_c_store(path, msg_id=self._message_id()), "C-STORE")
        self._check_final(status, "C-STORE", answered=False, last=started)

    # -- helpers ---------------------------------------------------------------------------

    def _send(self, call: Callable[[], Any], operation: str) -> Any:
        try:
            return call()
        except ValueError as exc:  # no accepted presentation context for it
            raise UpstreamError(f"{self._pool.where} does not accept {operation} here: {exc}") from exc
        except RuntimeError as exc:  # the association died before the request went out
            raise ConnectionLost(f"{self._pool.where}: association lost before {operation}", answered=False) from exc

    def _check_final(self, status: Dataset, operation: str, *, answered: bool, last: float) -> None:
        if "Status" not in status:
            raise self._lost(operation, answered=answered, last=last)
        code = int(status.Status)
        kind = status_class(code)
        if kind is StatusClass.FAILURE:
            raise UpstreamError(f"{self._pool.where}: {operation} failed with status {describe(code)}")
        if kind is StatusClass.WARNING:
            log.warning("%s: %s status %s", self._pool.where, operation, describe(code))

    def _lost(self, operation: str, *, answered: bool, last: float) -> Exception:
        """What an empty status means: a DIMSE timeout (the wait lasted dimse_timeout) or a lost
        connection (the PACS closed or aborted it)."""
        waited = time.monotonic() - last
        if waited >= self.node.dimse_timeout * 0.9:
            return UpstreamTimeout(f"{self._pool.where}: no {operation} response within {self.node.dimse_timeout:g} s")
        return ConnectionLost(f"{self._pool.where}: connection lost during {operation}", answered=answered)

    async def aclose(self) -> None:
        await anyio.to_thread.run_sync(self._pool.close)


def _send_or_discard(send: Any, item: ReceivedInstance | BaseException | None) -> None:
    """On the event loop: queue a received instance, or delete it when nobody will read it."""
    try:
        send.send_nowait(item)
    except (anyio.BrokenResourceError, anyio.ClosedResourceError):
        if isinstance(item, ReceivedInstance):
            item.path.unlink(missing_ok=True)


def _sub_operations(status: Dataset) -> str:
    """PS3.7 9.1.3/9.1.4: the sub-operation counts a C-GET/C-MOVE response may carry."""
    parts = []
    for keyword, label in (
        ("NumberOfCompletedSuboperations", "completed"),
        ("NumberOfFailedSuboperations", "failed"),
        ("NumberOfWarningSuboperations", "warning"),
    ):
        value = status.get(keyword)
        if value is not None:
            parts.append(f"{value} {label}")
    return f" ({', '.join(parts)} sub-operations)" if parts else ""
