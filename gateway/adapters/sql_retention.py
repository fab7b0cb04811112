"""Retention in SQL, shared by the SQLite and PostgreSQL indexes (:mod:`gateway.services.retention`).

Tables (schema version 6):

* ``protected_studies`` — Study Instance UIDs a retention sweep never selects
  (``PUT {base}/studies/{study}/protected``). Kept while the study is absent, so a study
  protected and then sent again stays protected, as Orthanc's flag does not (it dies with the
  study) but a hospital's "keep this" means.
* ``leases`` — named, expiring leases: one replica at a time holds ``retention`` while it
  sweeps. A lease row rather than a PostgreSQL advisory lock, so the rule is the same in both
  databases and a replica that dies mid-sweep frees it when its lease runs out, not when its
  pooled connection happens to close.
"""

from __future__ import annotations

from gateway.ports import RetentionMatch


def migration(uid: str, real: str) -> tuple[str, ...]:
    """The statements of schema version 6 (``uid``: the database's UID column type)."""
    return (
        f"CREATE TABLE protected_studies (study_uid {uid} PRIMARY KEY, since {real} NOT NULL)",
        f"CREATE TABLE leases (name {uid} PRIMARY KEY, holder {uid}, expires {real} NOT NULL)",
        # Every rule's sweep walks instances oldest first (the PACS cache's rule keeps walking
        # its own partial index, instances_expiry: see candidates_sql).
        "CREATE INDEX instances_by_stored_at ON instances (stored_at)",
        # When the series was last read (max_idle_seconds rules); NULL: not since version 6.
        f"ALTER TABLE series ADD COLUMN accessed_at {real}",
    )


def candidates_sql(
    p: str, match: RetentionMatch, stored_before: float, limit: int, *, cached_copies: str
) -> tuple[str, list[object]]:
    """The query of :meth:`gateway.ports.Index.retention_candidates`; ``p``: the placeholder;
    ``cached_copies``: the database's WHERE terms of its partial index ``instances_expiry``
    (copies cached from a PACS that no upload was told are stored), repeated word for word for
    the PACS cache's rule so that the planner walks that small index."""
    conditions = [f"i.stored_at < {p}"]
    params: list[object] = [stored_before]
    joins = ""
    if match.modality or match.idle:
        joins = " JOIN series AS se ON se.study_uid = i.study_uid AND se.series_uid = i.series_uid"
    if match.idle:
        conditions.append(f"(se.accessed_at IS NULL OR se.accessed_at < {p})")
        params.append(stored_before)
    if match.origin == "pacs:":
        conditions.append(cached_copies)
    elif match.origin.endswith(":"):
        # A prefix compared as a prefix: LIKE would take '_' in a peer's name for a wildcard.
        conditions.append(f"substr(i.origin, 1, {len(match.origin)}) = {p}")
        params.append(match.origin)
    elif match.origin:
        conditions.append(f"i.origin = {p}")
        params.append(match.origin)
    if match.origin.startswith("pacs:") or not match.origin:
        # A cached copy an upload was also told is stored is the uploader's, not the cache's.
        conditions.append("NOT (i.shared AND substr(i.origin, 1, 5) = 'pacs:')")
    if match.modality:
        conditions.append(f"se.modality = {p}")
        params.append(match.modality)
    if match.sop_class:
        conditions.append(f"i.sop_class_uid = {p}")
        params.append(match.sop_class)
    conditions.append("NOT EXISTS (SELECT 1 FROM protected_studies AS ps WHERE ps.study_uid = i.study_uid)")
    sql = (
        "SELECT i.study_uid, i.series_uid, i.sop_uid, i.origin, i.stored_at,"
        f" {'se.accessed_at' if match.idle else 'NULL'} FROM instances AS i"
        f"{joins} WHERE {' AND '.join(conditions)} ORDER BY i.stored_at LIMIT {p}"
    )
    return sql, [*params, limit]


def protect_sql(p: str) -> str:
    return f"INSERT INTO protected_studies (study_uid, since) VALUES ({p}, {p}) ON CONFLICT (study_uid) DO NOTHING"


def unprotect_sql(p: str) -> str:
    return f"DELETE FROM protected_studies WHERE study_uid = {p}"


def is_protected_sql(p: str) -> str:
    return f"SELECT 1 FROM protected_studies WHERE study_uid = {p}"


def take_lease_sql(p: str) -> str:
    """Insert or take over the lease when free or already ours; parameters (name, holder,
    expires, now, holder). A row comes back exactly when the lease is now ``holder``'s."""
    return (
        f"INSERT INTO leases (name, holder, expires) VALUES ({p}, {p}, {p})"
        " ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires = excluded.expires"
        f" WHERE leases.expires < {p} OR leases.holder = {p} RETURNING holder"
    )


def release_lease_sql(p: str) -> str:
    """Parameters (name, holder): only the holder's own lease goes."""
    return f"DELETE FROM leases WHERE name = {p} AND holder = {p}"


def record_access_sql(p: str) -> str:
    """Parameters (now, study, series, now): never moves the time back."""
    return (
        f"UPDATE series SET accessed_at = {p} WHERE study_uid = {p} AND series_uid = {p}"
        f" AND (accessed_at IS NULL OR accessed_at < {p})"
    )
