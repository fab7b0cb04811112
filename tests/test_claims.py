"""InstanceClaims: an undo never deletes an instance another upload relies on."""

from __future__ import annotations

import anyio
import pytest

from gateway.services.claims import Claimant, InstanceClaims

pytestmark = pytest.mark.anyio


async def test_sole_claimant_may_undo_and_then_holds_nothing() -> None:
    claims, a = InstanceClaims(), Claimant()
    await claims.claim("1.2.3", a)
    async with claims.undoing("1.2.3", a) as sole:
        assert sole
    assert a.sops == set()


async def test_undo_is_refused_while_another_upload_relies_on_the_instance() -> None:
    claims, a, b = InstanceClaims(), Claimant(), Claimant()
    await claims.claim("1.2.3", a)
    await claims.claim("1.2.3", b)  # e.g. an identical upload acknowledged on a's copy
    async with claims.undoing("1.2.3", a) as sole:
        assert not sole
    claims.release_all(a)
    async with claims.undoing("1.2.3", b) as sole:
        assert sole  # b is alone now


async def test_new_claimant_waits_until_an_undo_has_finished() -> None:
    claims, a, b = InstanceClaims(), Claimant(), Claimant()
    await claims.claim("1.2.3", a)
    events: list[str] = []

    async def late_upload() -> None:
        await claims.claim("1.2.3", b)
        events.append("b claimed")

    async with anyio.create_task_group() as tg, claims.undoing("1.2.3", a) as sole:
        assert sole
        tg.start_soon(late_upload)
        await anyio.sleep(0.05)
        events.append("a deleted")
    assert events == ["a deleted", "b claimed"]
    async with claims.undoing("1.2.3", b) as sole:
        assert sole
