"""Row-count reconciliation: the source's COUNT(*) of the rows in scope (source_filter and watermark
window) against what the load produced, stored per table.

- copy: against the target table, which holds exactly the rows in scope;
- swap: against the shadow table, before the live table is touched;
- insert_missing and merge: the target also holds rows from earlier loads, so against the rows the
  chunks read (every one of them was inserted, updated or already present under its key). The target is
  not counted: its count proves nothing here, and on a large table it costs more than a small window.
  A window is counted at reconcile even when its one chunk read as many rows as planning counted: a row
  that arrives below `hi` after the read is caught by that count (source_changed: the next window starts
  at this one's `lo` again), as it would not be by the planning count. Not a window at its lower end
  (`hi` = `lo`, nothing newer was found): no row can arrive below `hi` and above `lo`, and one at `lo` is
  read by the next window, which starts there; the count of the query that found `hi` stands. Nor a window
  read at a snapshot: that query counted it at the very point every chunk read, which a count now would
  only repeat.

A table passes only when every chunk is done AND the counts match; anything else is `failed` with a
reason, so "completed with a mismatch" can never be reported as success. One exception is named as
such: a watermark window or merge read live (not at a snapshot) whose source changed while it was
read cannot be proven by counts; it is reconciled `source_changed` and read again by the next run
(lib/target/windows.py), rather than failing every resume of a run whose source keeps changing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

from lib import ledger
from lib.config import TableSpec
from lib.errors import MigrationError, classify
from lib.models import Bounds, key_examples
from lib.source.snowflake import SnowflakeSource
from lib.target import postgres as pg
from lib.target.load_modes import TableLoad, held_scope
from lib.typemap import Column, numeric_key_scale


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
    chunks: dict[str, int], load: TableLoad, columns: list[Column] | None = None,
) -> Reconciliation:
    """Count both sides and store the verdict. `spec` is scoped to the run's window (planning.scoped_spec);
    `chunks` is the table's entry of ledger.chunk_counts; `columns` the table's, for the key check of a keyed
    load read live (repeats_across_chunks)."""
    problems: list[str] = []
    if columns is not None and not chunks.get("failed") and chunks.get("done", 0) > 1:  # one chunk saw every key
        try:
            if repeated := repeats_across_chunks(source, conn, run_id, spec, columns, load):
                problems.append(repeated)
        except MigrationError as exc:
            problems.append(f"the source's key could not be checked again: {exc}")
    source_count = target_count = None
    against = "rows_read" if load.staged else "target"
    # a copy's target may hold the rows of other loads too (complementary filters): count the scope it holds
    scope = spec.source_filter if load.staged or load.window else held_scope(conn, run_id, spec)
    if load.window is not None and load.counted_when_planned(spec.source in source.snapshots):
        source_count = load.window.rows  # counted by the query that found hi: a count now would say the same
    else:
        try:
            source_count = source.count(spec.source, scope)
        except MigrationError as exc:
            problems.append(f"source count failed: {exc}")
    if against == "target":  # a keyed load is proven by the rows its chunks read: counting the target proves nothing
        try:
            target_count = pg.row_count(conn, load.destination)
        except Exception as exc:  # noqa: BLE001 - recorded as the table's error
            problems.append(f"target count failed: {classify(exc)}")
    if chunks.get("failed"):
        errors = conn.execute(
            f"SELECT chunk_no, error FROM {ledger.SCHEMA}.migration_chunk_status "
            "WHERE run_id = %s AND table_name = %s AND status = 'failed' ORDER BY chunk_no LIMIT 3",
            (run_id, spec.name),
        ).fetchall()
        detail = "; ".join(f"chunk {n}: {e}" for n, e in errors)
        problems.append(f"{chunks['failed']} chunk(s) failed ({detail})")
    rows_read = chunks.get("rows_copied", 0)
    compared, what = (rows_read, "rows read") if against == "rows_read" else (target_count, "target")
    if load.mode == "swap":
        what = f"shadow {'.'.join(load.destination)}"
    verdict = None
    if source_count is not None and compared is not None and source_count != compared:
        if not problems and spec.repeatable and spec.source not in source.snapshots:
            verdict = "source_changed"
            again = (f"the next window starts at this one's lower end ({load.window.lo})" if load.window and load.window.lo
                     else "the next window reads from the beginning" if load.window else "the next merge reads it again")
            ledger.add_plan_note(conn, run_id, spec.name, (
                f"the source changed while this {'window' if load.window else 'merge'} was read live: {source_count} "
                f"row(s) in scope now, {compared} {what}; counts cannot prove it, so {again}"))
        else:
            problems.append(f"row counts differ: source {source_count}, {what} {compared} ({compared - source_count:+d})")
    error = "; ".join(problems) or None
    rec = Reconciliation(spec.name, error is None, rows_read, source_count, target_count, error)
    ledger.store_reconciliation(conn, run_id, spec.name, rec.rows_copied, source_count, target_count, rec.ok, error,
                                against, verdict)
    return rec


def repeats_across_chunks(source: SnowflakeSource, conn: psycopg.Connection[Any], run_id: int, spec: TableSpec,
                          columns: list[Column], load: TableLoad) -> str | None:
    """What a keyed load read live cannot see chunk by chunk: a key whose rows fell into two chunks. Each stage
    checks its own rows (lib/target/loaders.py), and planning checked the source as it was then; a row that
    arrived meanwhile with another row's key, in a chunk read later, was kept out by ON CONFLICT DO NOTHING (a
    catch-up) or replaced its twin (a merge), and the counts still agree. Cut on the key's one column, equal keys
    share a chunk, and one chunk holds them all; read at a snapshot, planning checked what the chunks read: those
    need no query. Otherwise the key is checked in Snowflake once more, on the rows in scope now."""
    if not load.staged or spec.source in source.snapshots:
        return None
    bounds = [Bounds.from_json(b) for (b,) in conn.execute(
        f"SELECT bounds FROM {ledger.SCHEMA}.migration_chunk_status WHERE run_id = %s AND table_name = %s",
        (run_id, spec.name)).fetchall()]
    names = {pg.target_column_name(c.name): c for c in columns}
    source_key = [names[k].name if k in names else k for k in load.key]
    # text keys the target holds as numbers are compared as numbers: '0350' and '350' fall into two chunks of a
    # string range, and meet in the target
    as_numbers = {c.name: scale for k in load.key if (c := names.get(k)) and (scale := numeric_key_scale(c)) is not None}
    on_the_key = len(source_key) == 1 and not as_numbers and all(
        b.kind in ("range", "null") and b.column == source_key[0] for b in bounds)
    if len(bounds) <= 1 or on_the_key:
        return None
    found = source.key_problems(spec.source, source_key, spec.source_filter, as_numbers)
    if not found.null_rows and not found.repeated_rows:
        return None
    shown = ", ".join(source_key)
    examples = key_examples(found.examples)
    found_rows = [f"{found.repeated_rows} row(s) repeating another row's key ({shown})"
                  + (f", e.g. {examples}" if examples else "")] if found.repeated_rows else []
    found_rows += [f"{found.null_rows} row(s) with a NULL in the key ({shown})"] if found.null_rows else []
    return (f"the source now holds {' and '.join(found_rows)}, which chunks read separately could not see: the "
            "target keeps one row per key. Deduplicate the source, or leave those rows out with source_filter, and "
            "run again")
