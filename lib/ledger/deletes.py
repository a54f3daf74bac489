"""The ledger's record of deletes passes (migrations/015): each pass's key ranges as they are checked and applied,
and a summary row per pass."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

from lib.ledger.schema import SCHEMA
from lib.models import Bounds


@dataclass(frozen=True)
class DeleteRange:
    range_no: int
    bounds: Bounds
    checked: bool
    target_rows: int
    differs: bool
    to_delete: int
    to_restore: int
    applied: bool
    deleted: int
    restored: int


def delete_ranges(conn: psycopg.Connection[Any], run_id: int, table: str) -> list[DeleteRange]:
    rows = conn.execute(
        f"SELECT range_no, bounds, checked, coalesce(target_rows, 0), coalesce(differs, false), coalesce(to_delete, 0), "
        "coalesce(to_restore, 0), applied, coalesce(deleted, 0), coalesce(restored, 0) "
        f"FROM {SCHEMA}.delete_ranges WHERE run_id = %s AND table_name = %s ORDER BY range_no", (run_id, table)).fetchall()
    return [DeleteRange(r[0], Bounds.from_json(r[1]), *r[2:]) for r in rows]


def store_delete_ranges(conn: psycopg.Connection[Any], run_id: int, table: str, ranges: list[Bounds]) -> None:
    """A pass's key ranges, once; a second caller's are the same and change nothing."""
    with conn.cursor() as cur:
        cur.executemany(
            f"INSERT INTO {SCHEMA}.delete_ranges (run_id, table_name, range_no, bounds) VALUES (%s, %s, %s, %s::jsonb) "
            "ON CONFLICT DO NOTHING", [(run_id, table, n, b.to_json()) for n, b in enumerate(ranges)])


def range_checked(conn: psycopg.Connection[Any], run_id: int, table: str, range_no: int, target_rows: int,
                  differs: bool, to_delete: int, to_restore: int) -> None:
    conn.execute(
        f"UPDATE {SCHEMA}.delete_ranges SET checked = true, target_rows = %s, differs = %s, to_delete = %s, "
        "to_restore = %s WHERE run_id = %s AND table_name = %s AND range_no = %s",
        (target_rows, differs, to_delete, to_restore, run_id, table, range_no))


def forget_unapplied_ranges(conn: psycopg.Connection[Any], run_id: int, table: str) -> None:
    """The pass's findings in the ranges not applied yet are stale: the next attempt checks them again."""
    conn.execute(f"UPDATE {SCHEMA}.delete_ranges SET checked = false, differs = NULL, to_delete = NULL, "
                 "to_restore = NULL WHERE run_id = %s AND table_name = %s AND NOT applied", (run_id, table))


def range_applied(conn: psycopg.Connection[Any], run_id: int, table: str, range_no: int, deleted: int,
                  restored: int) -> None:
    """In the range's own transaction: its rows and this mark commit together."""
    conn.execute(f"UPDATE {SCHEMA}.delete_ranges SET applied = true, deleted = %s, restored = %s "
                 "WHERE run_id = %s AND table_name = %s AND range_no = %s", (deleted, restored, run_id, table, range_no))


def record_delete_pass(conn: psycopg.Connection[Any], run_id: int, table: str, mode: str, counts: dict[str, Any],
                       refused: str | None = None) -> None:
    """One deletes pass (lib/check/deletes.py): its ranges, what it deleted or restored, or why it refused."""
    conn.execute(
        f"INSERT INTO {SCHEMA}.delete_passes (run_id, table_name, mode, key_ranges, differing_ranges, deleted, restored, "
        "target_rows, seconds, refused) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (run_id, table, mode, counts.get("ranges", 0), counts.get("differing", 0), counts.get("deleted", 0),
         counts.get("restored", 0), counts.get("target_rows", 0), counts.get("seconds", 0), refused))


