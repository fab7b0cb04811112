"""Who relies on a stored instance right now, so that undoing an upload never deletes what
another request was (or is about to be) told is stored.

An upload *claims* each SOP Instance UID before it writes, and releases the claim once its
response is decided. Undoing an instance (a refused request, a failed write) is allowed only to
the sole claimant; while the undo runs, new claimants wait, then find the instance gone and
write it afresh. This holds within one process; across replicas the create-only object write
and the index transaction are the only arbiters (see the closing note of the fault-tolerance
work).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio


class Claimant:
    """One upload (a STOW request, or one cache write); remembers what it claimed."""

    __slots__ = ("sops",)

    def __init__(self) -> None:
        self.sops: set[str] = set()


class InstanceClaims:
    def __init__(self) -> None:
        self._owners: dict[str, set[Claimant]] = {}
        self._undoing: dict[str, anyio.Event] = {}

    async def claim(self, sop: str, who: Claimant) -> None:
        while (done := self._undoing.get(sop)) is not None:
            await done.wait()
        # No await between the check above and this line: the event loop makes it atomic.
        self._owners.setdefault(sop, set()).add(who)
        who.sops.add(sop)

    def release_all(self, who: Claimant) -> None:
        for sop in who.sops:
            owners = self._owners.get(sop)
            if owners is not None:
                owners.discard(who)
                if not owners:
                    del self._owners[sop]
        who.sops.clear()

    @asynccontextmanager
    async def undoing(self, sop: str, who: Claimant) -> AsyncIterator[bool]:
        """Yields True when ``who`` alone relies on ``sop`` and may delete it; others wait meanwhile."""
        owners = self._owners.get(sop, set())
        if owners != {who}:
            yield False
            return
        del self._owners[sop]
        who.sops.discard(sop)
        done = self._undoing[sop] = anyio.Event()
        try:
            yield True
        finally:
            del self._undoing[sop]
            done.set()
