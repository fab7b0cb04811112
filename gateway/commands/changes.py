"""``dicomweb-gateway changes [--follow]``: the change feed for operators and scripts.

Reads the index the settings name (as ``migrate`` does), so it works beside running gateways
and without credentials of their HTTP side. Each entry is one line: readable columns, or with
``--json`` the entry as ``GET {base}/changefeed`` spells it (without Metadata) plus
``Principal``, who deleted or rejected (the HTTP feed leaves that to the audit trail).
``--follow`` keeps polling for newer entries until interrupted; entries commit in sequence
order (see :mod:`gateway.adapters.sql_changes`), so following by sequence misses none.
"""

from __future__ import annotations

from datetime import UTC, datetime

import anyio
import orjson

from gateway.commands.index_command import with_index
from gateway.ports import ChangeEntry, ChangeQuery, Index
from gateway.services.changefeed import feed_entry_json
from gateway.settings import Settings

PAGE = 500


def run_changes(settings: Settings, *, after: int, follow: bool, interval: float, as_json: bool) -> int:
    async def main() -> int:
        async def follow_changes(index: Index) -> None:
            await _print_changes(index, after=after, follow=follow, interval=interval, as_json=as_json)

        return await with_index(settings, "changes", follow_changes)

    try:
        return anyio.run(main)
    except KeyboardInterrupt:  # --follow ends with Ctrl-C
        return 0


async def _print_changes(index: Index, *, after: int, follow: bool, interval: float, as_json: bool) -> None:
    position = after
    while True:
        entries = await index.changes(ChangeQuery(limit=PAGE, after=position))
        for entry in entries:
            print(_line(entry, as_json), flush=True)
            position = entry.sequence
        if len(entries) == PAGE:
            continue
        if not follow:
            return
        await anyio.sleep(interval)


def _line(entry: ChangeEntry, as_json: bool) -> str:
    if as_json:
        body = feed_entry_json(entry)
        del body["Metadata"]
        body["Principal"] = entry.principal
        return orjson.dumps(body).decode()
    when = datetime.fromtimestamp(entry.timestamp, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    extra = " ".join(x for x in (entry.principal, entry.reason) if x)
    columns = [str(entry.sequence), when, entry.action.value, entry.state.value, entry.origin, entry.study_uid]
    columns += [entry.series_uid, entry.sop_uid]
    return "\t".join(columns) + (f"\t{extra}" if extra else "")
