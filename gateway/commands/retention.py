"""``dicomweb-gateway retention --dry-run``: what the retention rules would remove now, and why.

Reads the index the settings name (as ``changes`` does), beside running gateways; one line per
instance: rule, age in seconds, origin, study, series and SOP Instance UIDs. The sweep itself
runs inside ``serve`` (:mod:`gateway.services.retention`).
"""

from __future__ import annotations

import sys
import time

import anyio

from gateway.app import build_index
from gateway.errors import GatewayError
from gateway.services.retention import find_due
from gateway.settings import Settings
from gateway.settings_retention import effective_rules


def run_retention_dry_run(settings: Settings) -> int:
    rules = effective_rules(settings)
    if not rules:
        print("dicomweb-gateway: no retention rules are configured ([[retention]], pacs_cache_max_age)")
        return 0

    async def main() -> int:
        try:
            index = build_index(settings)
        except ValueError as exc:
            print(f"dicomweb-gateway: cannot open the index {settings.effective_index_url}: {exc}", file=sys.stderr)
            return 2
        try:
            due = await find_due(index, rules, time.time())
        except GatewayError as exc:
            print(f"dicomweb-gateway: retention failed: {exc.reason}", file=sys.stderr)
            return 1
        finally:
            await index.aclose()
        for item in due:
            c = item.candidate
            print(f"{item.rule}\t{item.age:.0f}s\t{c.origin}\t{c.study_uid}\t{c.series_uid}\t{c.sop_uid}")
        studies = len({item.candidate.study_uid for item in due})
        print(f"{len(due)} instance(s) of {studies} study(ies) would be removed (dry run)", file=sys.stderr)
        return 0

    return anyio.run(main)
