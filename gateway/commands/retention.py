"""``dicomweb-gateway retention --dry-run``: what the retention rules would remove now, and why.

Reads the index the settings name (as ``changes`` does), beside running gateways; one line per
instance: rule, age in seconds, origin, study, series and SOP Instance UIDs. The sweep itself
runs inside ``serve`` (:mod:`gateway.services.retention`).
"""

from __future__ import annotations

import sys
import time

import anyio

from gateway.commands.index_command import with_index
from gateway.ports import Index
from gateway.services.retention import find_due
from gateway.settings import Settings
from gateway.settings_retention import effective_rules


def run_retention_dry_run(settings: Settings) -> int:
    rules = effective_rules(settings)
    if not rules:
        print("dicomweb-gateway: no retention rules are configured ([[retention]], pacs_cache_max_age)")
        return 0

    async def dry_run(index: Index) -> None:
        due = await find_due(index, rules, time.time())
        for item in due:
            c = item.candidate
            print(f"{item.rule}\t{item.age:.0f}s\t{c.origin}\t{c.study_uid}\t{c.series_uid}\t{c.sop_uid}")
        studies = len({item.candidate.study_uid for item in due})
        print(f"{len(due)} instance(s) of {studies} study(ies) would be removed (dry run)", file=sys.stderr)

    return anyio.run(with_index, settings, "retention", dry_run)
