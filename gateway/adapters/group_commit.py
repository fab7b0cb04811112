"""Group commit: concurrent writes that arrive while one commit is on disk share the next one.

An index commit is made durable by an fsync (SQLite in WAL mode, ``synchronous=FULL``), and
that fsync, not the rows, is most of its cost: a STOW of many instances, or many clients
storing at once, would otherwise pay one fsync per instance, one after the other. Here the
first caller commits its own item at once; items submitted meanwhile wait and then go together,
in one transaction, as the next batch. Each caller is answered only after the batch that holds
its item is committed, so "acknowledged means durable" is unchanged, and a lone caller waits
for no one (no timer: a batch is simply whatever queued during the previous commit).

The ``commit`` function does the work of one batch in a worker thread and answers every item,
in order: its result, or the exception that item alone raised (its own part of the transaction
rolled back, the others kept). An exception raised by ``commit`` itself (the COMMIT failed)
fails every item of the batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

import anyio
import anyio.to_thread

Item = TypeVar("Item")
Result = TypeVar("Result")


class _Waiter(Generic[Item, Result]):
    __slots__ = ("done", "error", "item", "result", "taken")

    def __init__(self, item: Item) -> None:
        self.item = item
        self.done = anyio.Event()
        self.taken = False
        self.result: Result | None = None
        self.error: BaseException | None = None


class GroupCommit(Generic[Item, Result]):
    """Batches of ``Item`` committed by ``commit`` in a worker thread, one batch at a time."""

    def __init__(
        self, commit: Callable[[Sequence[Item]], Sequence[Result | BaseException]], *, max_batch: int = 256
    ) -> None:
        self._commit = commit
        self._max_batch = max_batch
        self._queue: list[_Waiter[Item, Result]] = []
        self._turn: anyio.Event | None = None  # set when the batch on disk is done; None: no batch is

    async def submit(self, item: Item) -> Result:
        """Commit ``item`` (with whatever else is queued); its result, or its exception."""
        waiter: _Waiter[Item, Result] = _Waiter(item)
        self._queue.append(waiter)
        try:
            while not waiter.taken:
                if self._turn is not None:
                    # Another caller's batch is on disk: this item goes with the next one.
                    await self._turn.wait()
                else:
                    await self._run_batch()
        except BaseException:
            if not waiter.taken:
                self._queue.remove(waiter)  # cancelled before its batch began: nothing written
                raise
        # In a batch now: the caller is answered once that batch is decided, never before
        # (cancelled meanwhile, it is cancelled after: as a thread call's would be).
        with anyio.CancelScope(shield=True):
            await waiter.done.wait()
        if waiter.error is not None:
            raise waiter.error
        return waiter.result  # type: ignore[return-value]

    async def _run_batch(self) -> None:
        """Commit what is queued (up to ``max_batch`` items) as one batch; answer its waiters."""
        batch, self._queue = self._queue[: self._max_batch], self._queue[self._max_batch :]
        for waiter in batch:
            waiter.taken = True
        turn = self._turn = anyio.Event()
        try:
            with anyio.CancelScope(shield=True):
                outcomes = await anyio.to_thread.run_sync(self._commit, [w.item for w in batch])
            for waiter, outcome in zip(batch, outcomes, strict=True):
                if isinstance(outcome, BaseException):
                    waiter.error = outcome
                else:
                    waiter.result = outcome
        except BaseException as exc:
            for waiter in batch:
                waiter.error = exc
        finally:
            self._turn = None
            for waiter in batch:
                waiter.done.set()
            turn.set()
