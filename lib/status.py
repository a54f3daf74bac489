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
from psycopg.rows import dict_row

from lib.errors import FenceLostError
from lib.models import Bounds, ClaimedChunk, TablePlan

SCHEMA = "migration_status"
# First key of the two-key advisory locks the engine takes ("MI"): chunk liveness locks.
CHUNK_LOCK_CLASS = 0x4D49
# Second key of a liveness lock: one per (chunk, fence), so a new claim never waits on a stuck old owner.
LIVENESS_KEY = "((({chunk}) * 1000003 + ({fence})) %% 2147483647)::int"
# Single-key advisory lock serialising schema migrations.
MIGRATION_LOCK_KEY = 0x4D49475241544531

MIGRATIONS: list[tuple[int, str, str]] = [
    (
        1,
        "runs, tables, chunks",
        """
        CREATE TABLE IF NOT EXISTS migration_status.migration_runs (
            run_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            config_hash text NOT NULL,
            source_name text NOT NULL,
            status text NOT NULL CHECK (status IN
                ('planning', 'running', 'completed', 'completed_with_errors', 'failed', 'abandoned')),
            started_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now(),
            completed_at timestamptz,
            total_rows_copied bigint NOT NULL DEFAULT 0,
            completed_tables integer NOT NULL DEFAULT 0,
            failed_tables integer NOT NULL DEFAULT 0,
            error text,
            metadata jsonb NOT NULL DEFAULT '{}'::jsonb
        );
        CREATE INDEX IF NOT EXISTS migration_runs_hash_idx
            ON migration_status.migration_runs (config_hash, started_at DESC);

        CREATE TABLE IF NOT EXISTS migration_status.migration_table_status (
            run_id bigint NOT NULL REFERENCES migration_status.migration_runs ON DELETE CASCADE,
            table_name text NOT NULL,
            target_table text NOT NULL,
            status text NOT NULL DEFAULT 'pending'
                CHECK (status IN ('pending', 'running', 'completed', 'failed')),
            strategy text,
            strategy_reason text,
            planned_chunks integer,
            planned_rows bigint,
            plan_queries integer,
            plan_seconds double precision,
            plan_notes jsonb NOT NULL DEFAULT '[]'::jsonb,
            source_columns jsonb,
            rows_copied bigint NOT NULL DEFAULT 0,
            source_count bigint,
            target_count bigint,
            reconcile_status text NOT NULL DEFAULT 'pending'
                CHECK (reconcile_status IN ('pending', 'match', 'mismatch', 'error')),
            reconciled_at timestamptz,
            error text,
            started_at timestamptz NOT NULL DEFAULT now(),
            completed_at timestamptz,
            PRIMARY KEY (run_id, table_name)
        );

        CREATE TABLE IF NOT EXISTS migration_status.migration_chunk_status (
            chunk_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            run_id bigint NOT NULL,
            table_name text NOT NULL,
            chunk_no integer NOT NULL,
            predicate text NOT NULL,
            bounds jsonb NOT NULL,
            expected_rows bigint NOT NULL,
            rows_copied bigint,
            bytes_copied bigint,
            status text NOT NULL DEFAULT 'pending'
                CHECK (status IN ('pending', 'running', 'done', 'failed')),
            attempts integer NOT NULL DEFAULT 0,
            fence bigint NOT NULL DEFAULT 0,
            worker text,
            lease_expires_at timestamptz,
            started_at timestamptz,
            completed_at timestamptz,
            error text,
            UNIQUE (run_id, table_name, chunk_no),
            FOREIGN KEY (run_id, table_name)
                REFERENCES migration_status.migration_table_status ON DELETE CASCADE
        );
        CREATE INDEX IF NOT EXISTS migration_chunk_status_run_status_idx
            ON migration_status.migration_chunk_status (run_id, status);
        """,
    ),
    (
        2,
        "progress view",
        """
        CREATE OR REPLACE VIEW migration_status.table_progress AS
        SELECT t.run_id, t.table_name, t.target_table, t.status, t.strategy,
               count(c.chunk_id) AS chunks,
               count(c.chunk_id) FILTER (WHERE c.status = 'done') AS chunks_done,
               count(c.chunk_id) FILTER (WHERE c.status = 'running') AS chunks_running,
               count(c.chunk_id) FILTER (WHERE c.status = 'pending') AS chunks_pending,
               count(c.chunk_id) FILTER (WHERE c.status = 'failed') AS chunks_failed,
               t.planned_rows AS expected_rows,
               coalesce(sum(c.rows_copied) FILTER (WHERE c.status = 'done'), 0) AS rows_copied,
               t.source_count, t.target_count, t.reconcile_status,
               round((coalesce(sum(c.rows_copied) FILTER (WHERE c.status = 'done'), 0)
                   / greatest(extract(epoch FROM coalesce(t.completed_at, now()) - t.started_at), 0.001))::numeric, 1)
                   AS rows_per_second
        FROM migration_status.migration_table_status t
        LEFT JOIN migration_status.migration_chunk_status c USING (run_id, table_name)
        GROUP BY t.run_id, t.table_name;
        """,
    ),
    (
        3,
        "retry backoff",
        """
        ALTER TABLE migration_status.migration_chunk_status ADD COLUMN IF NOT EXISTS retry_at timestamptz;
        """,
    ),
    (
        4,
        "primary key built after the load",
        """
        ALTER TABLE migration_status.migration_table_status ADD COLUMN IF NOT EXISTS primary_key jsonb;
        ALTER TABLE migration_status.migration_table_status ADD COLUMN IF NOT EXISTS primary_key_built_at timestamptz;
        """,
    ),
    (
        5,
        "dashboard views",
        """
        CREATE OR REPLACE VIEW migration_status.run_summary AS
        SELECT r.run_id, r.source_name, r.status, r.started_at, r.completed_at,
               round((extract(epoch FROM coalesce(r.completed_at, now()) - r.started_at) / 3600)::numeric, 2) AS hours,
               coalesce((r.metadata #>> '{config,settings,resume_max_age}')::numeric, 168) AS resume_max_age_hours,
               count(c.chunk_id) AS chunks,
               count(c.chunk_id) FILTER (WHERE c.status = 'done') AS chunks_done,
               count(c.chunk_id) FILTER (WHERE c.status = 'failed') AS chunks_failed,
               coalesce(sum(c.expected_rows), 0) AS expected_rows,
               coalesce(sum(c.rows_copied) FILTER (WHERE c.status = 'done'), 0) AS rows_copied,
               r.completed_tables, r.failed_tables, r.error
        FROM migration_status.migration_runs r
        LEFT JOIN migration_status.migration_chunk_status c USING (run_id)
        GROUP BY r.run_id;

        CREATE OR REPLACE VIEW migration_status.failed_chunks AS
        SELECT run_id, table_name, chunk_no, predicate, attempts, error, started_at, completed_at
        FROM migration_status.migration_chunk_status WHERE status = 'failed';

        CREATE OR REPLACE VIEW migration_status.stalled_leases AS
        SELECT run_id, table_name, chunk_no, worker, fence, started_at, lease_expires_at,
               now() - started_at AS running_for
        FROM migration_status.migration_chunk_status
        WHERE status = 'running' AND lease_expires_at < now();

        CREATE OR REPLACE VIEW migration_status.runs_near_window_end AS
        SELECT run_id, source_name, status, started_at, resume_max_age_hours,
               round((resume_max_age_hours - extract(epoch FROM now() - started_at) / 3600)::numeric, 1) AS hours_left
        FROM migration_status.run_summary
        WHERE status IN ('running', 'completed_with_errors', 'failed')
          AND resume_max_age_hours - extract(epoch FROM now() - started_at) / 3600 < 24;

        CREATE OR REPLACE VIEW migration_status.reconciliation AS
        SELECT run_id, table_name, target_table, status, planned_rows AS expected_rows, rows_copied,
               source_count, target_count, target_count - source_count AS difference, reconcile_status, reconciled_at, error
        FROM migration_status.migration_table_status;

        CREATE OR REPLACE VIEW migration_status.throughput_per_minute AS
        SELECT run_id, date_trunc('minute', completed_at) AS minute, count(*) AS chunks,
               sum(rows_copied) AS rows_copied, round(sum(rows_copied) / 60.0, 1) AS rows_per_second,
               round(sum(bytes_copied) / 60.0 / 1048576, 2) AS mib_per_second
        FROM migration_status.migration_chunk_status WHERE status = 'done'
        GROUP BY run_id, date_trunc('minute', completed_at);
        """,
    ),
]


def apply_migrations(conn: psycopg.Connection[Any]) -> list[int]:
    """Bring the schema to the latest version; safe to call from many processes at once."""
    applied_now: list[int] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {SCHEMA}.schema_migrations ("
            "version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r[0] for r in conn.execute(f"SELECT version FROM {SCHEMA}.schema_migrations").fetchall()}
        for version, name, ddl in MIGRATIONS:
            if version in done:
                continue
            conn.execute(ddl)
            conn.execute(f"INSERT INTO {SCHEMA}.schema_migrations (version, name) VALUES (%s, %s)", (version, name))
            applied_now.append(version)
    return applied_now


@dataclass(frozen=True)
class RunRow:
    run_id: int
    status: str
    started_at: Any
    age_hours: float


def find_latest_run(conn: psycopg.Connection[Any], config_hash: str) -> RunRow | None:
    row = conn.execute(
        f"SELECT run_id, status, started_at, extract(epoch FROM now() - started_at) / 3600.0 "
        f"FROM {SCHEMA}.migration_runs WHERE config_hash = %s AND status <> 'abandoned' "
        "ORDER BY started_at DESC, run_id DESC LIMIT 1",
        (config_hash,),
    ).fetchone()
    return RunRow(row[0], row[1], row[2], float(row[3])) if row else None


def create_run(conn: psycopg.Connection[Any], config_hash: str, source_name: str, metadata: dict[str, Any]) -> int:
    row = conn.execute(
        f"INSERT INTO {SCHEMA}.migration_runs (config_hash, source_name, status, metadata) "
        "VALUES (%s, %s, 'running', %s) RETURNING run_id",
        (config_hash, source_name, json.dumps(metadata)),
    ).fetchone()
    assert row is not None
    return int(row[0])


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


def planned_tables(conn: psycopg.Connection[Any], run_id: int) -> dict[str, str]:
    """Tables of the run that have a stored plan (or a recorded planning failure) → status."""
    rows = conn.execute(
        f"SELECT table_name, status FROM {SCHEMA}.migration_table_status WHERE run_id = %s", (run_id,)
    ).fetchall()
    return {r[0]: r[1] for r in rows}


def store_plan(
    conn: psycopg.Connection[Any], run_id: int, table: str, target: str, plan: TablePlan,
    source_columns: list[dict[str, Any]],
) -> None:
    """Store a table's plan and column list; the caller's transaction makes it atomic with any truncate."""
    conn.execute(
        f"INSERT INTO {SCHEMA}.migration_table_status (run_id, table_name, target_table, status, strategy, "
        "strategy_reason, planned_chunks, planned_rows, plan_queries, plan_seconds, plan_notes, source_columns, error) "
        "VALUES (%s, %s, %s, 'running', %s, %s, %s, %s, %s, %s, %s, %s, NULL) "
        "ON CONFLICT (run_id, table_name) DO UPDATE SET status = 'running', strategy = EXCLUDED.strategy, "
        "strategy_reason = EXCLUDED.strategy_reason, planned_chunks = EXCLUDED.planned_chunks, "
        "planned_rows = EXCLUDED.planned_rows, plan_queries = EXCLUDED.plan_queries, "
        "plan_seconds = EXCLUDED.plan_seconds, plan_notes = EXCLUDED.plan_notes, "
        "source_columns = EXCLUDED.source_columns, error = NULL, started_at = now(), completed_at = NULL",
        (run_id, table, target, plan.strategy, plan.reason, len(plan.chunks), plan.expected_rows,
         plan.queries, plan.seconds, json.dumps(plan.notes), json.dumps(source_columns)),
    )
    with conn.cursor() as cur:
        cur.executemany(
            f"INSERT INTO {SCHEMA}.migration_chunk_status "
            "(run_id, table_name, chunk_no, predicate, bounds, expected_rows) VALUES (%s, %s, %s, %s, %s, %s)",
            [(run_id, table, c.chunk_no, c.bounds.describe(), c.bounds.to_json(), c.expected_rows) for c in plan.chunks],
        )


def record_table_failure(conn: psycopg.Connection[Any], run_id: int, table: str, target: str, error: str) -> None:
    conn.execute(
        f"INSERT INTO {SCHEMA}.migration_table_status (run_id, table_name, target_table, status, error, completed_at) "
        "VALUES (%s, %s, %s, 'failed', %s, now()) "
        "ON CONFLICT (run_id, table_name) DO UPDATE SET status = 'failed', error = EXCLUDED.error, completed_at = now()",
        (run_id, table, target, error),
    )


def reset_failed(conn: psycopg.Connection[Any], run_id: int) -> int:
    """On resume every unfinished chunk gets a fresh set of attempts (failed ones, those left running
    by workers that died, pending ones under a lowered max_attempts); tables whose planning failed
    are re-planned."""
    cur = conn.execute(
        f"UPDATE {SCHEMA}.migration_chunk_status SET status = 'pending', attempts = 0, worker = NULL, "
        "lease_expires_at = NULL, retry_at = NULL WHERE run_id = %s AND status = 'failed'",
        (run_id,),
    )
    conn.execute(  # also chunks whose attempts are used up under a lowered max_attempts
        f"UPDATE {SCHEMA}.migration_chunk_status SET attempts = 0 WHERE run_id = %s AND status IN ('running', 'pending')",
        (run_id,),
    )
    conn.execute(
        f"DELETE FROM {SCHEMA}.migration_table_status t WHERE run_id = %s AND status = 'failed' "
        f"AND NOT EXISTS (SELECT 1 FROM {SCHEMA}.migration_chunk_status c "
        "WHERE c.run_id = t.run_id AND c.table_name = t.table_name)",
        (run_id,),
    )
    conn.execute(
        f"UPDATE {SCHEMA}.migration_table_status SET status = 'running', completed_at = NULL, "
        "reconcile_status = 'pending' WHERE run_id = %s AND status = 'failed'",
        (run_id,),
    )
    return cur.rowcount


_CLAIMABLE = f"""
    FROM {SCHEMA}.migration_chunk_status
    WHERE run_id = %(run_id)s
      AND EXISTS (SELECT 1 FROM {SCHEMA}.migration_runs r WHERE r.run_id = %(run_id)s AND r.status = 'running')
      AND (
        (status = 'pending' AND (retry_at IS NULL OR retry_at <= now()))
        OR (status = 'running' AND (lease_expires_at < now()
            OR pg_try_advisory_xact_lock({CHUNK_LOCK_CLASS}, {LIVENESS_KEY.format(chunk="chunk_id", fence="fence")}))))
"""


def claim_chunk(
    conn: psycopg.Connection[Any], run_id: int, worker: str, lease_seconds: int, max_attempts: int
) -> ClaimedChunk | None:
    """Claim the next chunk (pending, or running with a dead or expired owner) on `conn`.

    The claim commits at once, and `conn` keeps a session advisory lock on the chunk until
    `release_liveness_lock`: the signal that this worker is alive.
    """
    params = {"run_id": run_id, "worker": worker, "lease": lease_seconds, "max_attempts": max_attempts}
    with conn.transaction():
        # A chunk whose owners died max_attempts times is failed, not retried forever.
        conn.execute(
            f"UPDATE {SCHEMA}.migration_chunk_status SET status = 'failed', lease_expires_at = NULL, "
            "error = coalesce(error || '; ', '') || 'worker lost on attempt ' || attempts "
            f"WHERE chunk_id IN (SELECT chunk_id {_CLAIMABLE} AND status = 'running' "
            "AND attempts >= %(max_attempts)s FOR UPDATE SKIP LOCKED)",
            params,
        )
        row = conn.execute(
            f"WITH next AS (SELECT chunk_id {_CLAIMABLE} AND attempts < %(max_attempts)s "
            "ORDER BY chunk_id LIMIT 1 FOR UPDATE SKIP LOCKED) "
            f"UPDATE {SCHEMA}.migration_chunk_status c SET status = 'running', fence = c.fence + 1, "
            "attempts = c.attempts + 1, worker = %(worker)s, started_at = clock_timestamp(), "
            "lease_expires_at = now() + make_interval(secs => %(lease)s) FROM next WHERE c.chunk_id = next.chunk_id "
            "RETURNING c.chunk_id, c.run_id, c.table_name, c.chunk_no, c.bounds, c.expected_rows, c.fence, c.attempts",
            params,
        ).fetchone()
        if row is None:
            return None
        # try-lock: the key is new for this fence, so only a hash collision could make it fail,
        # and then the chunk merely looks alive until its lease expires.
        conn.execute(f"SELECT pg_try_advisory_lock(%s, {LIVENESS_KEY.format(chunk='%s', fence='%s')})",
                     (CHUNK_LOCK_CLASS, row[0], row[6]))
    return ClaimedChunk(row[0], row[1], row[2], row[3], Bounds.from_json(row[4]), row[5], row[6], row[7])


def release_liveness_lock(conn: psycopg.Connection[Any], chunk: ClaimedChunk) -> None:
    conn.execute(f"SELECT pg_advisory_unlock(%s, {LIVENESS_KEY.format(chunk='%s', fence='%s')})",
                 (CHUNK_LOCK_CLASS, chunk.chunk_id, chunk.fence))


def mark_done(conn: psycopg.Connection[Any], chunk: ClaimedChunk, rows: int, nbytes: int) -> None:
    """Inside the chunk's transaction: mark done only if we still hold the fence."""
    cur = conn.execute(
        f"UPDATE {SCHEMA}.migration_chunk_status SET status = 'done', rows_copied = %s, bytes_copied = %s, "
        "completed_at = clock_timestamp(), lease_expires_at = NULL, error = NULL "
        "WHERE chunk_id = %s AND fence = %s AND status = 'running'",
        (rows, nbytes, chunk.chunk_id, chunk.fence),
    )
    if cur.rowcount != 1:
        raise FenceLostError(
            f"chunk {chunk.table_name}#{chunk.chunk_no} was reclaimed by another worker (fence {chunk.fence}); "
            "this worker's copy is rolled back"
        )


def mark_failed(conn: psycopg.Connection[Any], chunk: ClaimedChunk, error: str, retry_in: float | None,
                max_attempts: int) -> str:
    """Record a failed attempt. With `retry_in` seconds (a transient error) the chunk goes back to
    pending, claimable after that backoff, while attempts remain; otherwise it is failed."""
    row = conn.execute(
        f"UPDATE {SCHEMA}.migration_chunk_status SET "
        "status = CASE WHEN %(retry)s AND attempts < %(max)s THEN 'pending' ELSE 'failed' END, "
        "retry_at = now() + make_interval(secs => %(wait)s), "
        "error = %(error)s, lease_expires_at = NULL "
        # status = 'running': when a COMMIT's outcome is unknown (connection lost during it), the
        # chunk may in fact be done; then it stays done and is not copied a second time.
        "WHERE chunk_id = %(id)s AND fence = %(fence)s AND status = 'running' RETURNING status",
        {"retry": retry_in is not None, "max": max_attempts, "wait": retry_in or 0, "error": error,
         "id": chunk.chunk_id, "fence": chunk.fence},
    ).fetchone()
    return row[0] if row else "already done or reclaimed"


def seconds_until_retry(conn: psycopg.Connection[Any], run_id: int) -> float | None:
    """Seconds until the next chunk waiting out a retry backoff becomes claimable; None if none waits."""
    row = conn.execute(
        f"SELECT extract(epoch FROM min(retry_at) - now()) FROM {SCHEMA}.migration_chunk_status "
        "WHERE run_id = %s AND status = 'pending' AND retry_at > now()",
        (run_id,),
    ).fetchone()
    return None if row is None or row[0] is None else max(float(row[0]), 0.0)


def release_chunk(conn: psycopg.Connection[Any], chunk: ClaimedChunk) -> None:
    """Give an unfinished chunk back (clean stop): pending again, the attempt not counted."""
    conn.execute(
        f"UPDATE {SCHEMA}.migration_chunk_status SET status = 'pending', attempts = greatest(attempts - 1, 0), "
        "lease_expires_at = NULL, worker = NULL WHERE chunk_id = %s AND fence = %s AND status = 'running'",
        (chunk.chunk_id, chunk.fence),
    )


def chunk_counts(conn: psycopg.Connection[Any], run_id: int) -> dict[str, dict[str, int]]:
    """Per table: number of chunks in each status, plus rows copied by done chunks."""
    rows = conn.execute(
        f"SELECT table_name, status, count(*), coalesce(sum(rows_copied), 0) FROM {SCHEMA}.migration_chunk_status "
        "WHERE run_id = %s GROUP BY 1, 2",
        (run_id,),
    ).fetchall()
    out: dict[str, dict[str, int]] = {}
    for table, status, n, copied in rows:
        t = out.setdefault(table, {"pending": 0, "running": 0, "done": 0, "failed": 0, "rows_copied": 0})
        t[status] = int(n)
        if status == "done":
            t["rows_copied"] = int(copied)
    return out


def set_primary_key_plan(conn: psycopg.Connection[Any], run_id: int, table: str, columns: list[str]) -> None:
    conn.execute(f"UPDATE {SCHEMA}.migration_table_status SET primary_key = %s WHERE run_id = %s AND table_name = %s",
                 (json.dumps(columns), run_id, table))


def pending_primary_key(conn: psycopg.Connection[Any], run_id: int, table: str) -> list[str]:
    row = conn.execute(
        f"SELECT primary_key FROM {SCHEMA}.migration_table_status WHERE run_id = %s AND table_name = %s "
        "AND primary_key IS NOT NULL AND primary_key_built_at IS NULL",
        (run_id, table),
    ).fetchone()
    return list(row[0]) if row else []


def mark_primary_key_built(conn: psycopg.Connection[Any], run_id: int, table: str) -> None:
    conn.execute(f"UPDATE {SCHEMA}.migration_table_status SET primary_key_built_at = now() "
                 "WHERE run_id = %s AND table_name = %s", (run_id, table))


def update_table_columns(conn: psycopg.Connection[Any], run_id: int, table: str, described: list[dict[str, Any]]) -> None:
    conn.execute(f"UPDATE {SCHEMA}.migration_table_status SET source_columns = %s WHERE run_id = %s AND table_name = %s",
                 (json.dumps(described), run_id, table))


def record_resume_window(conn: psycopg.Connection[Any], run_id: int, hours: float) -> None:
    """The window of the latest start is the run's window (dashboards compute hours left from it)."""
    conn.execute(
        f"UPDATE {SCHEMA}.migration_runs SET metadata = jsonb_set(metadata, '{{config,settings,resume_max_age}}', "
        "to_jsonb(%s::numeric), true) WHERE run_id = %s AND metadata ? 'config'", (hours, run_id))


def table_columns(conn: psycopg.Connection[Any], run_id: int) -> dict[str, list[dict[str, Any]]]:
    """The stored source column descriptions of each planned table of the run."""
    rows = conn.execute(
        f"SELECT table_name, source_columns FROM {SCHEMA}.migration_table_status "
        "WHERE run_id = %s AND source_columns IS NOT NULL",
        (run_id,),
    ).fetchall()
    return {r[0]: r[1] for r in rows}


def table_rows(conn: psycopg.Connection[Any], run_id: int) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            f"SELECT * FROM {SCHEMA}.migration_table_status WHERE run_id = %s ORDER BY table_name", (run_id,)
        )
        return list(cur.fetchall())


def store_reconciliation(
    conn: psycopg.Connection[Any], run_id: int, table: str, rows_copied: int,
    source_count: int | None, target_count: int | None, ok: bool, error: str | None,
) -> None:
    reconcile = "error" if source_count is None or target_count is None else ("match" if source_count == target_count else "mismatch")
    conn.execute(
        f"UPDATE {SCHEMA}.migration_table_status SET rows_copied = %s, source_count = %s, target_count = %s, "
        "reconcile_status = %s, reconciled_at = now(), status = %s, error = %s, completed_at = now() "
        "WHERE run_id = %s AND table_name = %s",
        (rows_copied, source_count, target_count, reconcile, "completed" if ok else "failed", error, run_id, table),
    )


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
