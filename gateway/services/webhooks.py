"""Webhooks: the change feed POSTed to receivers (``[[webhooks]]``, issue #16).

Each webhook follows the feed from its cursor (:class:`gateway.ports.WebhookCursors`, kept in
the index database): every entry after it, in Sequence order, is POSTed as JSON (the feed's
Microsoft spelling, :func:`gateway.services.changefeed.feed_entry_json`, without ``Metadata`` unless
``include_metadata``) with ``X-Gateway-Signature: sha256=<hex HMAC-SHA256 of the body keyed by
the secret>`` and ``X-Gateway-Sequence``. A 2xx acknowledges it: only then does the cursor move
past it, so delivery is at least once. The cursor is stored once per batch of entries passed
(up to 100, or 1 s of deliveries; and before a retry's wait, and when the gateway stops): an
acknowledged entry is sent again only when the process died between the receiver's answer and
that record, at most the batch's entries. Entries the webhook's filters leave out
move the cursor without a POST. Until the receiver acknowledges, the same entry is retried after
1 s, 2 s, 4 s ... up to 60 s, and nothing after it is sent (order is kept).

Replicas share the cursors: one replica at a time holds a webhook's lease (renewed while it
delivers; given up when the replica stops; a replica that died loses it once it lapses, or at
once when the same replica id starts again), so each entry is delivered by one replica, not by
each. A POST must
end within ``timeout`` (at most 20 s), well inside the lease, before the lease is renewed again.

``series_stable_seconds``: a ``series-stable`` event once a series had no new entry for that
long, named by the Sequence of the series' last entry. It is kept in memory by the replica
delivering the webhook: a restart during the quiet period loses it (the entries themselves are
never lost).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import time
from dataclasses import dataclass

import anyio
import orjson
from anyio.abc import TaskGroup

from gateway import observability
from gateway.errors import GatewayError
from gateway.ports import ChangeEntry, ChangeQuery, WebhookCursors, WebhookSender
from gateway.services.changefeed import ChangeFeed, feed_entry_json, feed_time
from gateway.settings import Webhook

log = logging.getLogger(__name__)

LEASE_SECONDS = 30.0
# A lease is renewed once less than this much of it is left (and before every POST).
RENEW_MARGIN = 20.0
CLAIM_SECONDS = 2.0  # how often a replica not holding a webhook asks whether it is free
POLL_SECONDS = 0.1  # how often a caught-up webhook looks for new entries
BATCH = 100  # entries read at once, and passed before their cursor is recorded
# The cursor is also recorded once this long passed since its last record, and before a retry's
# wait: a slow receiver does not leave a whole batch acknowledged but unrecorded for long.
RECORD_SECONDS = 1.0
FIRST_RETRY = 1.0
MAX_RETRY = 60.0
STATUS_SECONDS = 5.0  # how often the pending counts of /metrics are refreshed
SERIES_STABLE = "series-stable"


@dataclass
class _Series:
    study: str
    sequence: int  # the series' last entry
    quiet_since: float  # monotonic time of that entry's arrival here


class _LeaseLost(Exception):
    """Another replica holds the webhook now: stop delivering it."""


class WebhookDelivery:
    """Delivers one webhook's entries, while this replica holds its lease."""

    def __init__(
        self,
        hook: Webhook,
        feed: ChangeFeed,
        cursors: WebhookCursors,
        sender: WebhookSender,
        *,
        holder: str,
        base_url: str,
    ) -> None:
        assert hook.secret is not None  # settings refuse a webhook without one
        self.hook = hook
        self._key = hook.secret.encode()
        self._feed = feed
        self._cursors = cursors
        self._sender = sender
        self.holder = holder
        self._base_url = base_url
        self._lease_until = 0.0
        self._passed = 0  # the last entry acknowledged or left out by the filters
        self._recorded = 0  # the cursor as stored: _passed once the batch is recorded
        self._recorded_at = 0.0  # monotonic time of its last record
        self._series: dict[str, _Series] = {}
        self.delivered = 0
        self.failed_attempts = 0
        self.failing = 0  # failed attempts of the entry being delivered now
        self.last_error: str | None = None
        self.holding = False

    async def run(self) -> None:
        while True:
            try:
                cursor = await self._claim()
                if cursor is None:
                    self.holding = False
                    await anyio.sleep(CLAIM_SECONDS)
                    continue
                self.holding = True
                await self._follow(cursor)
            except _LeaseLost:
                log.info("webhook %s: another replica delivers it now", self.hook.name)
                self.holding = False
                self._series.clear()  # the new holder announces them
            except GatewayError as exc:  # the index is unavailable: try again shortly
                log.warning("webhook %s: the index is unavailable: %s", self.hook.name, exc.reason)
                await anyio.sleep(FIRST_RETRY)

    async def _claim(self) -> int | None:
        until = time.time() + LEASE_SECONDS
        cursor = await self._cursors.claim_webhook(self.hook.name, self.holder, until)
        if cursor is not None:
            self._lease_until = until
        return cursor

    async def _renew(self) -> None:
        if self._lease_until - time.time() < RENEW_MARGIN and await self._claim() is None:
            raise _LeaseLost

    async def _advance(self, sequence: int) -> None:
        until = time.time() + LEASE_SECONDS
        if not await self._cursors.advance_webhook(self.hook.name, self.holder, sequence, until):
            raise _LeaseLost
        self._lease_until = until

    async def _follow(self, cursor: int) -> None:
        self._passed = self._recorded = cursor
        self._recorded_at = time.monotonic()
        while True:
            await self._renew()
            query = ChangeQuery(limit=BATCH, after=self._passed, include_metadata=self.hook.include_metadata)
            entries = await self._feed.read(query, base_url=self._base_url)
            for entry in entries:
                if self._track(entry):
                    await self._deliver(self._entry_body(entry), entry.sequence)
                self._passed = entry.sequence  # acknowledged, or left out by the filters
                if time.monotonic() - self._recorded_at >= RECORD_SECONDS:
                    await self._record()
                await self._announce_stable_series()
            if len(entries) == BATCH:
                await self._record()
            else:  # caught up: what the last polls passed is recorded once RECORD_SECONDS have gone by
                if time.monotonic() - self._recorded_at >= RECORD_SECONDS:
                    await self._record()
                if not entries:
                    await self._announce_stable_series()
                await anyio.sleep(POLL_SECONDS)

    async def _record(self) -> None:
        """Store the cursor: every entry up to ``_passed`` was acknowledged or left out. Once per
        batch rather than per entry, for a write transaction on the index per entry would
        compete with the STOWs' own; a crash sends again at most the entries passed since the
        last record (one batch, or :data:`RECORD_SECONDS` of deliveries)."""
        if self._passed != self._recorded:
            await self._advance(self._passed)
            self._recorded = self._passed
        self._recorded_at = time.monotonic()

    async def record_passed(self) -> None:
        """Once stopped: store what the last batch passed, not to send it again after a restart."""
        with contextlib.suppress(_LeaseLost):
            await self._record()

    def _origin_matches(self, origin: str) -> bool:
        # "pacs" names every PACS ("pacs:<name>"), "pacs:main" one of them.
        return not self.hook.origins or any(
            origin == wanted or origin.startswith(wanted + ":") for wanted in self.hook.origins
        )

    def _track(self, entry: ChangeEntry) -> bool:
        """Whether ``entry`` is sent; notes its series for the series-stable event."""
        if not self._origin_matches(entry.origin):
            return False
        if self._wants(SERIES_STABLE):
            self._series.pop(entry.series_uid, None)  # re-inserted last: the dict stays in quiet order
            self._series[entry.series_uid] = _Series(entry.study_uid, entry.sequence, time.monotonic())
        return self._wants(entry.action.value)

    def _wants(self, action: str) -> bool:
        if action == SERIES_STABLE:
            return self.hook.series_stable_seconds > 0 and (not self.hook.actions or action in self.hook.actions)
        return not self.hook.actions or action in self.hook.actions

    async def _announce_stable_series(self) -> None:
        while self._series:
            series_uid, series = next(iter(self._series.items()))
            if time.monotonic() - series.quiet_since < self.hook.series_stable_seconds:
                return
            body = {
                "Sequence": series.sequence,
                "StudyInstanceUid": series.study,
                "SeriesInstanceUid": series_uid,
                "Action": SERIES_STABLE,
                "Timestamp": feed_time(time.time()),
            }
            await self._deliver(orjson.dumps(body), series.sequence)
            del self._series[series_uid]

    def _entry_body(self, entry: ChangeEntry) -> bytes:
        body = feed_entry_json(entry)
        if not self.hook.include_metadata:
            del body["Metadata"]
        return orjson.dumps(body)

    async def _deliver(self, body: bytes, sequence: int) -> None:
        """POST until acknowledged, waiting FIRST_RETRY doubling to MAX_RETRY between attempts."""
        headers = {
            "Content-Type": "application/json",
            "X-Gateway-Signature": "sha256=" + hmac.new(self._key, body, hashlib.sha256).hexdigest(),
            "X-Gateway-Sequence": str(sequence),
            "X-Gateway-Webhook": self.hook.name,
        }
        delay = FIRST_RETRY
        while True:
            await self._renew()
            problem = await self._sender.post(self.hook.url, body, headers, within=self.hook.timeout)
            if problem is None:
                self.delivered += 1
                self.failing = 0
                observability.webhook_delivery(self.hook.name, acknowledged=True)
                return
            self.failed_attempts += 1
            self.failing += 1
            self.last_error = problem
            observability.webhook_delivery(self.hook.name, acknowledged=False)
            log.warning(
                "webhook %s: delivery of sequence %d failed (attempt %d), retrying in %.0f s: %s",
                self.hook.name,
                sequence,
                self.failing,
                delay,
                problem,
            )
            await self._record()  # what was acknowledged before this entry stays so
            await self._wait(delay)
            delay = min(MAX_RETRY, delay * 2)

    async def _wait(self, seconds: float) -> None:
        """Sleep, keeping the lease: a long backoff must not hand the webhook to another replica."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            await anyio.sleep(min(left, LEASE_SECONDS / 3))
            await self._renew()


class Webhooks:
    """Every configured webhook's delivery, and their status for /readyz and /metrics."""

    def __init__(
        self,
        hooks: tuple[Webhook, ...],
        feed: ChangeFeed,
        cursors: WebhookCursors,
        sender: WebhookSender,
        *,
        holder: str,
        base_url: str,
    ) -> None:
        self._cursors = cursors
        self._sender = sender
        self.deliveries = [
            WebhookDelivery(hook, feed, cursors, sender, holder=holder, base_url=base_url) for hook in hooks
        ]

    async def prepare(self) -> None:
        """Create the cursors of new webhooks before serving: an entry written once the
        gateway serves is never before a new webhook's start."""
        for delivery in self.deliveries:
            await self._cursors.add_webhook(delivery.hook.name)

    def start(self, tasks: TaskGroup) -> None:
        for delivery in self.deliveries:
            tasks.start_soon(delivery.run)
        tasks.start_soon(self._refresh_metrics)

    async def status(self) -> dict[str, dict[str, object]]:
        """Per webhook: ``pending`` (feed entries after its cursor, on every replica), and this
        replica's ``delivering``, ``delivered``, ``failed_attempts``, ``failing`` (failed
        attempts of the entry being retried now) and ``last_error``."""
        cursors = {c.name: c for c in await self._cursors.webhook_cursors()}
        out: dict[str, dict[str, object]] = {}
        for d in self.deliveries:
            cursor = cursors.get(d.hook.name)
            info: dict[str, object] = {
                "pending": None if cursor is None else cursor.pending,
                "acknowledged_sequence": None if cursor is None else cursor.sequence,
                "delivering": d.holding,
                "delivered": d.delivered,
                "failed_attempts": d.failed_attempts,
                "failing": d.failing,
            }
            if d.last_error is not None:
                info["last_error"] = d.last_error
            out[d.hook.name] = info
        return out

    async def _refresh_metrics(self) -> None:
        while True:
            try:
                cursors = await self._cursors.webhook_cursors()
            except GatewayError:
                cursors = []
            pending = {c.name: c.pending for c in cursors}
            for d in self.deliveries:
                if d.hook.name in pending:
                    observability.webhook_state(d.hook.name, pending=pending[d.hook.name], failing=d.failing)
            await anyio.sleep(STATUS_SECONDS)

    async def aclose(self) -> None:
        """After the deliveries stopped: give up their leases, so that another replica carries
        on at once (a rolling update) instead of after the lease lapsed."""
        try:
            for delivery in self.deliveries:
                if delivery.holding:
                    await delivery.record_passed()
                    await self._cursors.release_webhook(delivery.hook.name, delivery.holder)
        except GatewayError as exc:
            log.warning("webhook leases not given up (they lapse in %.0f s): %s", LEASE_SECONDS, exc.reason)
        finally:
            await self._sender.aclose()
