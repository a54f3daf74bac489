"""The ledger's record of schema changes (migrations/014): what planning added, widened, found dropped or refused
in a target (the source columns earlier loads read are in lib/target/windows.load_history)."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.rows import dict_row

from lib.ledger.schema import SCHEMA

CHANGE_FIELDS = ("column_name", "change", "from_type", "to_type", "ddl", "note")


def record_schema_changes(conn: psycopg.Connection[Any], run_id: int, table: str, target: str,
                          changes: list[dict[str, Any]]) -> None:
    """One row per change (see CHANGE_FIELDS, plus `applied`: its DDL commits with this transaction)."""
    with conn.cursor() as cur:
        cur.executemany(
            f"INSERT INTO {SCHEMA}.schema_changes (run_id, table_name, target_table, {', '.join(CHANGE_FIELDS)}, "
            f"applied_at) VALUES (%s, %s, %s, {', '.join(['%s'] * len(CHANGE_FIELDS))}, "
            "CASE WHEN %s THEN now() END) ON CONFLICT (run_id, table_name, column_name, change) DO NOTHING",
            [(run_id, table, target, *(c[f] for f in CHANGE_FIELDS), c["applied"]) for c in changes])


def schema_changes(conn: psycopg.Connection[Any], run_id: int) -> list[dict[str, Any]]:
    """The schema changes recorded by a run, by table and column."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(f"SELECT table_name, target_table, {', '.join(CHANGE_FIELDS)}, applied_at "
                    f"FROM {SCHEMA}.schema_changes WHERE run_id = %s ORDER BY table_name, column_name, change",
                    (run_id,))
        return list(cur.fetchall())
