"""How a table's rows meet its target, decided once when the table is planned and stored in the ledger.

- copy: the target is new, truncated (truncate_onstart) or empty: plain binary COPY into the table.
- insert_missing: insert_only_mode (the default) into a target that holds rows, a catch-up: staged, then
  INSERT … ON CONFLICT (key) DO NOTHING.
- merge: insert_only_mode=false (or a watermark) into a target that holds rows: staged, then
  INSERT … ON CONFLICT (key) DO UPDATE … WHERE … IS DISTINCT FROM.
- swap: load_mode swap onto an existing table: plain COPY into a shadow table, swapped in after it
  reconciles (lib/target/swap.py).

The key of insert_missing and merge is the target's primary key, its only unique index, or the unique
index on `merge_key`. Everything a mode needs to resume (mode, key, destination, watermark window) is
stored with the table's plan and never recomputed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import psycopg
from psycopg import sql

from lib import ledger
from lib.config import TableSpec
from lib.config.sources import SourceConfig
from lib.errors import FatalError
from lib.target import postgres as pg
from lib.target import swap
from lib.target.windows import TARGET_TYPES, Window, kind_of
from lib.typemap import Column, columns_from_description

# A conservative rate of PostgreSQL's primary key build after a bulk load (bench-swap: two indexes on 5,000,000
# rows in 4.4 s on a 2-core machine): what decides that a table's key must be built before its load instead.
KEY_BUILD_ROWS_PER_SECOND = 1_000_000


@dataclass(frozen=True)
class TableLoad:
    mode: str  # copy | insert_missing | merge | swap
    destination: tuple[str, str]  # where chunks are written: the target, or its shadow
    key: tuple[str, ...] = ()  # target key columns of insert_missing and merge
    window: Window | None = None
    read_at: str | None = None  # the Snowflake point in time the table is read at (None: live)

    @property
    def staged(self) -> bool:
        return self.mode in ("insert_missing", "merge")

    def counted_when_planned(self, at_snapshot: bool) -> bool:
        """The count of the query that found the window's hi is its whole source count, never taken again: read at
        a snapshot (that query counted it at the point every chunk reads), or a keyed window at its lower end (no row
        can arrive between lo and hi, and one arriving at lo is read by the next window, which starts there)."""
        w = self.window
        return w is not None and w.rows is not None and (at_snapshot or (self.staged and w.at_its_lower_end))

    def ledger_fields(self) -> dict[str, Any]:
        w = self.window
        return {
            "load_mode": self.mode, "merge_key": json.dumps(list(self.key)) if self.key else None,
            "destination_table": ".".join(self.destination), "destination": json.dumps(list(self.destination)),
            "watermark_column": w.column if w else None, "watermark_lo": w.lo if w else None,
            "watermark_hi": w.hi if w else None, "watermark_lo_from": w.lo_from if w else None,
            "watermark_rows": w.rows if w else None,
        }

    @classmethod
    def from_ledger(cls, row: dict[str, Any], target: tuple[str, str], watermark_kind: str | None) -> TableLoad:
        window = None
        if row.get("watermark_column"):
            window = Window(row["watermark_column"], watermark_kind or "numeric", row["watermark_lo"],
                            row["watermark_hi"], row["watermark_lo_from"], row.get("watermark_rows"))
        destination = tuple(row["destination"]) if row.get("destination") else target
        return cls(row.get("load_mode") or "copy", destination, tuple(row.get("merge_key") or ()), window,  # type: ignore[arg-type]
                   row.get("read_at"))


def prepare(conn: psycopg.Connection[Any], spec: TableSpec, columns: list[Column], run_id: int,
            source_key: Callable[[], list[str]], notes: list[str],
            window: Window | None, no_resume: bool = False, dry_run: bool = False,
            key_build_limit: tuple[int, float] | None = None) -> tuple[TableLoad, dict[str, str] | None, list[str]]:
    """Inside the planning transaction: create, truncate, check or shadow the target and choose the mode.

    `no_resume`: the user asked to copy everything again. A target this config copied before then holds rows
    that a catch-up would leave as they are (changed rows stale): refused, saying how to reload it.
    `dry_run` (migrate.py plan): the same decisions and checks, but no table is created, truncated or shadowed.
    `key_build_limit` (rows planned, seconds a post-load step may run: a Step Functions step): a new table whose
    key could not be built after the load within that time gets it now, before the load.

    Returns the load, the existing target's column types by source column (None for a new table), and
    the key to build after the load (target column names; a new table only).
    """
    types = (pg.existing_types(conn, spec.target, columns) if dry_run
             else pg.ensure_table(conn, spec.target, columns))
    if types is None:  # just created (or, in a dry run, would be)
        key = _key_to_build(spec, columns, source_key)
        if spec.load_mode == "swap":
            notes.append(f"target {spec.target_name} did not exist: loaded in place, there is nothing to protect")
        if key and key_build_limit and key_build_limit[0] / KEY_BUILD_ROWS_PER_SECOND > key_build_limit[1]:
            rows, seconds = key_build_limit
            if not dry_run:
                pg.add_primary_key(conn, spec.target, key)
            notes.append(
                f"primary key ({', '.join(key)}) built before the load: after it, building it over {rows:,} rows would "
                f"take about {rows / KEY_BUILD_ROWS_PER_SECOND:,.0f} s, more than a post-load step may run "
                f"({seconds:,.0f} s); the rows are copied into the keyed table instead (slower per row, never stuck)")
            key = []
        return TableLoad("copy", spec.target, (), window), None, key
    if spec.load_mode == "swap":
        swap.refuse_if_blocked(conn, spec.target)
        shadow = (spec.target[0], swap.shadow_name(spec.target[1], run_id)) if dry_run else \
            swap.create_shadow(conn, spec.target, run_id, spec.name)
        notes.append(f"loaded into shadow table {'.'.join(shadow)}; swapped in for {spec.target_name} only after it "
                     f"reconciles, keeping the old table as {swap.backup_name(spec.target[1], run_id)}")
        return TableLoad("swap", shadow, (), window), types, []
    if spec.truncate_onstart:
        if not dry_run:
            pg.truncate(conn, spec.target)
        notes.append(f"target {spec.target_name} " + ("is emptied (truncate_onstart) when the run plans it" if dry_run
                     else "truncated (truncate_onstart) when this run was planned"))
        return TableLoad("copy", spec.target, (), window), types, []
    holds_rows = pg.has_rows(conn, spec.target)
    if not holds_rows and not spec.merges:
        return TableLoad("copy", spec.target, (), window), types, []
    if holds_rows and no_resume and not spec.merges and (earlier := ledger.earlier_copy_by_config(
            conn, spec.target_name, run_id)) is not None:
        raise FatalError(
            f"target {spec.target_name} holds the rows run {earlier} of this config copied. --no-resume plans a fresh "
            "copy, but into a table that holds rows it could only add the keys that are missing and would leave rows "
            "changed since as they were. To copy everything again, rerun with --load-mode swap (reloads into a shadow "
            "table and swaps it in, keeping the old one as a backup), set truncate_onstart (empties the table when the "
            "run plans it), or --insert-only-mode false (merges: updates changed rows, inserts new ones)")
    key = target_key(conn, spec, holds_rows, [c.name for c in columns])
    if not holds_rows:
        notes.append(f"target {spec.target_name} is empty: copied with plain COPY; later runs merge on ({', '.join(key)})")
        return TableLoad("copy", spec.target, (), window), types, []
    mode = "merge" if spec.merges else "insert_missing"
    what = ("rows whose key exists are updated where a value differs" if spec.merges
            else "rows whose key exists are skipped (catch-up)")
    notes.append(f"target {spec.target_name} holds rows: {mode} on ({', '.join(key)}); {what}")
    return TableLoad(mode, spec.target, key, window), types, []


def target_scope(loads: list[dict[str, Any]]) -> str | None:
    """The source rows a target holds (`loads`: ledger.target_loads, oldest first): the union of the
    source_filters of the loads since the last one that started its content (a copy into a new, truncated or
    empty table, or a swap). None: the whole source table, when a load since then had no filter or its scope
    was not recorded, or when no load of this engine started the content (another tool did: a replica).

    Reconciliation, verification and repair compare the source with the target in this scope, so a second
    config that loaded the rest of the table (a complementary filter) is neither a difference nor deleted by
    a repair."""
    starts = [i for i, load in enumerate(loads) if load.get("load_mode") in ("copy", "swap")]
    if not starts:
        return None
    filters: list[str] = []
    for load in loads[starts[-1]:]:
        scope = load.get("load_scope")
        if not scope or not scope.get("filter"):
            return None
        if scope["filter"] not in filters:
            filters.append(scope["filter"])
    return " OR ".join(f"({f})" for f in filters) if len(filters) > 1 else filters[0]


SOFT_COLUMN = "_deleted_at"  # deletes soft: when the source stopped having the row (lib/check/deletes.py)


def live_rows(spec: TableSpec) -> sql.Composable | None:
    """The target's rows the source still has: all of them, or (deletes soft) those not marked deleted."""
    return sql.SQL("{} IS NULL").format(sql.Identifier(SOFT_COLUMN)) if spec.deletes == "soft" else None


def held_scope(conn: psycopg.Connection[Any], run_id: int, spec: TableSpec) -> str | None:
    """The source_filter that selects the source rows `spec`'s target holds now (target_scope)."""
    return target_scope(ledger.target_loads(conn, spec.target_name, run_id))


def target_key(conn: psycopg.Connection[Any], spec: TableSpec, holds_rows: bool,
               source_columns: list[str]) -> tuple[str, ...]:
    """The target key that ON CONFLICT uses, or a FatalError saying what to add.

    Only a key made of columns the source fills can decide that a source row is already there: a target key on
    a column of its own (an identity `row_no`) never matches, and every run would insert every row again."""
    fed = {pg.target_column_name(c) for c in source_columns}
    all_keys = pg.unique_keys(conn, spec.target)
    keys = [(primary, key) for primary, key in all_keys if set(key) <= fed]
    if spec.merge_key:
        wanted = tuple(pg.target_column_name(c) for c in spec.merge_key)
        for _, key in keys:
            if set(key) == set(wanted):
                return wanted
        index = ", ".join(f'"{c}"' for c in wanted)
        raise FatalError(
            f"merge_key ({', '.join(wanted)}) of {spec.name} has no primary key or unique index on target "
            f"{spec.target_name}, and ON CONFLICT needs one: CREATE UNIQUE INDEX ON {spec.target_name} ({index})")
    if keys and keys[0][0]:
        return keys[0][1]
    if len(keys) == 1:
        return keys[0][1]
    reason = "holds rows" if holds_rows else "is merged into"
    if not keys and all_keys:
        foreign = "; ".join(f"{'primary key' if primary else 'unique index'} ({', '.join(key)}): "
                            f"{', '.join(c for c in key if c not in fed)} not filled from the source"
                            for primary, key in all_keys)
        raise FatalError(
            f"target {spec.target_name} {reason}, but none of its keys is made of source columns ({foreign}), so a "
            f"source row can never be matched to the row it already has and every run would insert it again. Set "
            f"merge_key to source columns that identify a row and give the target a unique index on them")
    if keys:
        raise FatalError(
            f"target {spec.target_name} {reason} and has no primary key but several unique indexes "
            f"({'; '.join(', '.join(k) for _, k in keys)}): choose one with merge_key")
    raise FatalError(
        f"target {spec.target_name} {reason} and has no primary key or unique index, so rows that already exist "
        f"cannot be recognised. Add merge_key (with a unique index on it), give the target a primary key, "
        f"or set truncate_onstart to reload it")


def _key_to_build(spec: TableSpec, columns: list[Column], source_key: Callable[[], list[str]]) -> list[str]:
    """A new target's key, built after the load: merge_key, else the source's primary key. A table that later
    runs will merge into must have one."""
    names = {c.name for c in columns}
    key = list(spec.merge_key) if spec.merge_key else (
        [c for c in source_key() if c in names] if spec.build_primary_key or spec.repeatable else [])
    if not key and spec.repeatable:
        raise FatalError(f"{spec.name} is loaded with {'a watermark' if spec.source_watermark else 'merge'}, so later "
                         "runs update rows by key, but the source has no primary key: set merge_key")
    return [pg.target_column_name(c) for c in key]


def schema_problems(spec: TableSpec, columns: list[Column], target_types: dict[str, str] | None) -> list[str]:
    """Table options checked against the real columns (the config alone cannot): all of them at once."""
    by_name = {c.name: c for c in columns}
    problems = [f"merge_key column {c} is not a column of {spec.name}" for c in spec.merge_key if c not in by_name]
    if spec.source_watermark:
        column = by_name.get(spec.source_watermark)
        if column is None:
            problems.append(f"source_watermark {spec.source_watermark} is not a column of {spec.name}")
        elif kind_of(column) is None:
            problems.append(f"source_watermark {spec.source_watermark} is {column.source_type}, which cannot order "
                            "changes: use a NUMBER, DATE or TIMESTAMP column")
        elif target_types is not None:
            wanted = spec.target_watermark or pg.target_column_name(spec.source_watermark)
            found = target_types.get(wanted)
            kind = kind_of(column)
            if found is None:
                problems.append(f"target_watermark {wanted} is not a column of target {spec.target_name}")
            elif kind and found.split("(")[0] not in TARGET_TYPES[kind]:
                problems.append(f"target_watermark {wanted} is {found} in {spec.target_name}, which cannot be compared "
                                f"with source_watermark {spec.source_watermark} ({column.source_type})")
    return problems


def table_loads(conn: psycopg.Connection[Any], config: SourceConfig,
                run_id: int) -> dict[str, tuple[TableSpec, list[Column], TableLoad]]:
    """Each planned table of the run: its spec, its stored columns and its stored load mode."""
    rows = ledger.table_load_rows(conn, run_id)
    out = {}
    for spec in config.tables:
        row = rows.get(spec.name)
        if row is None:
            continue
        columns = columns_from_description(row["source_columns"])
        kinds = {c.name: kind_of(c) for c in columns}
        load = TableLoad.from_ledger(row, spec.target, kinds.get(row["watermark_column"] or ""))
        if load.mode == "swap" and swap.shadow_of(conn, run_id, spec.name) is None:
            load = replace(load, destination=spec.target)  # swapped in: the shadow is the live table now
        out[spec.name] = (spec, columns, load)
    return out
