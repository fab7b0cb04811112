"""Retention: instances matched by a ``[[retention]]`` rule leave once older than its age
(issue #18; rules in :mod:`gateway.settings_retention`).

Every ``retention_interval_seconds`` one replica at a time (the index lease ``retention``,
:meth:`gateway.ports.Index.take_lease`, given up when the gateway stops) asks the index, rule
by rule, for instances stored (for ``max_idle_seconds``: last used) longer ago than the rule
allows, outside protected studies, and removes them study by study through the path of DELETE
(:meth:`gateway.services.removal.RemovalService.remove_swept`): one change-feed ``delete``
entry per instance with origin ``retention`` and the rule's name as its reason, objects after
the delete grace, the PACS's "retrieved whole" marks forgotten. Each study swept is one audit
line (PS3.15 A.5.3 DICOM Instances Accessed, action D) naming the rule.

The PACS cache expiry (``pacs_cache_max_age``) is the rule ``pacs-cache`` among them: a cached
copy that an upload was told is stored is not a copy any more and stays, and a study with a
retrieve from the PACS in flight waits for the next sweep. As before it was a rule, its feed
entries say ``expiry`` and its objects go one interval after their rows. A protected study is
never swept (checked again under the study's hold, so a PUT that lands between the index's
answer and the removal is honoured).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import anyio
from anyio.abc import TaskGroup

from gateway.errors import GatewayError
from gateway.ports import Index, InstanceKey, RemovalCause, RetentionCandidate, RetentionMatch
from gateway.security.audit import AccessRecord, AuditLog
from gateway.security.principal import Principal
from gateway.services.removal import RemovalService
from gateway.settings_retention import PACS_CACHE_RULE, RetentionRule

log = logging.getLogger(__name__)

BATCH = 500  # instances asked of the index per query
LEASE = "retention"
RELEASE_SECONDS = 5.0  # at most this long for giving the lease up as the gateway stops


@dataclass(frozen=True)
class Due:
    """An instance a rule says must go, and why."""

    rule: str
    candidate: RetentionCandidate
    age: float  # seconds since stored (max_idle_seconds rules: since last used)


async def find_due(index: Index, rules: Sequence[RetentionRule], now: float) -> list[Due]:
    """What ``rules`` say must go by ``now`` (seconds since the epoch): the dry run."""
    found: list[Due] = []
    for rule in rules:
        found += await due_of(index, rule, now, None)
    return found


async def due_of(index: Index, rule: RetentionRule, now: float, limit: int | None) -> list[Due]:
    """Up to ``limit`` instances (None: all) ``rule`` says must go by ``now``, oldest first."""
    match = RetentionMatch(origin=rule.origin_match, modality=rule.modality, sop_class=rule.sop_class, idle=rule.idle)
    found = await index.retention_candidates(match, now - rule.limit, limit or 1 << 30)
    return [Due(rule.name, c, now - c.last_used) for c in found]


class RetentionSweep:
    def __init__(
        self,
        index: Index,
        removal: RemovalService,
        rules: Sequence[RetentionRule],
        *,
        interval: float,
        audit: AuditLog | None = None,
    ) -> None:
        self._index = index
        self._removal = removal
        self._rules = tuple(rules)
        self._audit = audit
        self.interval = interval
        self._holder = uuid.uuid4().hex  # this replica, as the lease knows it
        self._held = False  # whether it took the lease since it started (or last gave it up)

    def start(self, tasks: TaskGroup) -> None:
        if self._rules:
            tasks.start_soon(self._run)

    async def _run(self) -> None:
        try:
            while True:
                await anyio.sleep(self.interval)
                try:
                    await self.sweep(time.time())
                except GatewayError as exc:  # the index is away: next time
                    log.warning("retention: %s", exc.reason)
        finally:  # the gateway stopping (the task group cancelled)
            with anyio.CancelScope(shield=True), anyio.move_on_after(RELEASE_SECONDS):
                await self.release()

    async def release(self) -> None:
        """Give the lease up if this replica took it, so that another replica sweeps at its
        next interval rather than once the lease runs out (several intervals, at least a
        minute). The lease still runs out by itself for a replica killed outright."""
        if not self._held:
            return
        try:
            await self._index.release_lease(LEASE, self._holder)
            self._held = False
        except GatewayError as exc:  # the index is away: it runs out by itself
            log.warning("retention: the lease was not given up: %s", exc.reason)

    async def sweep(self, now: float) -> int:
        """Remove what is due by ``now``, unless another replica holds the lease; the count."""
        # A lease of several intervals: a sweep of many instances outlasts one interval, and
        # it is renewed between studies.
        lease = max(self.interval * 3, 60.0)
        if not await self._index.take_lease(LEASE, self._holder, lease):
            return 0
        self._held = True
        removed = 0
        for rule in self._rules:
            while True:
                due = await due_of(self._index, rule, now, BATCH)
                count = await self._remove(rule, due, lease)
                removed += count
                if count:
                    log.info(
                        "retention: rule %s removed %d instance(s) %s over %g s ago (objects after a grace)",
                        rule.name,
                        count,
                        "last used" if rule.idle else "stored",
                        rule.limit,
                    )
                if len(due) < BATCH or count == 0:
                    break
        return removed

    async def _remove(self, rule: RetentionRule, due: list[Due], lease: float) -> int:
        by_study: dict[str, list[tuple[InstanceKey, str]]] = defaultdict(list)
        for item in due:
            c = item.candidate
            by_study[c.study_uid].append(((c.study_uid, c.series_uid, c.sop_uid), c.origin))
        if rule.name == PACS_CACHE_RULE:
            # As the cache expiry always said and did: the feed's origin "expiry", and the
            # objects one interval after their rows (reads in flight finish within it).
            cause, grace = RemovalCause("expiry", reason=rule.name), self.interval
        else:
            cause, grace = RemovalCause("retention", reason=rule.name), None
        count = 0
        for study, instances in by_study.items():
            if not await self._index.take_lease(LEASE, self._holder, lease):
                return count  # it ran out and another replica took over
            removed = await self._removal.remove_swept(study, instances, cause=cause, grace=grace)
            if removed is None or not removed.instances:
                continue
            count += len(removed.instances)
            self._write_audit(rule, removed.instances)
        return count

    def _write_audit(self, rule: RetentionRule, removed: list[InstanceKey]) -> None:
        if self._audit is None:
            return
        # No person asked: the audit trail names the rule as the actor.
        actor = Principal(subject=f"retention:{rule.name}", kind="anonymous", scopes=frozenset())
        self._audit.write(
            AccessRecord(
                action="delete",
                method="RETENTION",
                path=f"retention/{rule.name}",
                client=None,
                principal=actor,
                status=200,
                uids={"study": removed[0][0]},
                removed=removed,
            )
        )
