"""Watermark windows for incremental loads: `lo <= watermark <= hi`, fixed when the table is planned.

- `hi` is the source's largest watermark at plan time, read as exact text (nanoseconds, all decimal
  digits), so a run that resumes after a crash copies the same window, never a moving one.
- `lo` is the `hi` of the last *completed* load of the same scope (source table, account, source_filter,
  watermark column, target), as recorded in the ledger, and it is inclusive: a row that arrives later
  with a watermark equal to the last `hi` (the same day of a DATE watermark, the same instant of a
  timestamp) is read by the next window; the merge makes re-reading the rows already there harmless.
- A changed scope (a widened source_filter, another watermark column) starts afresh: the rows it now
  includes were never read. Only when the ledger holds no load of the target at all (a target loaded
  by another tool), or a plain copy of the same scope, does the target's own largest watermark serve.
- Values are compared at the column's full precision: timestamps at nanoseconds, numbers with every
  decimal digit. Only the target side of a verification, which holds microseconds, is cut to those.
- `watermark_lag` lowers `lo` (seconds for dates and timestamps, units for numbers) so that rows
  committed late with an older watermark are read again.
- Rows whose watermark is NULL cannot be ordered: the first load (no `lo`) takes them, incremental
  loads skip them and the plan notes say how many there are.
- A window read live (not at a Snowflake snapshot) while the source changes cannot prove its count: it
  is reconciled `source_changed` and the next window starts at its `lo` again, so that nothing that
  arrived below its `hi` while it was read is lost.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from lib.errors import FatalError
from lib.identifiers import quote_snowflake, quote_snowflake_raw
from lib.ledger.schema import SCHEMA
from lib.typemap import Column

# Snowflake base type → watermark kind. Anything else cannot be compared reliably (text, JSON, binary).
WATERMARK_KINDS = {
    "NUMBER": "numeric", "FLOAT": "numeric", "DOUBLE": "numeric", "REAL": "numeric", "DATE": "date",
    "TIMESTAMP_NTZ": "timestamp", "DATETIME": "timestamp", "TIMESTAMP_TZ": "timestamptz",
    "TIMESTAMP_LTZ": "timestamptz",
}
# PostgreSQL types (format_type, without modifiers) a target watermark column may have, per kind.
TARGET_TYPES = {
    "numeric": {"smallint", "integer", "bigint", "numeric", "real", "double precision"},
    "date": {"date", "timestamp without time zone"},
    "timestamp": {"timestamp without time zone"},
    "timestamptz": {"timestamp with time zone"},
}


@dataclass(frozen=True)
class Window:
    column: str  # source column
    kind: str  # numeric | date | timestamp | timestamptz
    lo: str | None  # inclusive; None: from the beginning, NULL watermarks included
    hi: str | None  # inclusive; None: the source holds no watermark at all
    lo_from: str  # "ledger" | "target" | "none": where lo came from
    rows: int | None = None  # rows in [lo, hi] when hi was read, by the same query (None: not counted)

    @property
    def empty(self) -> bool:
        """Nothing to read: the source holds no watermark at or above the last window's end."""
        return self.lo is not None and (self.hi is None or exact(self.kind, self.hi) < exact(self.kind, self.lo))

    @property
    def at_its_lower_end(self) -> bool:
        """Nothing newer than the last window's end: every row of the window is at `lo`, where the next window
        starts again, so a row arriving there after this window was read is read by the next one."""
        return self.lo is not None and self.hi is not None and exact(self.kind, self.hi) == exact(self.kind, self.lo)

    def predicate(self) -> str:
        """The window as raw Snowflake SQL (like a source_filter); values are literals the engine rendered."""
        col = quote_snowflake_raw(self.column)
        if self.empty:
            return "FALSE"
        if self.lo is None:
            return f"({col} IS NULL)" if self.hi is None else f"({col} <= {_literal(self.kind, self.hi)} OR {col} IS NULL)"
        return f"{col} >= {_literal(self.kind, self.lo)} AND {col} <= {_literal(self.kind, self.hi)}"

    def verified_predicates(self, target_column: str) -> tuple[str, sql.Composable, list[Any]]:
        """The window as verification selects it on both sides: (Snowflake SQL, PostgreSQL SQL, its parameters).

        PostgreSQL holds timestamps at microseconds, so both sides take the rows whose watermark, cut to the
        microsecond, lies in the window's ends cut the same way: the same rows in both databases."""
        col, target = quote_snowflake_raw(self.column), sql.Identifier(target_column)
        if self.empty:
            return "FALSE", sql.SQL("FALSE"), []
        cast = {"numeric": "numeric", "date": "date", "timestamp": "timestamp", "timestamptz": "timestamptz"}[self.kind]
        lo = _microseconds(self.kind, self.lo) if self.lo is not None else None
        hi = _microseconds(self.kind, self.hi) if self.hi is not None else None
        source, target_parts, params = [], [], []
        if lo is not None:
            source.append(f"{col} >= {_literal(self.kind, lo)}")
            target_parts.append(sql.SQL("{} >= %s::{}").format(target, sql.SQL(cast)))
            params.append(lo)
        if hi is not None:
            if self.kind in ("timestamp", "timestamptz"):  # every nanosecond of hi's last microsecond
                source.append(f"{col} < {_literal(self.kind, _next_microsecond(hi))}")
            else:
                source.append(f"{col} <= {_literal(self.kind, hi)}")
            target_parts.append(sql.SQL("{} <= %s::{}").format(target, sql.SQL(cast)))
            params.append(hi)
        source_sql = " AND ".join(source)
        target_sql: sql.Composable = sql.SQL(" AND ").join(target_parts)
        if self.lo is None:  # the first window takes NULL watermarks too
            source_sql = f"({source_sql} OR {col} IS NULL)" if source else f"{col} IS NULL"
            target_sql = (sql.SQL("({} OR {} IS NULL)").format(target_sql, target) if target_parts
                          else sql.SQL("{} IS NULL").format(target))
        return source_sql, target_sql, params


def kind_of(column: Column) -> str | None:
    return WATERMARK_KINDS.get(column.source_type.split("(")[0])


def scope_filter(source_filter: str | None, window: Window | None) -> str | None:
    """The rows a table's run reads: its source_filter and its window."""
    parts = [f"({source_filter})" if source_filter else None, f"({window.predicate()})" if window else None]
    present = [p for p in parts if p]
    return " AND ".join(present) or None


def load_scope(account: str | None, source: tuple[str, ...], source_filter: str | None, watermark: str | None,
               target: str) -> dict[str, Any]:
    """What a window's high-water mark belongs to: a window of another scope never continues from it."""
    return {"account": (account or "").lower(), "source": ".".join(source), "filter": source_filter,
            "watermark": watermark, "target": target}


@dataclass(frozen=True)
class LastLoad:
    """The ledger's word on where this scope's next window starts."""

    hi: str | None  # the last completed window's end (inclusive lower end of the next one)
    target_max_serves: bool  # no window of this scope: the target's own largest watermark may serve
    why: str | None  # why the window starts afresh, if it does


@dataclass(frozen=True)
class LoadHistory:
    """What planning needs of a target's earlier loads, read in one query whatever the length of its history."""

    last: LastLoad
    described: list[dict[str, Any]] | None  # the source columns the last completed load of the scope read
    planned_columns: list[dict[str, Any]] | None  # the source columns of the target's latest plan by another run


# One row at most of each kind: the last completed load of the scope, the last completed load of the target, one
# completed load of the target that was not a plain copy of the same source and filter, the target's latest plan.
_HISTORY = f"""
(SELECT 'same', load_scope, watermark_lo, watermark_hi, reconcile_status, run_id, source_columns FROM {SCHEMA}.migration_table_status
 WHERE target_table = %(target)s AND status = 'completed' AND run_id <> %(run)s AND load_scope = %(scope)s
 ORDER BY completed_at DESC LIMIT 1)
UNION ALL
(SELECT 'latest', load_scope, NULL, NULL, NULL, run_id, NULL FROM {SCHEMA}.migration_table_status
 WHERE target_table = %(target)s AND status = 'completed' AND run_id <> %(run)s ORDER BY completed_at DESC LIMIT 1)
UNION ALL
(SELECT 'other', NULL, NULL, NULL, NULL, run_id, NULL FROM {SCHEMA}.migration_table_status
 WHERE target_table = %(target)s AND status = 'completed' AND run_id <> %(run)s
   AND NOT coalesce(load_scope - 'watermark' = %(scope)s::jsonb - 'watermark' AND load_scope -> 'watermark' = 'null'::jsonb,
                    false)
 LIMIT 1)
UNION ALL
(SELECT 'planned', NULL, NULL, NULL, NULL, run_id, source_columns FROM {SCHEMA}.migration_table_status
 WHERE target_table = %(target)s AND run_id <> %(run)s AND source_columns IS NOT NULL AND planned_chunks IS NOT NULL
 ORDER BY run_id DESC LIMIT 1)
"""


def load_history(conn: psycopg.Connection[Any], scope: dict[str, Any], run_id: int) -> LoadHistory:
    """The target's earlier loads as planning `scope` in run `run_id` needs them (see last_load)."""
    found = {kind: rest for kind, *rest in conn.execute(
        _HISTORY, {"target": scope["target"], "run": run_id, "scope": Jsonb(scope)}).fetchall()}
    planned = found.get("planned")
    planned_columns = list(planned[5]) if planned else None
    if same := found.get("same"):
        _, lo, hi, reconciled, _, columns = same
        # (hi None: the source held no watermark yet, nothing was read)
        last = LastLoad(lo if reconciled == "source_changed" else hi, False, None)
        return LoadHistory(last, list(columns) if columns is not None else None, planned_columns)
    if "other" not in found:
        return LoadHistory(LastLoad(None, True, None), None, planned_columns)
    stored, _, _, _, other_run, _ = found["latest"]
    if stored is None:
        why = f"the last load of {scope['target']} (run {other_run}) recorded no scope"
    else:
        changed = [k for k in ("account", "source", "filter", "watermark") if stored.get(k) != scope[k]]
        why = f"its scope changed since run {other_run} ({', '.join(f'{k} {stored.get(k)!r} → {scope[k]!r}' for k in changed)})"
    why += ": rows it now includes were never read, so this window starts from the beginning"
    return LoadHistory(LastLoad(None, False, why), None, planned_columns)


def last_load(conn: psycopg.Connection[Any], scope: dict[str, Any], run_id: int) -> LastLoad:
    """Where the next window of `scope` starts, from the completed loads of its target in the ledger.

    - the last completed window of the same scope: its `hi`, unless it could not prove its count while the
      source changed (reconciled `source_changed`): then its `lo`, so it is read again;
    - no load of the target recorded, or only plain copies of the same source and filter: the target's maximum;
    - loads of the target of another scope only: from the beginning (a widened filter's new rows were never read).
    """
    return load_history(conn, scope, run_id).last


def target_max(conn: psycopg.Connection[Any], target: tuple[str, str], column: str, kind: str) -> str | None:
    ident = sql.Identifier(column)
    expression = sql.SQL("(max({}) AT TIME ZONE 'UTC')::text" if kind == "timestamptz" else "max({})::text").format(ident)
    row = conn.execute(sql.SQL("SELECT {} FROM {}").format(expression, sql.Identifier(*target))).fetchone()
    return row[0] if row else None


def lowered(kind: str, value: str, lag: float) -> str:
    """`value` minus the lag, in the watermark's own text form, at its full precision."""
    if not lag:
        return value
    if kind == "numeric":
        return _decimal_text(Decimal(value) - Decimal(str(lag)))
    if kind == "date":
        return (date.fromisoformat(value[:10]) - timedelta(days=-(-lag // 86_400))).isoformat()
    return _from_nanoseconds(_nanoseconds(value) - int(Decimal(str(lag)) * 1_000_000_000))


def exact(kind: str, text: str) -> Any:
    """A watermark value that compares at the column's full precision (nanoseconds, every decimal digit)."""
    if kind == "numeric":
        return Decimal(text)
    if kind == "date":
        return date.fromisoformat(text[:10])
    return _nanoseconds(text)


_EPOCH = datetime(1970, 1, 1)


def _nanoseconds(text: str) -> int:
    """Nanoseconds since 1970 of a timestamp text with up to nine fractional digits (UTC for timestamptz)."""
    head, _, fraction = text.strip().partition(".")
    parsed = datetime.fromisoformat(head.replace("T", " ")[:19])
    digits = "".join(ch for ch in fraction if ch.isdigit())[:9]
    delta = parsed - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + int(digits.ljust(9, "0") or 0)


def _from_nanoseconds(value: int) -> str:
    seconds, nanos = divmod(value, 1_000_000_000)
    return f"{(_EPOCH + timedelta(seconds=seconds)).isoformat(sep=' ')}.{nanos:09d}"


def _microseconds(kind: str, text: str) -> str:
    """The value cut to the microsecond (PostgreSQL's precision); dates and numbers as they are."""
    if kind not in ("timestamp", "timestamptz"):
        return text
    return _from_nanoseconds(_nanoseconds(text) // 1000 * 1000)[:-3]


def max_expression(column: str, kind: str) -> str:
    """Snowflake SQL: the column's largest value as exact text, in the form a window's ends are kept."""
    col = quote_snowflake(column)
    return {
        "numeric": f"TO_VARCHAR(MAX({col}))",
        "date": f"TO_VARCHAR(MAX({col}), 'YYYY-MM-DD')",
        "timestamp": f"TO_VARCHAR(MAX({col}), 'YYYY-MM-DD HH24:MI:SS.FF9')",
        "timestamptz": f"TO_VARCHAR(CONVERT_TIMEZONE('UTC', MAX({col})), 'YYYY-MM-DD HH24:MI:SS.FF9')",
    }[kind]


def at_or_above(column: str, kind: str, lo: str) -> str:
    """Raw Snowflake SQL: the column at or above a window's lower end, at full precision."""
    return f"{quote_snowflake_raw(column)} >= {_literal(kind, lo)}"


def _next_microsecond(text: str) -> str:
    return _from_nanoseconds(_nanoseconds(text) // 1000 * 1000 + 1000)[:-3]


def _literal(kind: str, text: str) -> str:
    """A literal the engine renders from a value it read; validated, so no quote can come from data."""
    try:
        if kind == "numeric":
            return _decimal_text(Decimal(text))
        if kind == "date":
            return f"'{date.fromisoformat(text[:10]).isoformat()}'::DATE"
        head, dot, fraction = text.strip().partition(".")
        datetime.fromisoformat(head.replace("T", " ")[:19])
        if fraction and not fraction.isdigit():
            raise ValueError(fraction)
        value = f"{head.replace('T', ' ')[:19]}{dot}{fraction}"
        return f"'{value}'::TIMESTAMP_NTZ(9)" if kind == "timestamp" else f"'{value}+00:00'::TIMESTAMP_TZ(9)"
    except (ValueError, InvalidOperation) as exc:
        raise FatalError(f"watermark value {text!r} is not a valid {kind}: {exc}") from None


def _decimal_text(value: Decimal) -> str:
    text = format(value, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text
