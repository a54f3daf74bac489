"""Planning one table: pick the strategy, run its single aggregated stats query, build the chunks."""

from __future__ import annotations

import time

from lib.chunking import BUCKETS_PER_CHUNK, plan_dates, plan_numeric, plan_single
from lib.config import TableSpec
from lib.errors import FatalError
from lib.models import TablePlan
from lib.snowflake_source import SnowflakeSource
from lib.typemap import Column

_DATE_TYPES = {"DATE", "TIMESTAMP_NTZ", "TIMESTAMP_TZ", "TIMESTAMP_LTZ", "DATETIME"}


def plan_table(source: SnowflakeSource, spec: TableSpec, columns: list[Column], chunk_rows: int) -> TablePlan:
    started = time.monotonic()
    plan = _plan(source, spec, columns, chunk_rows)
    plan.seconds = round(time.monotonic() - started, 3)
    return plan


def _plan(source: SnowflakeSource, spec: TableSpec, columns: list[Column], chunk_rows: int) -> TablePlan:
    by_name = {c.name: c for c in columns}
    if not spec.chunking_columns:
        total = source.count(spec.source, spec.source_filter)
        plan = plan_single(total, "no chunking_columns configured: the whole table is one chunk")
        plan.queries = 1
        return plan

    column_name, kind = spec.chunking_columns[0], spec.chunking_column_types[0]
    column = by_name.get(column_name)
    if column is None:
        raise FatalError(
            f"chunking column {column_name} is not a column of {spec.name} (columns: {', '.join(by_name)})"
        )
    if kind == "date":
        if column.source_type.split("(")[0] not in _DATE_TYPES:
            raise FatalError(f"chunking column {spec.name}.{column_name} is {column.source_type}, not a date or timestamp")
        days = source.day_counts(spec.source, column_name, spec.source_filter)
        plan = plan_dates(column_name, days, chunk_rows, column.nullable,
                          f"chunking_columns={column_name} (date): rows per day from one GROUP BY query")
    else:
        if not column.source_type.startswith(("NUMBER", "FLOAT", "DOUBLE", "REAL")):
            raise FatalError(f"chunking column {spec.name}.{column_name} is {column.source_type}, not numeric")
        bucket_rows = max(1, chunk_rows // BUCKETS_PER_CHUNK)
        buckets, null_rows = source.key_buckets(spec.source, column_name, spec.source_filter, bucket_rows)
        plan = plan_numeric(column_name, buckets, null_rows, chunk_rows, column.nullable,
                            f"chunking_columns={column_name} (numeric): cut at quantiles of the real keys")
    plan.queries = 1
    return plan
