"""Forwarding of STOWed instances to a PACS (``forward_to``): C-STORE after the acknowledgement.

The STOW route enqueues every stored instance in the durable queue of
:class:`gateway.ports.BridgeState` *before* it acknowledges the request, and a background worker
sends them (PS3.4 B.2, C-STORE). So forwarding never delays nor fails a STOW, and an instance is
never lost: it leaves the queue only once the PACS accepted it. A failed attempt (PACS down,
failure status) is retried with exponential backoff (``base_delay`` doubling up to
``max_delay``), logged with its reason, and counted in ``/readyz`` (pending / failing).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

import anyio
from anyio.abc import TaskGroup

from gateway.errors import GatewayError
from gateway.ports import BlobStore, BridgeState, ForwardJob, Index, Upstream

log = logging.getLogger(__name__)


class ForwardService:
    """Sends queued instances to ``upstream``, one at a time, in queue order."""

    def __init__(
        self,
        state: BridgeState,
        upstream: Upstream,
        store: BlobStore,
        index: Index,
        spool_dir: Path,
        *,
        base_delay: float = 2.0,
        max_delay: float = 300.0,
        idle_poll: float = 30.0,
    ) -> None:
        self._state = state
        self._upstream = upstream
        self._store = store
        self._index = index
        self._spool_dir = spool_dir
        self._base_delay = base_delay
        self._max_delay = max_delay
        self._idle_poll = idle_poll
        self._wake = anyio.Event()
        self.sent = 0
        self.failures = 0

    @property
    def target(self) -> str:
        return self._upstream.name

    def start(self, tasks: TaskGroup) -> None:
        tasks.start_soon(self._run)

    async def enqueue(self, instances: Iterable[tuple[str, str, str]]) -> None:
        """Queue (study, series, sop) triples durably; returns once they are recorded."""
        queued = 0
        for study, series, sop in instances:
            await self._state.enqueue_forward(self._upstream.name, study, series, sop)
            queued += 1
        if queued:
            self._wake.set()

    async def status(self) -> dict[str, int]:
        counts = await self._state.forward_counts()
        return {**counts, "sent": self.sent, "failed_attempts": self.failures}

    async def _run(self) -> None:
        while True:
            self._wake = anyio.Event()  # before looking: an enqueue from now on wakes the wait below
            try:
                jobs = await self._state.due_forwards(time.time(), 16)
                for job in jobs:
                    await self._send(job)
                if jobs:
                    continue
                due = await self._state.next_forward_at()
            except GatewayError as exc:  # the index is away: the queue is durable, look again later
                log.warning(
                    "forward queue to %s: %s; looking again in %.0f s", self.target, exc.reason, self._base_delay
                )
                await anyio.sleep(self._base_delay)
                continue
            wait = self._idle_poll if due is None else min(self._idle_poll, max(0.0, due - time.time()))
            with anyio.move_on_after(wait):
                await self._wake.wait()

    async def _send(self, job: ForwardJob) -> None:
        record = await self._index.get(job.study_uid, job.series_uid, job.sop_uid)
        if record is None:
            # Deleted since (e.g. the STOW request was refused as a whole and undone).
            log.warning("forward to %s: instance %s is no longer stored; dropped", job.node, job.sop_uid)
            await self._state.forward_done(job.id)
            return
        self._spool_dir.mkdir(parents=True, exist_ok=True)
        path = self._spool_dir / f"forward-{uuid.uuid4().hex}.dcm"
        try:
            await self._store.download(record.object_key, path)  # its current version, corrected or not
            await self._upstream.store(
                path,
                sop_class_uid=record.sop_class_uid,
                sop_uid=record.sop_uid,
                transfer_syntax=record.transfer_syntax,
            )
        except GatewayError as exc:
            await self._retry_later(job, exc.reason)
            return
        except Exception as exc:  # a bug in one job must not stop the queue behind it
            log.exception("forward of %s to PACS %s failed unexpectedly", job.sop_uid, job.node)
            await self._retry_later(job, f"internal error: {type(exc).__name__}")
            return
        finally:
            path.unlink(missing_ok=True)
        self.sent += 1
        log.info("forwarded %s to PACS %s", job.sop_uid, job.node)
        await self._state.forward_done(job.id)

    async def _retry_later(self, job: ForwardJob, reason: str) -> None:
        self.failures += 1
        delay = min(self._max_delay, self._base_delay * 2**job.attempts)
        log.warning(
            "forward of %s to PACS %s failed (attempt %d), retrying in %.0f s: %s",
            job.sop_uid,
            job.node,
            job.attempts + 1,
            delay,
            reason,
        )
        await self._state.forward_failed(job.id, reason, time.time() + delay)
