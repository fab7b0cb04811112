"""Webhook cursors in SQL, shared by the SQLite and PostgreSQL indexes (:class:`gateway.ports.WebhookCursors`).

Table ``webhook_cursors``: one row per ``[[webhooks]]`` name: ``sequence``, the last change-feed
entry passed; ``holder`` and ``lease_until``, the replica delivering it and until when. Every
statement is one conditional UPDATE, so two replicas racing for a lease or a cursor are decided
by the database: the loser's UPDATE matches no row. Lease times are the replicas' clocks (epoch
seconds): a skew of a few seconds only shortens or lengthens a lapsed lease's wait.
"""

from __future__ import annotations

from typing import Any

from gateway.ports import WebhookCursor

TABLE_DDL = (
    "CREATE TABLE webhook_cursors (name {text} PRIMARY KEY NOT NULL, sequence {integer} NOT NULL,"
    " holder {text}, lease_until {real})"
)


def add_sql(p: str) -> str:
    """Parameters: the name. A new cursor starts at the newest entry (0 for an empty feed)."""
    # "WHERE true": without it SQLite would read ON CONFLICT as a join's ON (its documented
    # parsing ambiguity of INSERT ... SELECT ... ON CONFLICT).
    return (
        "INSERT INTO webhook_cursors (name, sequence)"
        f" SELECT {p}, coalesce(max(sequence), 0) FROM changefeed WHERE true ON CONFLICT (name) DO NOTHING"
    )


def claim_sql(p: str) -> str:
    """Parameters: holder, until, name, holder, now. Returns the cursor's sequence when claimed."""
    return (
        f"UPDATE webhook_cursors SET holder = {p}, lease_until = {p} WHERE name = {p}"
        f" AND (holder IS NULL OR holder = {p} OR lease_until < {p}) RETURNING sequence"
    )


def advance_sql(p: str) -> str:
    """Parameters: sequence, until, name, holder. One row changed when the holder still holds it."""
    # GREATEST/MAX: a cursor never moves back, whatever a delayed statement says.
    return (
        f"UPDATE webhook_cursors SET sequence = CASE WHEN sequence < {p} THEN {p} ELSE sequence END,"
        f" lease_until = {p} WHERE name = {p} AND holder = {p}"
    )


def advance_params(sequence: int, until: float, name: str, holder: str) -> tuple[object, ...]:
    return (sequence, sequence, until, name, holder)


def release_sql(p: str) -> str:
    """Parameters: name, holder."""
    return f"UPDATE webhook_cursors SET holder = NULL, lease_until = NULL WHERE name = {p} AND holder = {p}"


CURSORS_SQL = (
    "SELECT w.name, w.sequence, (SELECT count(*) FROM changefeed AS c WHERE c.sequence > w.sequence),"
    " w.holder, w.lease_until FROM webhook_cursors AS w ORDER BY w.name"
)


def cursor_from_row(row: tuple[Any, ...]) -> WebhookCursor:
    name, sequence, pending, holder, lease_until = row
    return WebhookCursor(
        name=str(name),
        sequence=int(sequence),
        pending=int(pending),
        holder=None if holder is None else str(holder),
        lease_until=None if lease_until is None else float(lease_until),
    )
