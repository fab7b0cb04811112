"""``dicomweb-gateway migrate``: create or upgrade the index schema, then exit.

The gateway migrates on start-up anyway (the first connection does, under a lock, so replicas
starting together migrate once); this command lets a deployment do it as a separate step, e.g.
a Kubernetes Job or Helm hook before a rolling upgrade.
"""

from __future__ import annotations

import anyio

from gateway.commands.index_command import with_index
from gateway.ports import Index
from gateway.settings import Settings


def run_migrate(settings: Settings) -> int:
    async def migrate(index: Index) -> None:
        step = getattr(index, "migrate", None)
        version = await step() if step is not None else None
        await index.ping()
        print(f"index schema is at version {version}" if version is not None else "index schema is up to date")

    return anyio.run(with_index, settings, "migrate", migrate)
