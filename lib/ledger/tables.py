"""The ledger's tables of a run: each table's stored plan, load fields, reconciliation and post-load step, and
who owns a target table."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import dict_row

from lib.config.sources import SourceConfig
from lib.ledger.schema import SCHEMA
from lib.models import TablePlan

# Second key class of the advisory lock that makes taking a target table's ownership atomic ("MJ").
TARGET_LOCK_CLASS = 0x4D4A


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


def table_reads(conn: psycopg.Connection[Any], run_id: int) -> dict[str, str]:
    """The point in time each planned table of the run is read at (tables read live are absent)."""
    rows = conn.execute(f"SELECT table_name, read_at FROM {SCHEMA}.migration_table_status "
                        "WHERE run_id = %s AND read_at IS NOT NULL", (run_id,)).fetchall()
    return {r[0]: r[1] for r in rows}


def planned_tables(conn: psycopg.Connection[Any], run_id: int) -> dict[str, str]:
    """Tables of the run that have a stored plan (or a recorded planning failure) → status."""
    rows = conn.execute(
        f"SELECT table_name, status FROM {SCHEMA}.migration_table_status WHERE run_id = %s", (run_id,)
    ).fetchall()
    return {r[0]: r[1] for r in rows}


# How a table's chunks meet its target (lib/load_modes.TableLoad.ledger_fields), stored with its plan.
LOAD_FIELDS = ("load_mode", "merge_key", "destination_table", "destination", "watermark_column", "watermark_lo",
               "watermark_hi", "watermark_lo_from", "watermark_rows", "load_scope", "read_at")


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


def set_primary_key_plan(conn: psycopg.Connection[Any], run_id: int, table: str, columns: list[str]) -> None:
    conn.execute(f"UPDATE {SCHEMA}.migration_table_status SET primary_key = %s WHERE run_id = %s AND table_name = %s",
                 (json.dumps(columns), run_id, table))


def update_table_columns(conn: psycopg.Connection[Any], run_id: int, table: str, described: list[dict[str, Any]]) -> None:
    conn.execute(f"UPDATE {SCHEMA}.migration_table_status SET source_columns = %s WHERE run_id = %s AND table_name = %s",
                 (json.dumps(described), run_id, table))


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


def tables_waiting_for_post_load(conn: psycopg.Connection[Any], run_id: int) -> set[str]:
    """The run's tables that reconciled and wait for their post-load step (one query for the whole run)."""
    rows = conn.execute(f"SELECT table_name FROM {SCHEMA}.migration_table_status WHERE run_id = %s "
                        "AND status = 'post_load'", (run_id,)).fetchall()
    return {r[0] for r in rows}


def store_reconciliation(
    conn: psycopg.Connection[Any], run_id: int, table: str, rows_copied: int,
    source_count: int | None, target_count: int | None, ok: bool, error: str | None, against: str = "target",
    verdict: str | None = None,
) -> None:
    """Store counts and verdict (`verdict` names one the counts alone do not give: source_changed). A table that
    reconciles goes to 'post_load' (a completed one stays completed); only finish_table, once the post-load work
    is done, makes it 'completed'."""
    compared = rows_copied if against == "rows_read" else target_count
    # counts that agree are no match when the table failed for another reason (a key repeated across chunks)
    reconcile = verdict or ("error" if source_count is None or compared is None
                            else "match" if source_count == compared and ok else "mismatch")
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
    rows_written: int = 0  # rows the table's done chunks wrote in this run (inserted, updated or already there)


def claim_post_load(conn: psycopg.Connection[Any], run_id: int, table: str) -> PostLoad | None:
    """Inside a transaction: lock the table's ledger row if it waits for its post-load step (None if it
    does not, e.g. another process finished it first). The lock serialises concurrent finishers."""
    row = conn.execute(
        f"SELECT t.primary_key, t.primary_key_built_at, (SELECT coalesce(sum(c.rows_copied), 0) "
        f"FROM {SCHEMA}.migration_chunk_status c WHERE c.run_id = t.run_id AND c.table_name = t.table_name "
        f"AND c.status = 'done') FROM {SCHEMA}.migration_table_status t "
        "WHERE t.run_id = %s AND t.table_name = %s AND t.status = 'post_load' FOR UPDATE OF t",
        (run_id, table),
    ).fetchone()
    if row is None:
        return None
    return PostLoad(list(row[0]) if row[0] and row[1] is None else [], int(row[2]))


def complete_post_load(conn: psycopg.Connection[Any], run_id: int, table: str, built_key: bool,
                       analyzed: bool = True) -> None:
    conn.execute(
        f"UPDATE {SCHEMA}.migration_table_status SET status = 'completed', completed_at = now(), "
        "analyzed_at = CASE WHEN %s THEN now() ELSE analyzed_at END, "
        "primary_key_built_at = CASE WHEN %s THEN now() ELSE primary_key_built_at END "
        "WHERE run_id = %s AND table_name = %s AND status = 'post_load'",
        (analyzed, built_key, run_id, table),
    )


def fail_post_load(conn: psycopg.Connection[Any], run_id: int, table: str, error: str) -> None:
    conn.execute(
        f"UPDATE {SCHEMA}.migration_table_status SET status = 'failed', error = %s, completed_at = now() "
        "WHERE run_id = %s AND table_name = %s AND status = 'post_load'",
        (error, run_id, table),
    )


def source_snapshots(conn: psycopg.Connection[Any], config: SourceConfig, run_id: int) -> dict[tuple[str, ...], str]:
    """Each planned source table of the run that is read at a point in time → that time (lib/plan/tables.py)."""
    reads = table_reads(conn, run_id)
    return {spec.source: reads[spec.name] for spec in config.tables if spec.name in reads}


def unfinished_tables(conn: psycopg.Connection[Any], run_id: int) -> int:
    """Tables whose chunks are all done or failed but that wait to be reconciled or for their post-load step."""
    row = conn.execute(
        f"SELECT count(*) FROM {SCHEMA}.migration_table_status t WHERE t.run_id = %s AND t.status IN ('running', "
        f"'post_load') AND NOT EXISTS (SELECT 1 FROM {SCHEMA}.migration_chunk_status c WHERE c.run_id = t.run_id "
        "AND c.table_name = t.table_name AND c.status IN ('pending', 'running'))", (run_id,)).fetchone()
    return int(row[0]) if row else 0
