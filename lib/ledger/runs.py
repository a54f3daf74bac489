"""The `migration_status` ledger in the target database: schema migrations, runs, tables, chunks,
and the claim / lease / fence protocol.

Liveness of a claimed chunk is carried by PostgreSQL itself: the worker's data connection holds a
session advisory lock on (chunk, fence) while it works. A crashed worker's connection closes, the lock
goes with it, and the chunk can be reclaimed at once; a live-but-stuck worker keeps the lock until
its lease expires. Either way the fence (incremented on every claim) decides who may commit.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import psycopg

from lib.ledger.schema import SCHEMA


@dataclass(frozen=True)
class RunRow:
    run_id: int
    status: str
    started_at: Any
    age_hours: float
    start_token: str | None = None  # the invocation (or Step Functions execution) that created the run


def find_latest_run(conn: psycopg.Connection[Any], config_hash: str) -> RunRow | None:
    row = conn.execute(
        f"SELECT run_id, status, started_at, extract(epoch FROM now() - started_at) / 3600.0, "
        f"metadata ->> 'start_token' FROM {SCHEMA}.migration_runs WHERE config_hash = %s AND status <> 'abandoned' "
        "ORDER BY started_at DESC, run_id DESC LIMIT 1",
        (config_hash,),
    ).fetchone()
    return RunRow(row[0], row[1], row[2], float(row[3]), row[4]) if row else None


def find_run_for(conn: psycopg.Connection[Any], config_hash: str, source_name: str,
                 tables: list[str]) -> RunRow | None:
    """The run a command about these tables means: the latest of this config, else (a --table subset is a
    config of its own, and so is the whole after a subset ran) the latest run of the source that planned one."""
    latest = find_latest_run(conn, config_hash)
    if latest is not None:
        return latest
    row = conn.execute(
        f"SELECT r.run_id, r.status, r.started_at, extract(epoch FROM now() - r.started_at) / 3600.0, "
        f"r.metadata ->> 'start_token' FROM {SCHEMA}.migration_runs r WHERE r.source_name = %s AND r.status <> 'abandoned' "
        f"AND EXISTS (SELECT 1 FROM {SCHEMA}.migration_table_status t WHERE t.run_id = r.run_id AND t.table_name = ANY(%s)) "
        "ORDER BY r.started_at DESC, r.run_id DESC LIMIT 1", (source_name, tables)).fetchone()
    return RunRow(row[0], row[1], row[2], float(row[3]), row[4]) if row else None


# Key class of the shared advisory lock every worker connection of a run holds ("MK"): the run's pulse.
RUN_LOCK_CLASS = 0x4D4B


def hold_run(conn: psycopg.Connection[Any], run_id: int) -> None:
    """Mark `conn`'s session as working on the run until it closes (status tells a live run from a stalled one)."""
    conn.execute("SELECT pg_advisory_lock_shared(%s, (%s::bigint %% 2147483647)::int)", (RUN_LOCK_CLASS, run_id))


def live_sessions(conn: psycopg.Connection[Any], run_id: int) -> int:
    """Sessions working on the run now (see hold_run)."""
    row = conn.execute("SELECT count(DISTINCT pid) FROM pg_locks WHERE locktype = 'advisory' AND classid = %s "
                       "AND objid = (%s::bigint %% 2147483647)::oid AND objsubid = 2 AND granted AND database = "
                       "(SELECT oid FROM pg_database WHERE datname = current_database())",
                       (RUN_LOCK_CLASS, run_id)).fetchone()
    return int(row[0]) if row else 0


def later_loads(conn: psycopg.Connection[Any], run_id: int) -> dict[str, tuple[int, str]]:
    """Each target of the run that a later run (of any config) planned since → (that run, its source name)."""
    rows = conn.execute(
        f"SELECT DISTINCT ON (mine.target_table) mine.target_table, t.run_id, r.source_name "
        f"FROM {SCHEMA}.migration_table_status mine JOIN {SCHEMA}.migration_table_status t "
        "ON t.target_table = mine.target_table AND t.run_id > mine.run_id AND t.planned_chunks IS NOT NULL "
        f"JOIN {SCHEMA}.migration_runs r ON r.run_id = t.run_id WHERE mine.run_id = %s "
        "ORDER BY mine.target_table, t.run_id DESC", (run_id,)).fetchall()
    return {r[0]: (int(r[1]), r[2]) for r in rows}


def create_run(conn: psycopg.Connection[Any], config_hash: str, source_name: str, metadata: dict[str, Any]) -> int:
    row = conn.execute(
        f"INSERT INTO {SCHEMA}.migration_runs (config_hash, source_name, status, metadata) "
        "VALUES (%s, %s, 'running', %s) RETURNING run_id",
        (config_hash, source_name, json.dumps(metadata)),
    ).fetchone()
    assert row is not None
    return int(row[0])


def pinned_matches(conn: psycopg.Connection[Any], run_id: int) -> list[tuple[str, str, str]]:
    """The tables the config's patterns matched for this run (lib/plan/discover.py)."""
    row = conn.execute(f"SELECT metadata -> 'matched' FROM {SCHEMA}.migration_runs WHERE run_id = %s", (run_id,)).fetchone()
    return [tuple(t) for t in (row[0] or [])] if row else []  # type: ignore[misc]


def pin_matches(conn: psycopg.Connection[Any], run_id: int, sources: list[tuple[str, ...]]) -> None:
    """Add tables to the run's pinned matches: every later step of the run uses them, whatever Snowflake lists."""
    have = set(pinned_matches(conn, run_id))
    merged = sorted(have | {(t[0], t[1], t[2]) for t in sources})
    if len(merged) != len(have):
        conn.execute(f"UPDATE {SCHEMA}.migration_runs SET metadata = jsonb_set(metadata, '{{matched}}', %s::jsonb) "
                     "WHERE run_id = %s", (json.dumps(merged), run_id))


def completed_tables(conn: psycopg.Connection[Any], config_hash: str) -> set[str]:
    """Tables some run of this config completed (the runs it abandoned left out)."""
    rows = conn.execute(
        f"SELECT DISTINCT t.table_name FROM {SCHEMA}.migration_table_status t JOIN {SCHEMA}.migration_runs r "
        "USING (run_id) WHERE r.config_hash = %s AND r.status <> 'abandoned' AND t.status = 'completed'",
        (config_hash,)).fetchall()
    return {r[0] for r in rows}


def run_snapshot(conn: psycopg.Connection[Any], run_id: int) -> str | None:
    """The run's Snowflake point in time (settings.snapshot), if it has one; each table says whether it reads at it."""
    row = conn.execute(f"SELECT metadata ->> 'snapshot_at' FROM {SCHEMA}.migration_runs WHERE run_id = %s",
                       (run_id,)).fetchone()
    return row[0] if row else None


def set_run_status(conn: psycopg.Connection[Any], run_id: int, status: str, error: str | None = None) -> None:
    conn.execute(
        f"UPDATE {SCHEMA}.migration_runs SET status = %s, error = %s, updated_at = now(), "
        "completed_at = CASE WHEN %s IN ('running', 'planning') THEN NULL ELSE now() END "
        "WHERE run_id = %s AND status <> 'abandoned'",  # a superseded run's late workers cannot revive it
        (status, error, status, run_id),
    )


def abandon_run(conn: psycopg.Connection[Any], run_id: int, why: str) -> None:
    conn.execute(
        f"UPDATE {SCHEMA}.migration_runs SET status = 'abandoned', updated_at = now(), "
        "metadata = metadata || jsonb_build_object('abandoned_because', %s::text) WHERE run_id = %s",
        (why, run_id),
    )


def record_resume_window(conn: psycopg.Connection[Any], run_id: int, hours: float) -> None:
    """The window of the latest start is the run's window (dashboards compute hours left from it)."""
    conn.execute(
        f"UPDATE {SCHEMA}.migration_runs SET metadata = jsonb_set(metadata, '{{config,settings,resume_max_age}}', "
        "to_jsonb(%s::numeric), true) WHERE run_id = %s AND metadata ? 'config'", (hours, run_id))


def finalize_run_counters(conn: psycopg.Connection[Any], run_id: int) -> dict[str, int]:
    """Recompute the run's counters from the chunk and table ledgers (never incrementally)."""
    row = conn.execute(
        f"""UPDATE {SCHEMA}.migration_runs r SET
            total_rows_copied = (SELECT coalesce(sum(rows_copied), 0) FROM {SCHEMA}.migration_chunk_status
                                 WHERE run_id = r.run_id AND status = 'done'),
            completed_tables = (SELECT count(*) FROM {SCHEMA}.migration_table_status
                                WHERE run_id = r.run_id AND status = 'completed'),
            failed_tables = (SELECT count(*) FROM {SCHEMA}.migration_table_status
                             WHERE run_id = r.run_id AND status = 'failed'),
            updated_at = now()
        WHERE run_id = %s RETURNING total_rows_copied, completed_tables, failed_tables""",
        (run_id,),
    ).fetchone()
    assert row is not None
    return {"total_rows_copied": row[0], "completed_tables": row[1], "failed_tables": row[2]}


def pending_query(conn: psycopg.Connection[Any], run_id: int, key: str) -> str | None:
    row = conn.execute(f"SELECT query_id FROM {SCHEMA}.pending_queries WHERE run_id = %s AND statement_key = %s",
                       (run_id, key)).fetchone()
    return row[0] if row else None


def remember_query(conn: psycopg.Connection[Any], run_id: int, key: str, query_id: str) -> None:
    conn.execute(f"INSERT INTO {SCHEMA}.pending_queries (run_id, statement_key, query_id) VALUES (%s, %s, %s) "
                 "ON CONFLICT (run_id, statement_key) DO UPDATE SET query_id = EXCLUDED.query_id, submitted_at = now()",
                 (run_id, key, query_id))


def forget_query(conn: psycopg.Connection[Any], run_id: int, key: str) -> None:
    conn.execute(f"DELETE FROM {SCHEMA}.pending_queries WHERE run_id = %s AND statement_key = %s", (run_id, key))
