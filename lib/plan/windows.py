"""A table's watermark window as planning fixes it: its lower end from the ledger (or the target), its upper end
from the source now, and what the plan notes say about it (lib/target/windows.py holds the window itself)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

from lib.config.tables import TableSpec
from lib.identifiers import quote_snowflake, raw_sql, where_sql
from lib.log import ctx, get_logger
from lib.plan.probe import Probe
from lib.source.snowflake import SnowflakeSource
from lib.target import postgres as pg
from lib.target.windows import LastLoad, Window, at_or_above, kind_of, lowered, max_expression, target_max
from lib.typemap import Column

log = get_logger()


@dataclass(frozen=True)
class PlannedWindow:
    window: Window
    notes: list[str]  # why it starts afresh, if it does
    nulls_note: str | None  # rows in scope without a watermark, which no incremental window reads
    rows: int | None  # rows at or above lo when hi was read (None: a first window)
    probed: bool = False  # hi, the rows without a watermark and `rows` are the probe's (lib/plan/probe.py)


def source_max(source: SnowflakeSource, table: tuple[str, ...], column: str, kind: str,
               source_filter: str | None, lo: str | None = None) -> tuple[str | None, int, int | None]:
    """The source's largest watermark as exact text, how many rows have none, and (with `lo`) how many are at or
    above `lo`, which is the window's size: one query, so the three agree."""
    col = quote_snowflake(column)
    above = f"SUM(IFF({raw_sql(at_or_above(column, kind, lo))}, 1, 0))" if lo is not None else "NULL"
    rows = source.scan(f"SELECT {max_expression(column, kind)}, SUM(IFF({col} IS NULL, 1, 0)), {above} FROM {source.table_sql(table)}"
                       f"{where_sql(source_filter)}", None, f"reading the largest {column} of {'.'.join(table)}")
    if not rows:
        return None, 0, None
    return rows[0][0], int(rows[0][1] or 0), None if rows[0][2] is None else int(rows[0][2])


def null_note(column: str, count: int) -> str | None:
    """A plan note when rows have no watermark: incremental loads cannot see them."""
    if not count:
        return None
    return (f"{count} row(s) have a NULL {column}: an incremental window cannot order them, so they are not read "
            "(only a first load, with no earlier window, takes them)")


def plan_window(conn: psycopg.Connection[Any], source: SnowflakeSource, spec: TableSpec, columns: list[Column],
            run_id: int, last: LastLoad, probe: Probe | None = None) -> PlannedWindow:
    """This run's watermark window: lo from the last window of the same scope (else, where it may serve, the
    target's largest watermark), hi from the source, now, with its size and the rows without a watermark."""
    assert spec.source_watermark is not None
    column = spec.source_watermark
    kind = kind_of({c.name: c for c in columns}[column])
    assert kind is not None
    lo, lo_from, notes = last.hi, "ledger", []
    if last.why:
        log.info("window: %s", last.why, **ctx(run_id=run_id, table=spec.name))
        notes.append(f"window starts afresh: {last.why}")
    if lo is None and last.target_max_serves and pg.table_exists(conn, spec.target):
        lo, lo_from = target_max(conn, spec.target, spec.target_watermark or pg.target_column_name(column), kind), "target"
    if lo is None:
        lo_from = "none"
    elif spec.watermark_lag:
        lo = lowered(kind, lo, spec.watermark_lag)
    probed = probe is not None and lo_from == "ledger" and probe.answers(column, kind, lo)
    if probe is not None and probed:
        hi, nulls, rows = probe.hi, probe.nulls, probe.rows
    else:
        hi, nulls, rows = source_max(source, spec.source, column, kind, spec.source_filter, lo)
    return PlannedWindow(Window(column, kind, lo, hi, lo_from, rows), notes,
                         null_note(column, nulls) if lo is not None else None, rows, probed)
