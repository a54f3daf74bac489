"""Schema evolution: what planning does when a source table's columns no longer match its target's.

Compared with the target as it is and with the source columns of the target's last stored plan (the ledger):

- a source column the target lacks: `ALTER TABLE … ADD COLUMN` with the mapped type (nullable: the rows already
  there hold NULL until a merge fills them, lib/plan/evolution.py);
- a source type changed since the last plan into one the target column holds losslessly only after widening
  (longer varchar, more integer digits or scale, a wider integer, more fractional seconds): `ALTER COLUMN TYPE`;
- any other changed type (narrowing, another family): refused, with the DDL a person could run after checking;
- a column the last plan read that the source no longer has: kept in the target, the loads stop naming it (new
  rows get NULL or its default); refused if it is NOT NULL without a default, as no new row could be written;
- `schema_changes: freeze`: every one of those differences is refused.

A target type the source did not change is never touched: an existing target decides its own types.
The DDL runs inside the planning transaction, with the ledger rows that record it, so a crash leaves either
both or neither; `migrate.py plan` computes the same changes and applies none.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from lib.target import postgres as pg
from lib.target.wire import target_column_name
from lib.typemap import Column, columns_from_description


@dataclass(frozen=True)
class Change:
    """One difference between the source and its target, and what planning does with it."""

    column: str  # target column name
    source: str | None  # the source column (None: the source no longer has it)
    kind: str  # added | widened | dropped | refused
    from_type: str | None
    to_type: str | None
    statement: sql.Composable | None  # the DDL (to apply, or for a person to run)
    note: str

    @property
    def applies(self) -> bool:
        return self.kind in ("added", "widened")

    def ddl(self, conn: psycopg.Connection[Any]) -> str | None:
        return self.statement.as_string(conn) if self.statement is not None else None

    def describe(self, conn: psycopg.Connection[Any]) -> str:
        ddl = self.ddl(conn)
        return f"column {self.column} {self.note}" + (f": {ddl}" if ddl else "")

    def ledger_row(self, conn: psycopg.Connection[Any]) -> dict[str, Any]:
        return {"column_name": self.column, "change": self.kind, "from_type": self.from_type,
                "to_type": self.to_type, "ddl": self.ddl(conn), "note": self.note, "applied": self.applies}


@dataclass(frozen=True)
class _Type:
    """A PostgreSQL type as the widening rules see it."""

    family: str  # int | numeric | text | float | timestamp | timestamptz | time | anything else by its name
    size: int | None = None  # int: decimal digits it holds; numeric: precision; text: length; times: fraction digits
    scale: int = 0  # numeric only


_INT_DIGITS = {"smallint": 5, "int2": 5, "integer": 10, "int": 10, "int4": 10, "bigint": 19, "int8": 19}
_FLOAT_BITS = {"real": 24, "float4": 24, "double precision": 53, "float8": 53}
_TEXT = {"text", "varchar", "character varying"}
_TIME = re.compile(r"^(timestamptz|timestamp|time|timetz)(?:\((\d+)\))?(?: (with|without) time zone)?$")
_SIZED = re.compile(r"^([a-z ]+?)\s*\((\d+)(?:,\s*(\d+))?\)$")


def parse_type(text: str) -> _Type:
    name = " ".join(text.lower().split())
    if name in _INT_DIGITS:
        return _Type("int", _INT_DIGITS[name])
    if name in _FLOAT_BITS:
        return _Type("float", _FLOAT_BITS[name])
    if name in _TEXT or name in ("numeric", "decimal"):
        return _Type("text" if name in _TEXT else "numeric")
    if timed := _TIME.match(name):
        base, digits, zone = timed.groups()
        family = "timestamptz" if base == "timestamptz" or (base == "timestamp" and zone == "with") else base
        return _Type("time" if family == "timetz" else family, int(digits) if digits else 6)
    if sized := _SIZED.match(name):
        base, first, second = sized.groups()
        if base in _TEXT:
            return _Type("text", int(first))
        if base in ("numeric", "decimal"):
            return _Type("numeric", int(first), int(second or 0))
    return _Type(name)


def widens(old: str, new: str) -> bool:
    """Is `new` a different type that holds every value of `old` exactly (ALTER COLUMN TYPE loses nothing)?"""
    a, b = parse_type(old), parse_type(new)
    if a == b:
        return False
    if (a.family, b.family) == ("int", "numeric"):
        return b.size is None or b.size - b.scale >= (a.size or 0)
    if (a.family, b.family) == ("numeric", "int"):
        return a.size is not None and a.scale == 0 and a.size < (b.size or 0)
    if a.family != b.family:
        return False
    if a.family == "numeric":
        if b.size is None:
            return True
        return a.size is not None and b.size - b.scale >= a.size - a.scale and b.scale >= a.scale
    if a.family == "text":
        return a.size is not None and (b.size is None or b.size > a.size)
    if a.family in ("int", "float", "timestamp", "timestamptz", "time"):
        return (b.size or 0) > (a.size or 0)
    return False


def rewrites(old: str, new: str) -> bool:
    """Does ALTER COLUMN TYPE old → new rewrite the table? Not for a longer (or unlimited) varchar, nor for more
    numeric precision at the same scale (PostgreSQL only changes the catalog); every other widening does."""
    a, b = parse_type(old), parse_type(new)
    if a.family == b.family == "text":
        return False
    return not (a.family == b.family == "numeric" and (b.size is None or a.scale == b.scale))


def same_type(a: str, b: str) -> bool:
    return parse_type(a) == parse_type(b)


def compare(conn: psycopg.Connection[Any], target: tuple[str, str], types: dict[str, str], columns: list[Column],
            previous: list[dict[str, Any]] | None, freeze: bool, catch_up: bool) -> list[Change]:
    """Every difference between the source `columns` and the existing `target`, whose column `types` are given;
    `previous`: the source columns of the target's last stored plan (None: none), `catch_up`: the table is an
    insert-only catch-up into rows."""
    before = {c.name: c for c in columns_from_description([_source_only(d) for d in previous or []])}
    changes = [c for c in (_compare_column(conn, target, col, types, before.get(col.name)) for col in columns) if c]
    names = {c.name for c in columns}
    changes += [_dropped(conn, target, name, types[name]) for name in
                (target_column_name(old) for old in before if old not in names) if name in types]
    if freeze:
        return [_frozen(c) for c in changes]
    if catch_up:
        return [_no_fill(c) if c.kind == "added" else c for c in changes]
    return changes


def _source_only(described: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in described.items() if k != "target_type"}


def _compare_column(conn: psycopg.Connection[Any], target: tuple[str, str], column: Column, types: dict[str, str],
                    before: Column | None) -> Change | None:
    name = target_column_name(column.name)
    new = column.pg_type
    if name not in types:
        return Change(name, column.name, "added", None, new, _add(target, name, new), f"added in the source ({new})")
    now = types[name]
    if before is None or before.pg_type == new or same_type(now, new):
        return None  # the source did not change it, or the target already has it
    if widens(now, new):
        views = dependent_views(conn, target, name)
        if views:
            return Change(name, column.name, "refused", now, new, _alter(target, name, new, cast=False),
                          f"widened in the source ({before.source_type} → {column.source_type}), but view(s) "
                          f"{', '.join(views)} use it and PostgreSQL cannot change the type of a column a view uses: "
                          "drop them, run this, recreate them")
        return Change(name, column.name, "widened", now, new, _alter(target, name, new, cast=False),
                      f"widened in the source ({before.source_type} → {column.source_type})")
    if not same_type(now, before.pg_type) and widens(new, now):
        return None  # a type a person chose, which holds the new one too
    return Change(name, column.name, "refused", now, new, _alter(target, name, new, cast=True),
                  f"changed in the source ({before.source_type} → {column.source_type}): {now} → {new} is not a "
                  "lossless widening; check that every value fits, then run")


def _dropped(conn: psycopg.Connection[Any], target: tuple[str, str], name: str, now: str) -> Change:
    if required_without_default(conn, target, name):
        return Change(name, None, "refused", now, None,
                      sql.SQL("ALTER TABLE {} ALTER COLUMN {} DROP NOT NULL").format(pg.table_ident(target),
                                                                                     sql.Identifier(name)),
                      "dropped in the source, but it is NOT NULL without a default in the target, so no new row "
                      "could be written: give it a default or allow NULL")
    return Change(name, None, "dropped", now, None, None,
                  "dropped in the source: kept in the target, new rows get NULL (or its default)")


def _frozen(change: Change) -> Change:
    if change.kind == "refused":
        return change
    return Change(change.column, change.source, "refused", change.from_type, change.to_type, change.statement,
                  f"{change.note} (schema_changes is freeze)")


def _no_fill(change: Change) -> Change:
    return Change(change.column, change.source, "refused", change.from_type, change.to_type, change.statement,
                  f"{change.note}, but an insert-only catch-up cannot update the rows the target holds, so they "
                  "would keep NULL: run once with insert_only_mode false (--insert-only-mode false; the merge adds "
                  "it and fills every row), or reload with truncate_onstart or --load-mode swap")


def _add(target: tuple[str, str], name: str, pg_type: str) -> sql.Composable:
    return sql.SQL("ALTER TABLE {} ADD COLUMN {} {}").format(pg.table_ident(target), sql.Identifier(name),
                                                             sql.SQL(pg_type))


def _alter(target: tuple[str, str], name: str, pg_type: str, cast: bool) -> sql.Composable:
    statement = sql.SQL("ALTER TABLE {} ALTER COLUMN {} TYPE {}").format(pg.table_ident(target), sql.Identifier(name),
                                                                        sql.SQL(pg_type))
    if cast:
        return sql.SQL("{} USING {}::{}").format(statement, sql.Identifier(name), sql.SQL(pg_type))
    return statement


def dependent_views(conn: psycopg.Connection[Any], target: tuple[str, str], column: str) -> list[str]:
    """Views and materialized views whose rules use the column (they block ALTER COLUMN TYPE)."""
    rows = conn.execute(
        "SELECT DISTINCT v.oid::regclass::text FROM pg_catalog.pg_depend d "
        "JOIN pg_catalog.pg_rewrite r ON r.oid = d.objid JOIN pg_catalog.pg_class v ON v.oid = r.ev_class "
        "JOIN pg_catalog.pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid "
        "WHERE d.classid = 'pg_catalog.pg_rewrite'::regclass AND d.refclassid = 'pg_catalog.pg_class'::regclass "
        "AND d.refobjid = %s::regclass AND a.attname = %s AND v.oid <> d.refobjid ORDER BY 1",
        (sql.Identifier(*target).as_string(conn), column)).fetchall()
    return [r[0] for r in rows]


def required_without_default(conn: psycopg.Connection[Any], target: tuple[str, str], column: str) -> bool:
    row = conn.execute(
        "SELECT attnotnull AND NOT atthasdef AND attidentity = '' AND attgenerated = '' FROM pg_catalog.pg_attribute "
        "WHERE attrelid = %s::regclass AND attname = %s AND NOT attisdropped",
        (sql.Identifier(*target).as_string(conn), column)).fetchone()
    return bool(row and row[0])


def apply(conn: psycopg.Connection[Any], changes: Iterable[Change]) -> None:
    """Inside the planning transaction: run the DDL of the changes that apply."""
    for change in changes:
        if change.applies and change.statement is not None:
            conn.execute(change.statement)


def types_after(types: dict[str, str], changes: Iterable[Change]) -> dict[str, str]:
    """Target types by source column once the changes apply (what a dry run reports without applying them)."""
    return {**types, **{c.source: c.to_type for c in changes if c.applies and c.source and c.to_type}}


def added_sources(changes: Iterable[Change]) -> set[str]:
    return {c.source for c in changes if c.kind == "added" and c.source}
