"""``dicomweb-gateway echo [NAME]``: C-ECHO (PS3.7 9.1.5) each configured PACS node.

One line per node: the round-trip time of association + C-ECHO + release, or the exact reason
it failed (connection refused, association rejected and why, timeout). The exit status is 0
when every node answered, 1 otherwise, 2 for an unknown node name.
"""

from __future__ import annotations

import sys
from typing import TextIO

import anyio

from gateway.errors import GatewayError
from gateway.settings import PacsNode, Settings


def run_echo(settings: Settings, name: str | None, *, out: TextIO = sys.stdout) -> int:
    nodes = list(settings.pacs)
    if name is not None:
        nodes = [n for n in nodes if n.name.lower() == name.lower()]
        if not nodes:
            known = ", ".join(n.name for n in settings.pacs) or "none configured"
            print(f"dicomweb-gateway: no PACS named {name!r} ([[pacs]] names: {known})", file=sys.stderr)
            return 2
    if not nodes:
        print("dicomweb-gateway: no [[pacs]] nodes are configured", file=sys.stderr)
        return 2
    results = anyio.run(_echo_all, settings, nodes)
    width = max(len(n.name) for n in nodes)
    for node, (ok, text) in zip(nodes, results, strict=True):
        where = f"{node.ae_title}@{node.host}:{node.port}"
        print(f"{node.name:<{width}}  {where}  {'ok' if ok else 'FAILED'}  {text}", file=out)
    return 0 if all(ok for ok, _ in results) else 1


async def _echo_all(settings: Settings, nodes: list[PacsNode]) -> list[tuple[bool, str]]:
    from gateway.app import build_upstream

    results: list[tuple[bool, str]] = [(False, "")] * len(nodes)

    async def one(i: int, node: PacsNode) -> None:
        upstream = build_upstream(settings, node)
        try:
            seconds = await upstream.echo()
            results[i] = (True, f"{seconds * 1000:.1f} ms (calling AE {settings.ae_title})")
        except GatewayError as exc:
            results[i] = (False, exc.reason)
        finally:
            await upstream.aclose()

    async with anyio.create_task_group() as tg:
        for i, node in enumerate(nodes):
            tg.start_soon(one, i, node)
    return results
