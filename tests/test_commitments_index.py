"""Pending storage commitments as the index keeps them (:class:`gateway.ports.PendingCommitments`),
over both implementations: kept across connections (a restart), one replica per request, the
lease taken over once it lapsed, released by a stopping replica, removed once reported."""

from __future__ import annotations

import time

import anyio
import pytest

from gateway.ports import Index, PendingCommitment, PendingCommitments
from tests.fixtures_index import Backend

pytestmark = pytest.mark.anyio

CT = "1.2.840.10008.5.1.4.1.1.2"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def pending(index: Index) -> PendingCommitments:
    assert isinstance(index, PendingCommitments)
    return index


def request(n: int, *, accepted_at: float | None = None, duplicate: bool = False) -> PendingCommitment:
    return PendingCommitment(
        key=f"key-{n}",
        transaction_uid=f"1.2.3.{n}",
        ae_title="MODALITY",
        address="10.1.2.3",
        references=((CT, f"1.2.3.{n}.1"), (CT, f"1.2.3.{n}.2")),
        duplicate=duplicate,
        accepted_at=accepted_at if accepted_at is not None else time.time(),
    )


async def test_a_request_outlives_its_connection_and_is_claimed_again_by_its_holder(backend: Backend) -> None:
    first = backend.open()
    try:
        await pending(first).add_commitment(
            request(1, duplicate=True, accepted_at=1234.5), "replica-a", time.time() + 300
        )
    finally:
        await first.aclose()
    again = backend.open()
    try:
        store = pending(again)
        assert await store.pending_commitments() == [request(1, duplicate=True, accepted_at=1234.5)]
        # Another replica must wait for the lease; the holder restarting takes it back at once.
        assert await store.claim_commitments("replica-b", time.time() + 300, mine=False, limit=10) == []
        assert await store.claim_commitments("replica-a", time.time() + 300, mine=False, limit=10) == []
        (claimed,) = await store.claim_commitments("replica-a", time.time() + 300, mine=True, limit=10)
        assert claimed.references == ((CT, "1.2.3.1.1"), (CT, "1.2.3.1.2"))
        assert claimed.duplicate
        await store.remove_commitment(claimed.key)
        assert await store.pending_commitments() == []
    finally:
        await again.aclose()


async def test_a_lapsed_lease_goes_to_one_replica_and_the_old_holder_learns_it(backend: Backend) -> None:
    replicas = [backend.open() for _ in range(3)]
    try:
        store = pending(replicas[0])
        for n in range(1, 6):
            await store.add_commitment(request(n, accepted_at=1000.0 + n), "dead", time.time() - 1)
        claims: dict[str, list[str]] = {}

        async def claim(name: str, index: Index) -> None:
            got = await pending(index).claim_commitments(name, time.time() + 300, mine=False, limit=10)
            claims[name] = [p.key for p in got]

        async with anyio.create_task_group() as tg:
            for i, index in enumerate(replicas):
                tg.start_soon(claim, f"replica-{i}", index)
        keys = [key for got in claims.values() for key in got]
        assert sorted(keys) == [f"key-{n}" for n in range(1, 6)]  # each once
        winner = next(name for name, got in claims.items() if "key-1" in got)
        assert await store.renew_commitment("key-1", "dead", time.time() + 300) is False
        assert await store.renew_commitment("key-1", winner, time.time() + 300) is True
    finally:
        for index in replicas:
            await index.aclose()


async def test_claims_come_oldest_first_up_to_the_limit(index: Index) -> None:
    store = pending(index)
    for n in (3, 1, 2):
        await store.add_commitment(request(n, accepted_at=1000.0 + n), "dead", time.time() - 1)
    got = await store.claim_commitments("me", time.time() + 300, mine=False, limit=2)
    assert [p.key for p in got] == ["key-1", "key-2"]


async def test_a_stopping_replica_releases_its_leases_to_the_others(index: Index) -> None:
    store = pending(index)
    await store.add_commitment(request(1), "stopping", time.time() + 300)
    await store.add_commitment(request(2), "other", time.time() + 300)
    await store.release_commitments("stopping")
    (claimed,) = await store.claim_commitments("next", time.time() + 300, mine=False, limit=10)
    assert claimed.key == "key-1"
