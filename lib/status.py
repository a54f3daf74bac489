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
from lib.ledger_schema import SCHEMA
from lib.models import Bounds, ClaimedChunk, TablePlan

# First key of the two-key advisory locks the engine takes ("MI"): chunk liveness locks.
CHUNK_LOCK_CLASS = 0x4D49
# Second key of a liveness lock: one per (chunk, fence), so a new claim never waits on a stuck old owner.
# Computed in bigint whatever the operands' types (psycopg sends a small Python int as int2 or int4, whose
# product would overflow), each operand reduced first so no chunk id or fence below 2^63 can overflow it.
LIVENESS_KEY = ("((({chunk})::bigint %% 2147483647 * 1000003 + ({fence})::bigint %% 2147483647) "
                "%% 2147483647)::int")

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


# Second key class of the advisory lock that makes taking a target table's ownership atomic ("MJ").
TARGET_LOCK_CLASS = 0x4D4A
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


@dataclass(frozen=True)
class TargetOwner:
    run_id: int
    source_name: str
    run_status: str
    table_name: str
    table_status: str
    started_at: Any


def lock_target(conn: psycopg.Connection[Any], target: str) -> None:
    """Inside a transaction: serialise everyone who takes ownership of `target` until it commits."""
    conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (TARGET_LOCK_CLASS, target))


def target_owner(conn: psycopg.Connection[Any], target: str, run_id: int) -> TargetOwner | None:
    """Another live run that loads `target`, if any.

    The ledger row is the lock: a table owns its target from the moment its plan is stored until it is
    completed, as long as its run can still be resumed (running, completed_with_errors or failed, and
    within its resume window). A table that failed at planning never wrote to the target and owns nothing.
    """
    row = conn.execute(
        f"SELECT t.run_id, r.source_name, r.status, t.table_name, t.status, r.started_at "
        f"FROM {SCHEMA}.migration_table_status t JOIN {SCHEMA}.migration_runs r USING (run_id) "
        "WHERE t.target_table = %s AND t.run_id <> %s AND t.planned_chunks IS NOT NULL AND t.status <> 'completed' "
        "AND r.status IN ('running', 'completed_with_errors', 'failed') "
        "AND extract(epoch FROM now() - r.started_at) / 3600 "
        "    < coalesce((r.metadata #>> '{config,settings,resume_max_age}')::numeric, 168) "
        "ORDER BY t.run_id DESC LIMIT 1",
        (target, run_id),
    ).fetchone()
    return TargetOwner(*row) if row else None


def target_loads(conn: psycopg.Connection[Any], target: str, run_id: int) -> list[dict[str, Any]]:
    """The loads whose rows a target holds: this run's table and every completed load of it by other runs
    that were not abandoned since. Each: run_id, load_mode, watermark_column, load_scope (None: recorded
    before scopes were)."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            f"SELECT t.run_id, t.load_mode, t.watermark_column, t.load_scope FROM {SCHEMA}.migration_table_status t "
            f"JOIN {SCHEMA}.migration_runs r USING (run_id) WHERE t.target_table = %s AND t.planned_chunks IS NOT NULL "
            "AND (t.run_id = %s OR (t.status = 'completed' AND r.status <> 'abandoned')) ORDER BY t.run_id",
            (target, run_id))
        return list(cur.fetchall())


def earlier_copy_by_config(conn: psycopg.Connection[Any], target: str, run_id: int) -> int | None:
    """The latest other run of this run's config that copied `target` from scratch (load mode copy), if any."""
    row = conn.execute(
        f"SELECT t.run_id FROM {SCHEMA}.migration_table_status t JOIN {SCHEMA}.migration_runs r USING (run_id) "
        "WHERE t.target_table = %s AND t.load_mode = 'copy' AND t.run_id <> %s "
        f"AND r.config_hash = (SELECT config_hash FROM {SCHEMA}.migration_runs WHERE run_id = %s) "
        "ORDER BY t.run_id DESC LIMIT 1", (target, run_id, run_id)).fetchone()
    return int(row[0]) if row else None


def create_run(conn: psycopg.Connection[Any], config_hash: str, source_name: str, metadata: dict[str, Any]) -> int:
    row = conn.execute(
        f"INSERT INTO {SCHEMA}.migration_runs (config_hash, source_name, status, metadata) "
        "VALUES (%s, %s, 'running', %s) RETURNING run_id",
        (config_hash, source_name, json.dumps(metadata)),
    ).fetchone()
    assert row is not None
    return int(row[0])


def run_snapshot(conn: psycopg.Connection[Any], run_id: int) -> str | None:
    """The run's Snowflake point in time (settings.snapshot), if it has one; each table says whether it reads at it."""
    row = conn.execute(f"SELECT metadata ->> 'snapshot_at' FROM {SCHEMA}.migration_runs WHERE run_id = %s",
                       (run_id,)).fetchone()
    return row[0] if row else None


def table_reads(conn: psycopg.Connection[Any], run_id: int) -> dict[str, str]:
    """The point in time each planned table of the run is read at (tables read live are absent)."""
    rows = conn.execute(f"SELECT table_name, read_at FROM {SCHEMA}.migration_table_status "
                        "WHERE run_id = %s AND read_at IS NOT NULL", (run_id,)).fetchall()
    return {r[0]: r[1] for r in rows}


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


# How a table's chunks meet its target (lib/load_modes.TableLoad.ledger_fields), stored with its plan.
LOAD_FIELDS = ("load_mode", "merge_key", "destination_table", "destination", "watermark_column", "watermark_lo",
               "watermark_hi", "watermark_lo_from", "load_scope", "read_at")


def store_plan(
    conn: psycopg.Connection[Any], run_id: int, table: str, target: str, plan: TablePlan,
    source_columns: list[dict[str, Any]], load: dict[str, Any],
) -> None:
    """Store a table's plan, column list and load mode; the caller's transaction makes it atomic with any
    truncate or shadow table."""
    fields = ", ".join(LOAD_FIELDS)
    conn.execute(
        f"INSERT INTO {SCHEMA}.migration_table_status (run_id, table_name, target_table, status, strategy, "
        f"strategy_reason, planned_chunks, planned_rows, plan_queries, plan_seconds, plan_notes, source_columns, error, "
        f"source_results, row_bytes, {fields}) VALUES (%s, %s, %s, 'running', %s, %s, %s, %s, %s, %s, %s, %s, NULL, %s, %s, "
        f"{', '.join(['%s'] * len(LOAD_FIELDS))}) "
        "ON CONFLICT (run_id, table_name) DO UPDATE SET status = 'running', strategy = EXCLUDED.strategy, "
        "strategy_reason = EXCLUDED.strategy_reason, planned_chunks = EXCLUDED.planned_chunks, "
        "planned_rows = EXCLUDED.planned_rows, plan_queries = EXCLUDED.plan_queries, "
        "plan_seconds = EXCLUDED.plan_seconds, plan_notes = EXCLUDED.plan_notes, "
        "source_columns = EXCLUDED.source_columns, error = NULL, started_at = now(), completed_at = NULL, "
        "source_results = EXCLUDED.source_results, row_bytes = EXCLUDED.row_bytes, "
        + ", ".join(f"{f} = EXCLUDED.{f}" for f in LOAD_FIELDS),
        (run_id, table, target, plan.strategy, plan.reason, len(plan.chunks), plan.expected_rows,
         plan.queries, plan.seconds, json.dumps(plan.notes), json.dumps(source_columns), plan.source_results,
         plan.row_bytes, *(load.get(f) for f in LOAD_FIELDS)),
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
    WHERE run_id = %(run_id)s AND status IN ('pending', 'running')
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
            "RETURNING c.chunk_id, c.run_id, c.table_name, c.chunk_no, c.bounds, c.expected_rows, c.fence, c.attempts, "
            "c.repair, c.staged",
            params,
        ).fetchone()
        if row is None:
            return None
        # try-lock: the key is new for this fence, so only a hash collision could make it fail,
        # and then the chunk merely looks alive until its lease expires.
        conn.execute(f"SELECT pg_try_advisory_lock(%s, {LIVENESS_KEY.format(chunk='%s', fence='%s')})",
                     (CHUNK_LOCK_CLASS, row[0], row[6]))
    return ClaimedChunk(row[0], row[1], row[2], row[3], Bounds.from_json(row[4]), row[5], row[6], row[7], row[8], row[9])


def release_liveness_lock(conn: psycopg.Connection[Any], chunk: ClaimedChunk) -> None:
    conn.execute(f"SELECT pg_advisory_unlock(%s, {LIVENESS_KEY.format(chunk='%s', fence='%s')})",
                 (CHUNK_LOCK_CLASS, chunk.chunk_id, chunk.fence))


def mark_done(conn: psycopg.Connection[Any], chunk: ClaimedChunk, rows: int, nbytes: int,
              inserted: int | None = None, updated: int | None = None, notes: list[str] | None = None,
              values_changed: int = 0) -> None:
    """Inside the chunk's transaction: mark done only if the run is still running and we still hold the fence.

    The run row is share-locked until the chunk commits, so a run cannot be abandoned (and its target
    truncated by the run that replaces it) between this check and the commit.
    """
    run = conn.execute(f"SELECT status FROM {SCHEMA}.migration_runs WHERE run_id = %s FOR SHARE",
                       (chunk.run_id,)).fetchone()
    if run is None or run[0] != "running":
        raise FenceLostError(
            f"run {chunk.run_id} is {run[0] if run else 'gone'}, no longer running: chunk "
            f"{chunk.table_name}#{chunk.chunk_no} of this worker is rolled back"
        )
    cur = conn.execute(
        f"UPDATE {SCHEMA}.migration_chunk_status SET status = 'done', rows_copied = %s, bytes_copied = %s, "
        "rows_inserted = %s, rows_updated = %s, notes = %s, values_changed = %s, repair = false, "
        "completed_at = clock_timestamp(), "
        "lease_expires_at = NULL, error = NULL WHERE chunk_id = %s AND fence = %s AND status = 'running'",
        (rows, nbytes, rows if inserted is None else inserted, updated or 0, json.dumps(notes or []), values_changed,
         chunk.chunk_id, chunk.fence),
    )
    if cur.rowcount != 1:
        raise FenceLostError(
            f"chunk {chunk.table_name}#{chunk.chunk_no} was reclaimed by another worker (fence {chunk.fence}); "
            "this worker's copy is rolled back"
        )


def mark_failed(conn: psycopg.Connection[Any], chunk: ClaimedChunk, error: str, retry_in: float | None,
                max_attempts: int, stage_next: bool = False) -> str:
    """Record a failed attempt. With `retry_in` seconds (a transient error) the chunk goes back to
    pending, claimable after that backoff, while attempts remain; otherwise it is failed. `stage_next`: its
    later attempts go through the stage (lib/loaders.KeyedLoader)."""
    row = conn.execute(
        f"UPDATE {SCHEMA}.migration_chunk_status SET "
        "status = CASE WHEN %(retry)s AND attempts < %(max)s THEN 'pending' ELSE 'failed' END, "
        "retry_at = now() + make_interval(secs => %(wait)s), staged = staged OR %(stage_next)s, "
        "error = %(error)s, lease_expires_at = NULL "
        # status = 'running': when a COMMIT's outcome is unknown (connection lost during it), the
        # chunk may in fact be done; then it stays done and is not copied a second time.
        "WHERE chunk_id = %(id)s AND fence = %(fence)s AND status = 'running' RETURNING status",
        {"retry": retry_in is not None, "max": max_attempts, "wait": retry_in or 0, "error": error,
         "id": chunk.chunk_id, "fence": chunk.fence, "stage_next": stage_next},
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


DONE_SUMS = ("rows_copied", "rows_inserted", "rows_updated", "values_changed")


def chunk_counts(conn: psycopg.Connection[Any], run_id: int) -> dict[str, dict[str, int]]:
    """Per table: number of chunks in each status, plus the rows copied, inserted and updated and the values
    changed (NUL bytes) by done chunks."""
    sums = ", ".join(f"coalesce(sum({c}), 0)" for c in DONE_SUMS)
    rows = conn.execute(
        f"SELECT table_name, status, count(*), {sums} FROM {SCHEMA}.migration_chunk_status "
        "WHERE run_id = %s GROUP BY 1, 2",
        (run_id,),
    ).fetchall()
    out: dict[str, dict[str, int]] = {}
    for table, status, n, *done_sums in rows:
        t = out.setdefault(table, {"pending": 0, "running": 0, "done": 0, "failed": 0,
                                   **dict.fromkeys(DONE_SUMS, 0)})
        t[status] = int(n)
        if status == "done":
            t.update(zip(DONE_SUMS, map(int, done_sums), strict=True))
    return out


def set_primary_key_plan(conn: psycopg.Connection[Any], run_id: int, table: str, columns: list[str]) -> None:
    conn.execute(f"UPDATE {SCHEMA}.migration_table_status SET primary_key = %s WHERE run_id = %s AND table_name = %s",
                 (json.dumps(columns), run_id, table))


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


def table_load_rows(conn: psycopg.Connection[Any], run_id: int) -> dict[str, dict[str, Any]]:
    """Each planned table's stored columns and load fields (see LOAD_FIELDS)."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(f"SELECT table_name, source_columns, {', '.join(LOAD_FIELDS)} FROM {SCHEMA}.migration_table_status "
                    "WHERE run_id = %s AND source_columns IS NOT NULL", (run_id,))
        return {r["table_name"]: r for r in cur.fetchall()}


def read_shapes(conn: psycopg.Connection[Any], run_id: int) -> dict[str, tuple[str | None, int | None, int]]:
    """Each planned table's (source_results, row_bytes, rows of its largest chunk), for the memory budget."""
    rows = conn.execute(
        f"SELECT t.table_name, t.source_results, t.row_bytes, coalesce(max(c.expected_rows), 0) "
        f"FROM {SCHEMA}.migration_table_status t LEFT JOIN {SCHEMA}.migration_chunk_status c "
        "ON c.run_id = t.run_id AND c.table_name = t.table_name "
        "WHERE t.run_id = %s AND t.source_columns IS NOT NULL GROUP BY 1, 2, 3", (run_id,)).fetchall()
    return {r[0]: (r[1], r[2], int(r[3])) for r in rows}


def table_rows(conn: psycopg.Connection[Any], run_id: int) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            f"SELECT * FROM {SCHEMA}.migration_table_status WHERE run_id = %s ORDER BY table_name", (run_id,)
        )
        return list(cur.fetchall())


def store_reconciliation(
    conn: psycopg.Connection[Any], run_id: int, table: str, rows_copied: int,
    source_count: int | None, target_count: int | None, ok: bool, error: str | None, against: str = "target",
    verdict: str | None = None,
) -> None:
    """Store counts and verdict (`verdict` names one the counts alone do not give: source_changed). A table that
    reconciles goes to 'post_load' (a completed one stays completed); only finish_table, once the post-load work
    is done, makes it 'completed'."""
    compared = rows_copied if against == "rows_read" else target_count
    reconcile = verdict or ("error" if source_count is None or compared is None
                            else "match" if source_count == compared else "mismatch")
    conn.execute(
        f"UPDATE {SCHEMA}.migration_table_status SET rows_copied = %s, source_count = %s, target_count = %s, "
        "reconcile_status = %s, reconciled_at = now(), error = %s, reconciled_against = %s, "
        "status = CASE WHEN NOT %s THEN 'failed' WHEN status = 'completed' THEN 'completed' ELSE 'post_load' END, "
        "completed_at = CASE WHEN %s AND status = 'completed' THEN completed_at ELSE NULL END "
        "WHERE run_id = %s AND table_name = %s",
        (rows_copied, source_count, target_count, reconcile, error, against, ok, ok, run_id, table),
    )


def add_plan_note(conn: psycopg.Connection[Any], run_id: int, table: str, note: str) -> None:
    conn.execute(f"UPDATE {SCHEMA}.migration_table_status SET plan_notes = plan_notes || jsonb_build_array(%s::text) "
                 "WHERE run_id = %s AND table_name = %s", (note, run_id, table))


@dataclass(frozen=True)
class PostLoad:
    primary_key: list[str]  # to build, or [] when there is none to build or it is built


def claim_post_load(conn: psycopg.Connection[Any], run_id: int, table: str) -> PostLoad | None:
    """Inside a transaction: lock the table's ledger row if it waits for its post-load step (None if it
    does not, e.g. another process finished it first). The lock serialises concurrent finishers."""
    row = conn.execute(
        f"SELECT primary_key, primary_key_built_at FROM {SCHEMA}.migration_table_status "
        "WHERE run_id = %s AND table_name = %s AND status = 'post_load' FOR UPDATE",
        (run_id, table),
    ).fetchone()
    if row is None:
        return None
    return PostLoad(list(row[0]) if row[0] and row[1] is None else [])


def complete_post_load(conn: psycopg.Connection[Any], run_id: int, table: str, built_key: bool) -> None:
    conn.execute(
        f"UPDATE {SCHEMA}.migration_table_status SET status = 'completed', completed_at = now(), analyzed_at = now(), "
        "primary_key_built_at = CASE WHEN %s THEN now() ELSE primary_key_built_at END "
        "WHERE run_id = %s AND table_name = %s AND status = 'post_load'",
        (built_key, run_id, table),
    )


def fail_post_load(conn: psycopg.Connection[Any], run_id: int, table: str, error: str) -> None:
    conn.execute(
        f"UPDATE {SCHEMA}.migration_table_status SET status = 'failed', error = %s, completed_at = now() "
        "WHERE run_id = %s AND table_name = %s AND status = 'post_load'",
        (error, run_id, table),
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
