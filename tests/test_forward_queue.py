"""The forward queue keeps going past a job that fails in a way nobody planned for: a bug in
one instance's send (an exception that is not a gateway error) is retried with backoff like a
PACS refusal, and the instances queued behind it still go. Before, such an exception ended the
forwarding task for the rest of the process with nothing but a log line."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import anyio
import pytest

from gateway.adapters.sqlite_bridge import SqliteBridgeState
from gateway.ports import BlobStore, Index, Upstream
from gateway.services.forward import ForwardService

pytestmark = pytest.mark.anyio


class _FlakyUpstream:
    """A PACS whose first store of ``sop`` trips over an unexpected error (the fault a real
    peer cannot be told to produce: a bug on the gateway's side of the association)."""

    name = "pacs"

    def __init__(self, fails_first: str) -> None:
        self.fails_first = fails_first
        self.stored: list[str] = []
        self.both_stored = anyio.Event()

    async def store(self, path: Path, *, sop_class_uid: str, sop_uid: str, transfer_syntax: str) -> None:
        assert await anyio.Path(path).read_bytes() == b"part10 of " + sop_uid.encode()
        if sop_uid == self.fails_first:
            self.fails_first = ""
            raise AttributeError("'PosixPath' object has no attribute 'get'")
        self.stored.append(sop_uid)
        if len(self.stored) == 2:
            self.both_stored.set()


class _Store:
    async def download(self, key: str, path: Path) -> None:
        await anyio.Path(path).write_bytes(b"part10 of " + key.encode())


class _Index:
    async def get(self, study: str, series: str, sop: str) -> Any:
        return SimpleNamespace(
            object_key=sop,
            sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
            sop_uid=sop,
            transfer_syntax="1.2.840.10008.1.2.1",
        )


async def test_an_unexpected_error_is_retried_and_the_queue_goes_on(tmp_path: Path) -> None:
    state = SqliteBridgeState(tmp_path / "bridge.sqlite3")
    upstream = _FlakyUpstream(fails_first="1.2.3.1")
    service = ForwardService(
        state,
        cast(Upstream, upstream),
        cast(BlobStore, _Store()),
        cast(Index, _Index()),
        tmp_path / "spool",
        base_delay=0.05,
        idle_poll=0.05,
    )
    async with anyio.create_task_group() as tasks:
        service.start(tasks)
        await service.enqueue([("1.2.3", "1.2.3.0", "1.2.3.1"), ("1.2.3", "1.2.3.0", "1.2.3.2")])
        with anyio.fail_after(30):
            await upstream.both_stored.wait()
        tasks.cancel_scope.cancel()
    assert sorted(upstream.stored) == ["1.2.3.1", "1.2.3.2"]  # the failed one went on its retry
    assert upstream.stored[0] == "1.2.3.2"  # the one behind it did not wait for that retry to end the task
    status = await service.status()
    assert status["sent"] == 2
    assert status["failed_attempts"] == 1
    assert list((tmp_path / "spool").iterdir()) == []  # no spool file left by the failed attempt
