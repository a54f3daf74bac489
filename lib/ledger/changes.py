"""The ledger's record of schema changes (migrations/014): what planning added, widened, found dropped or refused
in a target, and the source columns earlier loads of a target read."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from lib.ledger.schema import SCHEMA

CHANGE_FIELDS = ("column_name", "change", "from_type", "to_type", "ddl", "note")


def previous_columns(conn: psycopg.Connection[Any], target: str, run_id: int) -> list[dict[str, Any]] | None:
    """The source columns of the latest stored plan of `target` by another run (None: no plan of it stored)."""
    row = conn.execute(
        f"SELECT source_columns FROM {SCHEMA}.migration_table_status WHERE target_table = %s AND run_id <> %s "
        "AND source_columns IS NOT NULL AND planned_chunks IS NOT NULL ORDER BY run_id DESC LIMIT 1",
        (target, run_id)).fetchone()
    return list(row[0]) if row else None


def last_load_described(conn: psycopg.Connection[Any], scope: dict[str, Any], run_id: int) -> list[dict[str, Any]] | None:
    """The source columns of the last completed load of `scope` as planning described them; None: no such load."""
    row = conn.execute(
        f"SELECT source_columns FROM {SCHEMA}.migration_table_status WHERE target_table = %s AND status = 'completed' "
        "AND run_id <> %s AND load_scope = %s::jsonb AND source_columns IS NOT NULL ORDER BY completed_at DESC LIMIT 1",
        (scope["target"], run_id, Jsonb(scope))).fetchone()
    return list(row[0]) if row else None


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
