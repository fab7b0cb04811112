"""``dicomweb-gateway migrate``: create or upgrade the index schema, then exit.

The gateway migrates on start-up anyway (the first connection does, under a lock, so replicas
starting together migrate once); this command lets a deployment do it as a separate step, e.g.
a Kubernetes Job or Helm hook before a rolling upgrade.
"""

from __future__ import annotations

import sys

import anyio

from gateway.app import build_index
from gateway.errors import GatewayError
from gateway.settings import Settings


def run_migrate(settings: Settings) -> int:
    async def main() -> int:
        try:
            index = build_index(settings)
        except ValueError as exc:
            print(f"dicomweb-gateway: cannot open the index {settings.effective_index_url}: {exc}", file=sys.stderr)
            return 2
        try:
            migrate = getattr(index, "migrate", None)
            version = await migrate() if migrate is not None else None
            await index.ping()
        except GatewayError as exc:
            print(f"dicomweb-gateway: migrate failed: {exc.reason}", file=sys.stderr)
            return 1
        finally:
            await index.aclose()
        print(f"index schema is at version {version}" if version is not None else "index schema is up to date")
        return 0

    return anyio.run(main)
