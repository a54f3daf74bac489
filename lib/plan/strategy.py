"""Planning one table: pick the strategy, run its aggregated stats queries, build the chunks.

The number of queries per table is constant: at most three, whatever the number of days, keys
or chunks (primary key lookup, one stats query, and one refinement or count query).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from lib.config import TableSpec
from lib.errors import FatalError
from lib.models import TablePlan
from lib.plan.chunking import (
    BUCKETS_PER_CHUNK,
    hash_modulus,
    plan_dates,
    plan_hash,
    plan_numeric,
    plan_single,
    plan_strings,
)
from lib.source.snowflake import SnowflakeSource
from lib.typemap import Column

DATE_TYPES = {"DATE", "TIMESTAMP_NTZ", "TIMESTAMP_TZ", "TIMESTAMP_LTZ", "DATETIME"}
# Days and hours of these are those of the UTC instant, in both databases (Bounds.utc).
ZONED_TYPES = {"TIMESTAMP_TZ", "TIMESTAMP_LTZ"}
# Heavy days are split by hour where a value has a time of day.
HOUR_SPLIT_TYPES = {"TIMESTAMP_NTZ", "DATETIME", *ZONED_TYPES}
NUMERIC_PREFIXES = ("NUMBER", "FLOAT", "DOUBLE", "REAL")
# chunking_column_types spelled as the system this replaces spelled them → the strategy
STRATEGY_OF_TYPE = {"timestamp": "date"}


@dataclass(frozen=True)
class Choice:
    strategy: str  # "numeric" | "string" | "date" | "hash"
    column: str | None
    reason: str
    mutable: str | None = None  # why the rows' chunk can change with an update (not a key the engine trusts)


def plan_table(source: SnowflakeSource, spec: TableSpec, columns: list[Column], chunk_rows: int) -> TablePlan:
    started = time.monotonic()
    queries = 0
    if spec.chunking_columns:
        name, kind = spec.chunking_columns[0], spec.chunking_column_types[0]
        choice = Choice(STRATEGY_OF_TYPE.get(kind, kind), name, f"chunking_columns={name} ({kind}) from the config")
    else:
        choice = choose_strategy(columns, source.primary_key(spec.source))
        queries += 1
    plan, used = _plan(source, spec, columns, chunk_rows, choice)
    plan.queries = queries + used
    plan.mutable = choice.mutable
    plan.seconds = round(time.monotonic() - started, 3)
    return plan


def choose_strategy(columns: list[Column], primary_key: list[str]) -> Choice:
    """Primary key first, then an ID-like integer column, then a date column, then hash. A text primary key
    with a collation is passed over: its order is not one PostgreSQL can repeat (see _plan)."""
    by_name = {c.name: c for c in columns}
    if primary_key and primary_key[0] in by_name:
        key = by_name[primary_key[0]]
        if _is_numeric(key):
            return Choice("numeric", key.name, f"first primary key column {key.name} is numeric")
        if _base_type(key) in DATE_TYPES:
            return Choice("date", key.name, f"first primary key column {key.name} is a date")
        if is_string(key) and key.collation is None:
            return Choice("string", key.name, f"first primary key column {key.name} is text")
    for c in columns:
        if _is_integer(c) and (c.name.upper() == "ID" or c.name.upper().endswith("_ID")):
            return Choice("numeric", c.name, f"no usable primary key; {c.name} is an integer ID column")
    for c in columns:
        if _base_type(c) in DATE_TYPES:
            return Choice("date", c.name, f"no primary key or ID column; {c.name} is the first date column",
                          f"chunks are cut on {c.name}, a date column that is not a key and may be updated")
    return Choice("hash", None, "no primary key, ID or date column: rows are split by a hash of all columns",
                  "chunks are cut by a hash of all columns, which changes when any value does")


def _plan(source: SnowflakeSource, spec: TableSpec, columns: list[Column], chunk_rows: int,
          choice: Choice) -> tuple[TablePlan, int]:
    if choice.strategy == "hash":
        total = source.count(spec.source, spec.source_filter)
        modulus = hash_modulus(total, chunk_rows)
        if modulus == 1:
            return plan_single(total, f"{choice.reason}; the table fits in one chunk"), 1
        names = [c.name for c in columns]
        return plan_hash(names, source.hash_counts(spec.source, names, spec.source_filter, modulus), modulus,
                         choice.reason), 2

    assert choice.column is not None
    column = {c.name: c for c in columns}.get(choice.column)
    if column is None:
        raise FatalError(f"chunking column {choice.column} is not a column of {spec.name} "
                         f"(columns: {', '.join(c.name for c in columns)})")
    if choice.strategy == "date":
        if _base_type(column) not in DATE_TYPES:
            raise FatalError(f"chunking column {spec.name}.{column.name} is {column.source_type}, not a date or timestamp")
        utc = _base_type(column) in ZONED_TYPES
        days = source.day_counts(spec.source, column.name, spec.source_filter, utc)
        heavy = sorted(d.day for d in days if d.day is not None and d.rows > chunk_rows)
        hours = []
        if heavy and _base_type(column) in HOUR_SPLIT_TYPES:
            hours = source.hour_counts(spec.source, column.name, spec.source_filter, heavy, utc)
        reason = f"{choice.reason}: rows per day{' (UTC)' if utc else ''} from one GROUP BY query"
        return (plan_dates(column.name, days, chunk_rows, column.nullable, reason, hours,
                           "a DATE key has no time of day", utc), 1 + bool(hours))

    strings = choice.strategy == "string"
    _check_ranked_column(spec, column, strings)
    bucket_rows = max(1, chunk_rows // BUCKETS_PER_CHUNK)
    buckets, null_rows = source.key_buckets(spec.source, column.name, spec.source_filter, bucket_rows, strings)
    reason = f"{choice.reason}: cut at ranked key values from one query"
    planner = plan_strings if strings else plan_numeric
    return planner(column.name, buckets, null_rows, chunk_rows, column.nullable, reason), 1


def _check_ranked_column(spec: TableSpec, column: Column, strings: bool) -> None:
    where = f"chunking column {spec.name}.{column.name} is {column.source_type}"
    if not strings:
        if not _is_numeric(column):
            raise FatalError(f"{where}, not numeric" + (" (chunk it as string)" if is_string(column) else ""))
        return
    if not is_string(column):
        raise FatalError(f"{where}, not text (VARCHAR, STRING, TEXT, CHAR)")
    if column.collation is not None:
        raise FatalError(
            f"{where} with collation '{column.collation}': Snowflake compares it by that collation, which "
            "PostgreSQL cannot repeat, so a chunk's rows would differ between reading, verifying and repairing. "
            "Choose another chunking column (string chunks need a column without a collation)")


def _base_type(column: Column) -> str:
    return column.source_type.split("(")[0]


def _is_numeric(column: Column) -> bool:
    return column.source_type.startswith(NUMERIC_PREFIXES)


def is_string(column: Column) -> bool:
    return _base_type(column) == "VARCHAR"


def _is_integer(column: Column) -> bool:
    return column.source_type.startswith("NUMBER(") and column.source_type.endswith(",0)")
