"""Deletes: the target rows of a merge or watermark table whose key the source no longer has (`deletes` hard or
soft), found without reading the whole table in either database.

1. The key's range is cut at real key values of the source (one aggregated query, as a chunk plan is) when its
   first column is a number or a text without a collation; any other key is one range.
2. Per range, a checksum of the keys (lib/check/checksum.py: count and hash sums, computed inside each
   database, ranges grouped into one query per side) in the source's scope (the rows the target holds,
   load_modes.held_scope, at the run's read point) and in the target (live rows: a soft-deleted one is not).
3. Only the ranges whose checksums differ have their keys read, from both sides, and compared.
4. The guard: if the rows to delete exceed `max_delete_fraction` of the target's live rows, nothing is deleted
   and the table fails, saying how to proceed: a source read that missed rows looks exactly like a mass delete.
5. Each differing range is applied in one transaction: its target rows are read again under FOR UPDATE and
   compared with the source's keys, so a row another writer changed meanwhile is judged as it is now. `hard`
   deletes them; `soft` sets `_deleted_at`, and clears it on a row whose key the source has again.

The pass runs in the table's reconcile step, after its chunks and before its counts. Its ranges are kept in the
ledger (delete_ranges), each marked checked, then applied in the transaction that changes its rows: a crash, or a
Step Functions step's deadline, leaves the table unreconciled, and the next attempt goes on where it stopped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from lib import faults, ledger
from lib.check import checksum
from lib.check.verify import MAX_GROUP, source_buckets, source_checksums, target_buckets, target_checksums
from lib.config import TableSpec
from lib.errors import FatalError, TransientError
from lib.identifiers import and_sql
from lib.log import ctx, get_logger
from lib.models import Bounds
from lib.plan.chunking import BUCKETS_PER_CHUNK, plan_numeric, plan_strings
from lib.plan.strategy import is_string
from lib.source.snowflake import SnowflakeSource
from lib.target import postgres as pg
from lib.target.load_modes import SOFT_COLUMN, TableLoad, live_rows
from lib.target.wire import target_column_name
from lib.typemap import Column

log = get_logger()

RANGE_ROWS = 25_000  # keys per range: a range that differs has this many keys read from each side
KEY_GROUP = 8  # differing ranges whose keys one query reads (at most 200,000 keys held at once)

Key = tuple[str, ...]  # a key's canonical texts (lib/check/checksum.py), one per key column


@dataclass
class DeletePass:
    table: str
    mode: str
    ranges: int = 0
    differing: int = 0
    deleted: int = 0  # hard: rows deleted; soft: rows marked deleted
    restored: int = 0  # soft: marked rows whose key the source has again
    target_rows: int = 0
    seconds: float = 0.0

    def describe(self) -> str:
        done = "deleted" if self.mode == "hard" else "marked deleted (_deleted_at)"
        restored = f", {self.restored} restored (their key is back)" if self.mode == "soft" else ""
        return (f"deletes {self.mode}: {self.deleted} row(s) {done}{restored}; {self.differing} of {self.ranges} key "
                f"range(s) differed and had their keys compared, of {self.target_rows} target rows, in {self.seconds:.2f}s")


def key_columns(load: TableLoad, columns: list[Column], spec: TableSpec) -> list[Column]:
    by_target = {target_column_name(c.name): c for c in columns}
    key = [by_target[k] for k in load.key if k in by_target]
    if not key or len(key) != len(load.key):
        raise FatalError(f"{spec.name}: deletes {spec.deletes} need the table's key among the source's columns "
                         f"(key: {', '.join(load.key) or 'none'})")
    return key


def find_and_apply(conn: psycopg.Connection[Any], source: SnowflakeSource, spec: TableSpec, columns: list[Column],
                   load: TableLoad, scope: str | None, max_fraction: float, run_id: int,
                   deadline: float | None = None, nul_bytes: str = "fail") -> DeletePass | None:
    """The pass of one table (see the module's text), continued from the ledger where an earlier attempt stopped.
    `scope`: the source filter of the rows the target holds. Returns None when `deadline` (time.monotonic())
    came first: the next call goes on."""
    started = time.monotonic()
    key = key_columns(load, columns, spec)
    fields = checksum.fields(key)
    problem = comparability_problem(spec, key, nul_bytes) or next(
        (f"{f.describe()} cannot be compared by value" for f in fields if not f.values), None)
    if problem:
        raise FatalError(f"{spec.name}: deletes {spec.deletes} need a key whose text is the same in both databases: "
                         f"{problem}. Leave deletes out, or set merge_key to columns that are")
    if spec.deletes == "soft":
        add_soft_column(conn, load.destination)
    marked = live_rows(spec)
    live = (marked, []) if marked is not None else None
    work = _Work(conn, source, spec, columns, load, scope, fields, live, run_id)
    ranges = ledger.delete_ranges(conn, run_id, spec.name)
    if not ranges:
        ledger.store_delete_ranges(conn, run_id, spec.name, key_ranges(source, spec, key, scope))
        ranges = ledger.delete_ranges(conn, run_id, spec.name)
    worked = False  # every call does one group at least, so that a pass split across calls always advances

    def out_of_time() -> bool:
        return worked and deadline is not None and time.monotonic() >= deadline

    unchecked = [r for r in ranges if not r.checked]
    for group in [unchecked[i:i + MAX_GROUP] for i in range(0, len(unchecked), MAX_GROUP)]:
        if out_of_time():
            return None
        work.check(group)
        worked = True
    ranges = ledger.delete_ranges(conn, run_id, spec.name)
    _guard(conn, run_id, spec, ranges, max_fraction)
    todo = [r for r in ranges if r.differs and not r.applied and (r.to_delete or r.to_restore)]
    for group in [todo[i:i + KEY_GROUP] for i in range(0, len(todo), KEY_GROUP)]:
        if out_of_time():
            return None
        try:
            work.apply(group)
        except _Changed as changed:
            ledger.forget_unapplied_ranges(conn, run_id, spec.name)
            log.warning("%s", changed, **ctx(run_id=run_id, table=spec.name))
            raise TransientError(f"{spec.name}: {changed}") from changed
        worked = True
    ranges = ledger.delete_ranges(conn, run_id, spec.name)
    result = DeletePass(spec.name, spec.deletes, len(ranges), sum(r.differs for r in ranges),
                        sum(r.deleted for r in ranges), sum(r.restored for r in ranges),
                        sum(r.target_rows for r in ranges), round(time.monotonic() - started, 2))
    log.info("%s", result.describe(), **ctx(run_id=run_id, table=spec.name))
    return result


def _guard(conn: psycopg.Connection[Any], run_id: int, spec: TableSpec, ranges: list[ledger.DeleteRange],
           max_fraction: float) -> None:
    """Refuse the pass when it would delete more than `max_fraction` of the table: the rows already deleted and
    those still to delete, against the rows the ranges held when checked, so a pass in parts is judged whole. A
    refused pass forgets what it found (its ranges not applied are checked again by the next attempt)."""
    gone = sum(r.deleted if r.applied else r.to_delete for r in ranges)
    rows = sum(r.target_rows for r in ranges)
    if rows and gone / rows > max_fraction:
        ledger.forget_unapplied_ranges(conn, run_id, spec.name)
        raise FatalError(
            f"{spec.name}: deletes {spec.deletes} would remove {gone} of its {rows} rows ({gone / rows:.1%}), more than "
            f"max_delete_fraction {max_fraction:g}; nothing was deleted. A source read that missed rows (a wrong "
            "source_filter, a role that sees fewer rows, a truncated table) looks exactly like a mass delete. If the "
            "source really lost them, resume with a higher max_delete_fraction (e.g. --max-delete-fraction "
            f"{min(1.0, round(gone / rows + 0.01, 2)):g}, or in the execution input)")


def comparability_problem(spec: TableSpec, key: list[Column], nul_bytes: str) -> str | None:
    """Why the key's text in PostgreSQL might not be the key's text in Snowflake, which would make the pass delete
    rows the source has: a key column cast through text (citext, uuid, ...), a target type of another kind than
    the source's (a NUMBER in a text column: ranges would select different rows), or NUL bytes changed on the way."""
    for column in key:
        base, target = column.source_type.split("(")[0], column.pg_type.split("(")[0]
        if column.via_text:
            return (f"key column {column.name} is {column.pg_type} in the target, whose text need not be the source's "
                    "(citext keeps the first spelling of a key that differs in case)")
        if base == "NUMBER" and target not in ("smallint", "integer", "bigint", "numeric"):
            return f"key column {column.name} is a NUMBER in Snowflake but {column.pg_type} in the target"
        if is_string(column) and target not in ("text", "varchar", "character varying",
                                                                             "character", "char", "bpchar"):
            return f"key column {column.name} is text in Snowflake but {column.pg_type} in the target"
        if is_string(column) and nul_bytes != "fail":
            return (f"key column {column.name} is text and nul_bytes is {nul_bytes}: a key holding a NUL byte is stored "
                    "changed, so it would look deleted")
    return None


class _Changed(FatalError):
    """A range would delete more rows than when it was checked: it is rolled back and the pass checked again."""

    def __init__(self, range_no: int, now: int, checked: int) -> None:
        super().__init__(f"key range {range_no} would now delete {now} rows, {checked} when the pass was checked and "
                         "judged: the source changed meanwhile. Nothing was deleted in it; the pass is checked again")


@dataclass
class _Work:
    """What checking and applying a table's ranges needs."""

    conn: psycopg.Connection[Any]
    source: SnowflakeSource
    spec: TableSpec
    columns: list[Column]
    load: TableLoad
    scope: str | None
    fields: list[checksum.Field]
    live: tuple[sql.Composable, list[Any]] | None
    run_id: int

    def check(self, group: list[ledger.DeleteRange]) -> None:
        """Checksums of the group's ranges on both sides; the keys of those that differ, counted and forgotten."""
        spec, bounds = self.spec, [r.bounds for r in group]
        theirs = source_checksums(self.source, self.fields, spec.source, bounds, self.scope,
                                  f"checksumming the keys of {spec.name}")
        ours = target_checksums(self.conn, self.fields, self.load.destination, self.columns, bounds, self.live)
        differing = []
        for n, r in enumerate(group):
            if theirs.get(n, (0, 0, 0)) != ours.get(n, (0, 0, 0)):
                differing.append((r, ours.get(n, (0, 0, 0))[0]))
            else:  # a differing range is marked checked only with its counts, below
                ledger.range_checked(self.conn, self.run_id, spec.name, r.range_no, ours.get(n, (0, 0, 0))[0], False, 0, 0)
        for part in [differing[i:i + KEY_GROUP] for i in range(0, len(differing), KEY_GROUP)]:
            source_keys = _source_keys(self.source, spec, self.fields, [r.bounds for r, _ in part], self.scope)
            target_keys = _target_keys(self.conn, self.load, self.fields, self.columns, [r.bounds for r, _ in part],
                                       self.live)
            for (r, rows), theirs_keys, ours_keys in zip(part, source_keys, target_keys, strict=True):
                restore = len(theirs_keys - ours_keys) if spec.deletes == "soft" else 0
                ledger.range_checked(self.conn, self.run_id, spec.name, r.range_no, rows, True,
                                     len(ours_keys - theirs_keys), restore)

    def apply(self, group: list[ledger.DeleteRange]) -> None:
        """Each range in its own transaction, against the source's keys read again now (one query for the group)."""
        spec = self.spec
        source_keys = _source_keys(self.source, spec, self.fields, [r.bounds for r in group], self.scope)
        for r, theirs in zip(group, source_keys, strict=True):
            with self.conn.transaction():
                deleted, restored = _apply(self.conn, spec, self.load, self.fields, self.columns, r.bounds, theirs)
                if deleted > r.to_delete:  # the source lost more since the guard judged the pass: judge it again
                    raise _Changed(r.range_no, deleted, r.to_delete)
                ledger.range_applied(self.conn, self.run_id, spec.name, r.range_no, deleted, restored)
            faults.maybe_crash("during_deletes")


def add_soft_column(conn: psycopg.Connection[Any], target: tuple[str, str]) -> None:
    """The target's `_deleted_at` column, added once (ALTER TABLE locks the table even when the column exists)."""
    if SOFT_COLUMN in (pg.target_column_types(conn, target) or {}):
        return
    conn.execute(sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} timestamptz").format(
        pg.table_ident(target), sql.Identifier(SOFT_COLUMN)))


def key_ranges(source: SnowflakeSource, spec: TableSpec, key: list[Column], scope: str | None) -> list[Bounds]:
    """Ranges of about RANGE_ROWS keys, cut at the source's key values (a number, or a text without a collation,
    in code point order as string chunks are); one range for any other key."""
    first = key[0]
    numeric, text = first.source_type.startswith("NUMBER"), is_string(first) and first.collation is None
    if not numeric and not text:
        return [Bounds("all")]
    buckets, _ = source.key_buckets(spec.source, first.name, scope, max(1, RANGE_ROWS // BUCKETS_PER_CHUNK), text)
    planner = plan_strings if text else plan_numeric
    return [c.bounds for c in planner(first.name, buckets, 0, RANGE_ROWS, False, "").chunks]


def _source_keys(source: SnowflakeSource, spec: TableSpec, fields: list[checksum.Field], group: list[Bounds],
                 scope: str | None) -> list[set[Key]]:
    """The source's key texts in each range of the group: one query."""
    buckets, params = source_buckets(group)
    case = " ".join(f"WHEN {b} THEN {n}" for n, b in enumerate(buckets))
    where = " OR ".join(f"({b})" for b in buckets)
    texts = ", ".join(f.snowflake for f in fields)
    rows = source.scan(f"SELECT CASE {case} END, {texts} FROM {source.table_sql(spec.source)} WHERE ({where})"
                       f"{and_sql(scope)}", params, f"reading the keys of {spec.name} in {len(group)} range(s)")
    return _by_bucket(rows, len(group))


def _target_keys(conn: psycopg.Connection[Any], load: TableLoad, fields: list[checksum.Field], columns: list[Column],
                 group: list[Bounds], live: tuple[sql.Composable, list[Any]] | None) -> list[set[Key]]:
    """The target's key texts (of its live rows) in each range of the group: one query."""
    buckets, params = target_buckets(group, columns)
    case = sql.SQL(" ").join(sql.SQL("WHEN {} THEN {}").format(b, sql.Literal(n)) for n, b in enumerate(buckets))
    where = sql.SQL(" OR ").join(sql.SQL("({})").format(b) for b in buckets)
    if live is not None:
        where = sql.SQL("({}) AND {}").format(where, live[0])
    query = sql.SQL("SELECT CASE {} END, {} FROM {} WHERE {}").format(
        case, sql.SQL(", ").join(f.postgres for f in fields), pg.table_ident(load.destination), where)
    return _by_bucket(conn.execute(query, params * 2).fetchall(), len(group))


def _by_bucket(rows: list[tuple[Any, ...]], buckets: int) -> list[set[Key]]:
    out: list[set[Key]] = [set() for _ in range(buckets)]
    for bucket, *values in rows:
        out[int(bucket)].add(tuple(str(v) for v in values))
    return out


def _locked_rows(conn: psycopg.Connection[Any], load: TableLoad, fields: list[checksum.Field], columns: list[Column],
                 bounds: Bounds, state: sql.Composable | None) -> list[tuple[Any, ...]]:
    """(ctid, key texts...) of the target's rows in the range (`state`: live or marked ones), locked."""
    selected = pg.chunk_predicate(bounds, columns)
    assert selected is not None
    where, params = selected
    if state is not None:
        where = sql.SQL("({}) AND {}").format(where, state)
    query = sql.SQL("SELECT ctid::text, {} FROM {} WHERE {} FOR UPDATE").format(
        sql.SQL(", ").join(f.postgres for f in fields), pg.table_ident(load.destination), where)
    return list(conn.execute(query, params).fetchall())


def _apply(conn: psycopg.Connection[Any], spec: TableSpec, load: TableLoad, fields: list[checksum.Field],
           columns: list[Column], bounds: Bounds, source_keys: set[Key]) -> tuple[int, int]:
    """One range, in the caller's transaction: its target rows read under lock and compared with the source's keys,
    then deleted or marked (the live rows the source lacks) and restored (the marked rows it has again)."""
    table = pg.table_ident(load.destination)
    marked = sql.Identifier(SOFT_COLUMN)
    live, dead = (live_rows(spec), sql.SQL("{} IS NOT NULL").format(marked)) if spec.deletes == "soft" else (None, None)
    gone = [row[0] for row in _locked_rows(conn, load, fields, columns, bounds, live)
            if tuple(str(v) for v in row[1:]) not in source_keys]
    if spec.deletes == "hard":
        return conn.execute(sql.SQL("DELETE FROM {} WHERE ctid = ANY(%s::tid[])").format(table), (gone,)).rowcount, 0
    done = conn.execute(sql.SQL("UPDATE {} SET {} = now() WHERE ctid = ANY(%s::tid[])").format(table, marked),
                        (gone,)).rowcount
    back = [row[0] for row in _locked_rows(conn, load, fields, columns, bounds, dead)
            if tuple(str(v) for v in row[1:]) in source_keys]
    restored = conn.execute(sql.SQL("UPDATE {} SET {} = NULL WHERE ctid = ANY(%s::tid[])").format(table, marked),
                            (back,)).rowcount
    return done, restored
