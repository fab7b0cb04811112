"""Webhook cursors as the index keeps them, over SQLite and PostgreSQL: a new cursor starts at
the feed's end, one holder at a time (another takes over once the lease lapsed or was given
up), only the holder moves it, and never backwards. What the delivery service relies on for "one replica
delivers each webhook" and "an acknowledged entry is not sent again"."""

from __future__ import annotations

import time

import pytest

from gateway.ports import Index, WebhookCursors
from tests.fixtures_index import Backend
from tests.test_index_contract import record

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def cursors_of(index: Index) -> WebhookCursors:
    assert isinstance(index, WebhookCursors)
    return index


async def test_a_new_cursor_starts_at_the_end_of_the_feed_and_counts_what_follows(index: Index) -> None:
    cursors = cursors_of(index)
    await index.add(record(1, 1, 1))
    await index.add(record(1, 1, 2))
    latest = await index.latest_change()
    assert latest is not None
    await cursors.add_webhook("ai")
    await index.add(record(1, 1, 3))
    await cursors.add_webhook("ai")  # again (a restart): the cursor stays where it is
    [cursor] = await cursors.webhook_cursors()
    assert (cursor.name, cursor.sequence, cursor.pending, cursor.holder) == ("ai", latest.sequence, 1, None)


async def test_one_holder_at_a_time_until_its_lease_lapses(backend: Backend) -> None:
    a, b = backend.open(), backend.open()  # two replicas
    try:
        ca, cb = cursors_of(a), cursors_of(b)
        await ca.add_webhook("ai")
        now = time.time()
        assert await ca.claim_webhook("ai", "replica-a", now + 30) == 0
        assert await cb.claim_webhook("ai", "replica-b", now + 30) is None
        assert await ca.claim_webhook("ai", "replica-a", now + 60) == 0  # renewed by its holder
        assert not await cb.advance_webhook("ai", "replica-b", 5, now + 30)  # not the holder
        assert await ca.advance_webhook("ai", "replica-a", 5, now + 30)
        # The holder died: once its lease lapsed, another replica takes over at its cursor.
        assert await ca.advance_webhook("ai", "replica-a", 7, now - 1)
        assert await cb.claim_webhook("ai", "replica-b", now + 30) == 7
        assert not await ca.advance_webhook("ai", "replica-a", 9, now + 30)  # the old holder is out
        assert await cb.advance_webhook("ai", "replica-b", 6, now + 30)  # a late, smaller sequence
        [cursor] = await cb.webhook_cursors()
        assert (cursor.sequence, cursor.holder) == (7, "replica-b")  # never moves back
        assert await cb.claim_webhook("other", "replica-b", now + 30) is None  # no such webhook
        # A replica stopping gives its lease up: another takes the webhook before it lapses.
        await ca.release_webhook("ai", "replica-a")  # not the holder: changes nothing
        assert await ca.claim_webhook("ai", "replica-a", now + 30) is None
        await cb.release_webhook("ai", "replica-b")
        assert await ca.claim_webhook("ai", "replica-a", now + 30) == 7
    finally:
        await a.aclose()
        await b.aclose()
