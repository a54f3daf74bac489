"""Watermark windows for incremental loads: `lo < watermark <= hi`, fixed when the table is planned.

- `hi` is the source's largest watermark at plan time, read as exact text (nanoseconds, all decimal
  digits), so a run that resumes after a crash copies the same window, never a moving one.
- `lo` is the `hi` of the last *completed* load of the same source table into the same target, as
  recorded in the ledger. Only when there is none does the target's own largest watermark serve (an
  initial load done by a plain copy run, or by another tool). The ledger wins because it records what
  this engine proved it copied; the target's maximum can be raised by other writers or by rows
  merged from a window that never completed, and would then skip source rows below it.
- `watermark_lag` lowers `lo` (seconds for dates and timestamps, units for numbers) so that rows
  committed late with an older watermark are read again; the merge makes re-reading them harmless.
- Rows whose watermark is NULL cannot be ordered: the first load (no `lo`) takes them, incremental
  loads skip them and the plan notes say how many there are.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

import psycopg
from psycopg import sql

from lib.errors import FatalError
from lib.identifiers import quote_snowflake, quote_snowflake_raw
from lib.snowflake_source import and_sql, where_sql
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
    lo: str | None  # exclusive; None: from the beginning, NULL watermarks included
    hi: str | None  # inclusive; None: the source holds no watermark at all
    lo_from: str  # "ledger" | "target" | "none": where lo came from

    @property
    def empty(self) -> bool:
        """Nothing new: the source's largest watermark is not above the last one copied."""
        return self.lo is not None and (self.hi is None or _value(self.kind, self.hi) <= _value(self.kind, self.lo))

    def predicate(self) -> str:
        """The window as raw Snowflake SQL (like a source_filter); values are literals the engine rendered."""
        col = quote_snowflake_raw(self.column)
        if self.empty:
            return "FALSE"
        if self.lo is None:
            return f"({col} IS NULL)" if self.hi is None else f"({col} <= {_literal(self.kind, self.hi)} OR {col} IS NULL)"
        return f"{col} > {_literal(self.kind, self.lo)} AND {col} <= {_literal(self.kind, self.hi)}"


def kind_of(column: Column) -> str | None:
    return WATERMARK_KINDS.get(column.source_type.split("(")[0])


def scope_filter(source_filter: str | None, window: Window | None) -> str | None:
    """The rows a table's run reads: its source_filter and its window."""
    parts = [f"({source_filter})" if source_filter else None, f"({window.predicate()})" if window else None]
    present = [p for p in parts if p]
    return " AND ".join(present) or None


def source_max(source: Any, table: tuple[str, ...], column: str, kind: str, source_filter: str | None) -> str | None:
    """The source's largest watermark as exact text (source: a SnowflakeSource)."""
    col = quote_snowflake(column)
    expression = {
        "numeric": f"TO_VARCHAR(MAX({col}))",
        "date": f"TO_VARCHAR(MAX({col}), 'YYYY-MM-DD')",
        "timestamp": f"TO_VARCHAR(MAX({col}), 'YYYY-MM-DD HH24:MI:SS.FF9')",
        "timestamptz": f"TO_VARCHAR(CONVERT_TIMEZONE('UTC', MAX({col})), 'YYYY-MM-DD HH24:MI:SS.FF9')",
    }[kind]
    return source.scalar(f"SELECT {expression} FROM {source.table_sql(table)}{where_sql(source_filter)}",
                         f"reading the largest {column} of {'.'.join(table)}")


def ledger_hi(conn: psycopg.Connection[Any], table: str, target: str, column: str, run_id: int) -> str | None:
    """The window end of the last completed load of this source table into this target, if any."""
    row = conn.execute(
        "SELECT watermark_hi FROM migration_status.migration_table_status "
        "WHERE table_name = %s AND target_table = %s AND watermark_column = %s AND status = 'completed' "
        "AND watermark_hi IS NOT NULL AND run_id <> %s ORDER BY completed_at DESC LIMIT 1",
        (table, target, column, run_id),
    ).fetchone()
    return row[0] if row else None


def target_max(conn: psycopg.Connection[Any], target: tuple[str, str], column: str, kind: str) -> str | None:
    ident = sql.Identifier(column)
    expression = sql.SQL("(max({}) AT TIME ZONE 'UTC')::text" if kind == "timestamptz" else "max({})::text").format(ident)
    row = conn.execute(sql.SQL("SELECT {} FROM {}").format(expression, sql.Identifier(*target))).fetchone()
    return row[0] if row else None


def lowered(kind: str, value: str, lag: float) -> str:
    """`value` minus the lag, in the watermark's own text form."""
    if not lag:
        return value
    if kind == "numeric":
        return _decimal_text(Decimal(value) - Decimal(str(lag)))
    if kind == "date":
        return (date.fromisoformat(value) - timedelta(days=-(-lag // 86_400))).isoformat()
    return (_timestamp(value) - timedelta(seconds=lag)).isoformat(sep=" ")


def null_note(source: Any, table: tuple[str, ...], column: str, source_filter: str | None) -> str | None:
    """A plan note when rows have no watermark: incremental loads cannot see them."""
    count = int(source.scalar(f"SELECT COUNT(*) FROM {source.table_sql(table)} WHERE {quote_snowflake(column)} IS NULL"
                              f"{and_sql(source_filter)}",
                              f"counting rows of {'.'.join(table)} without {column}") or 0)
    if not count:
        return None
    return (f"{count} row(s) have a NULL {column}: an incremental window cannot order them, so they are not read "
            "(only a first load, with no earlier window, takes them)")


def _value(kind: str, text: str) -> Any:
    if kind == "numeric":
        return Decimal(text)
    if kind == "date":
        return date.fromisoformat(text[:10])
    return _timestamp(text)


def _timestamp(text: str) -> datetime:
    """Parse a timestamp text at up to nanoseconds; the comparison keeps microseconds (PostgreSQL's)."""
    head, _, fraction = text.strip().partition(".")
    parsed = datetime.fromisoformat(head.replace("T", " ")[:19])
    return parsed.replace(microsecond=int((fraction[:6] or "0").ljust(6, "0"))) if fraction else parsed


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
