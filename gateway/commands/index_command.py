"""What the commands that work on the index alone (``migrate``, ``changes``, ``retention``)
share: open the index the settings name, run, close it, and turn failures into exit codes."""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable

from gateway.app import build_index
from gateway.errors import GatewayError
from gateway.ports import Index
from gateway.settings import Settings


async def with_index(settings: Settings, command: str, work: Callable[[Index], Awaitable[object]]) -> int:
    """Run ``work`` on the index: 0 once done, 1 when the index fails (its reason on stderr),
    2 when it cannot be opened at all."""
    try:
        index = build_index(settings)
    except ValueError as exc:
        print(f"dicomweb-gateway: cannot open the index {settings.effective_index_url}: {exc}", file=sys.stderr)
        return 2
    try:
        await work(index)
    except GatewayError as exc:
        print(f"dicomweb-gateway: {command} failed: {exc.reason}", file=sys.stderr)
        return 1
    finally:
        await index.aclose()
    return 0
