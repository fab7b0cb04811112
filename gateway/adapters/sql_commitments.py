"""Pending storage commitments in SQL, shared by the SQLite and PostgreSQL indexes
(:class:`gateway.ports.PendingCommitments`).

Schema version 8, table ``pending_commitments``: one row per storage commitment request answered
and not yet reported: its Transaction UID, the calling AE title and address, the references as
a JSON list of [SOP Class UID, SOP Instance UID], whether its Transaction UID was already in use
(``duplicate``), when it was accepted, and the lease: ``holder`` (the replica reporting it) and
``lease_until``. As with the webhook cursors, every lease change is one conditional UPDATE, so
replicas racing for a request are decided by the database (PostgreSQL re-checks the WHERE of a
row another transaction changed meanwhile; SQLite has one writer at a time).
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.ports import PendingCommitment

COLUMNS = "key, transaction_uid, ae_title, address, refs, duplicate, accepted_at"


def migration(text: str, integer: str, real: str) -> tuple[str, ...]:
    """The statements of schema version 8 (the database's column types)."""
    return (
        f"CREATE TABLE pending_commitments (key {text} PRIMARY KEY NOT NULL, transaction_uid {text} NOT NULL,"
        f" ae_title {text} NOT NULL, address {text} NOT NULL, refs {text} NOT NULL, duplicate {integer} NOT NULL,"
        f" accepted_at {real} NOT NULL, holder {text}, lease_until {real})",
    )


def add_sql(p: str) -> str:
    """Parameters: :func:`add_params`."""
    return f"INSERT INTO pending_commitments ({COLUMNS}, holder, lease_until) VALUES ({', '.join([p] * 9)})"


def add_params(pending: PendingCommitment, holder: str, until: float) -> tuple[object, ...]:
    refs = orjson.dumps([list(reference) for reference in pending.references]).decode()
    return (
        pending.key,
        pending.transaction_uid,
        pending.ae_title,
        pending.address,
        refs,
        int(pending.duplicate),
        pending.accepted_at,
        holder,
        until,
    )


def claim_sql(p: str) -> str:
    """Parameters: :func:`claim_params`. Returns the claimed rows (:func:`from_row`)."""
    # The condition is repeated outside the sub-select: PostgreSQL re-evaluates only the outer
    # WHERE on a row that a concurrent claim changed, so the loser of a race skips it.
    free = f"(holder IS NULL OR lease_until < {p} OR holder = {p})"
    return (
        f"UPDATE pending_commitments SET holder = {p}, lease_until = {p} WHERE key IN"
        f" (SELECT key FROM pending_commitments WHERE {free} ORDER BY accepted_at, key LIMIT {p})"
        f" AND {free} RETURNING {COLUMNS}"
    )


def claim_params(holder: str, until: float, now: float, *, mine: bool, limit: int) -> tuple[object, ...]:
    # A holder is never empty, so '' matches no row: without ``mine`` only free or lapsed ones.
    own = holder if mine else ""
    return (holder, until, now, own, limit, now, own)


def renew_sql(p: str) -> str:
    """Parameters: until, key, holder. One row changed when ``holder`` still holds it."""
    return f"UPDATE pending_commitments SET lease_until = {p} WHERE key = {p} AND holder = {p}"


def remove_sql(p: str) -> str:
    """Parameters: key."""
    return f"DELETE FROM pending_commitments WHERE key = {p}"


def release_sql(p: str) -> str:
    """Parameters: holder."""
    return f"UPDATE pending_commitments SET holder = NULL, lease_until = NULL WHERE holder = {p}"


LIST_SQL = f"SELECT {COLUMNS} FROM pending_commitments ORDER BY accepted_at, key"


def from_row(row: tuple[Any, ...]) -> PendingCommitment:
    key, transaction, ae_title, address, refs, duplicate, accepted_at = row
    return PendingCommitment(
        key=str(key),
        transaction_uid=str(transaction),
        ae_title=str(ae_title),
        address=str(address),
        references=tuple((str(c), str(s)) for c, s in orjson.loads(refs)),
        duplicate=bool(duplicate),
        accepted_at=float(accepted_at),
    )


def oldest_first(rows: list[tuple[Any, ...]]) -> list[PendingCommitment]:
    """Rows as records in acceptance order (RETURNING gives no order)."""
    return sorted(map(from_row, rows), key=lambda p: (p.accepted_at, p.key))
