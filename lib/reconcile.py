"""Row-count reconciliation: source COUNT(*) (with source_filter) against the target, stored per table.

A table is `completed` only when every chunk is done AND the counts match; anything else is
`failed` with a reason, so "completed with a mismatch" can never be reported as success.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

from lib import postgres_target as pg
from lib import status
from lib.config import TableSpec
from lib.errors import MigrationError, classify
from lib.snowflake_source import SnowflakeSource


@dataclass(frozen=True)
class Reconciliation:
    table: str
    ok: bool
    rows_copied: int
    source_count: int | None
    target_count: int | None
    error: str | None


def reconcile_table(
    source: SnowflakeSource, conn: psycopg.Connection[Any], run_id: int, spec: TableSpec,
    chunks: dict[str, int],
) -> Reconciliation:
    """Count both sides and store the verdict. `chunks` is the table's entry of status.chunk_counts."""
    problems: list[str] = []
    source_count = target_count = None
    try:
        source_count = source.count(spec.source, spec.source_filter)
    except MigrationError as exc:
        problems.append(f"source count failed: {exc}")
    try:
        target_count = pg.row_count(conn, spec.target)
    except Exception as exc:  # noqa: BLE001 - recorded as the table's error
        problems.append(f"target count failed: {classify(exc)}")
    if chunks.get("failed"):
        errors = conn.execute(
            f"SELECT chunk_no, error FROM {status.SCHEMA}.migration_chunk_status "
            "WHERE run_id = %s AND table_name = %s AND status = 'failed' ORDER BY chunk_no LIMIT 3",
            (run_id, spec.name),
        ).fetchall()
        detail = "; ".join(f"chunk {n}: {e}" for n, e in errors)
        problems.append(f"{chunks['failed']} chunk(s) failed ({detail})")
    if source_count is not None and target_count is not None and source_count != target_count:
        problems.append(
            f"row counts differ: source {source_count}, target {target_count} ({target_count - source_count:+d})"
        )
    error = "; ".join(problems) or None
    rec = Reconciliation(spec.name, error is None, chunks.get("rows_copied", 0), source_count, target_count, error)
    status.store_reconciliation(conn, run_id, spec.name, rec.rows_copied, source_count, target_count, rec.ok, error)
    return rec
