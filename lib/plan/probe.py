"""An incremental window's first look at the source, in one query: the table's columns (for schema evolution), the
window's high end and size, the rows without a watermark and, when the window is small, every row of it. A run
that finds little or nothing new then costs one Snowflake query per table: its one chunk is written from those rows
with its plan (lib/plan/early_rows.py) instead of being read again.

The query needs the window's lower end and the watermark's type before the columns are read: both come from the
last completed window of the same scope, whose columns the ledger holds. When the columns read now differ from
those, the rows are not used (they were selected with the old columns) and the high end is read again if the
watermark's type changed; the run then plans as without the probe."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from lib.config.tables import TableSpec
from lib.errors import MigrationError, TransientError
from lib.identifiers import and_sql, quote_snowflake, raw_sql, where_sql
from lib.source.snowflake import SnowflakeSource, columns_digest_sql
from lib.target.windows import LastLoad, at_or_above, kind_of, lowered, max_expression
from lib.typemap import columns_from_description, estimated_row_bytes

# What the rows a probe returns may hold (they are written by the planning transaction, lib/plan/early_rows.py)
EARLY_BYTES = 64 * 2**20
DESCRIBED = ("name", "data_type", "precision", "scale", "char_length", "nullable", "collation")  # describe's keys
META = ("_MIGRATION_HI", "_MIGRATION_NULLS", "_MIGRATION_ROWS", "_MIGRATION_COLUMNS")


@dataclass(frozen=True)
class Probe:
    described: list[dict[str, Any]] | None  # the table's columns, when they are the last window's (else: describe)
    column: str  # the watermark column
    kind: str  # its kind when the query was built (the last window's)
    lo: str  # the window's lower end the query counted from
    hi: str | None
    nulls: int  # rows without a watermark
    rows: int  # rows at or above lo
    early: pa.Table | None  # every one of them, when they were at most the limit and the columns are unchanged
    row_bytes: int | None = None  # Arrow bytes per row of the rows it returned (the columns unchanged), a sample

    def answers(self, column: str, kind: str, lo: str | None) -> bool:
        """The probe counted the window planning computes now (the same column, type and lower end)."""
        return column == self.column and kind == self.kind and lo == self.lo


def probe_window(source: SnowflakeSource, spec: TableSpec, prior: list[dict[str, Any]] | None, last: LastLoad,
                 row_limit: int) -> Probe | None:
    """One query for a watermark table whose last window of the same scope completed (`prior`: the columns it read,
    `last`: the ledger's word on it). None otherwise, or when the query fails for a reason that is not transient:
    planning then reads the columns on their own and says why.
    `row_limit`: the most rows of the window it returns (0: none); more than that, and it returns none; none either
    when they might not fit in EARLY_BYTES."""
    column = spec.source_watermark
    assert column is not None
    if prior is None or last.hi is None or last.why:
        return None
    columns = columns_from_description(prior)
    by_name = {c.name: c for c in columns}
    kind = kind_of(by_name[column]) if column in by_name else None
    if kind is None:
        return None
    lo = lowered(kind, last.hi, spec.watermark_lag) if spec.watermark_lag else last.hi
    limit = row_limit if row_limit * estimated_row_bytes(columns) <= EARLY_BYTES else 0
    table = source.table_sql(spec.source)
    above = raw_sql(at_or_above(column, kind, lo))
    db, schema, name = spec.source
    sql = (f"SELECT {'*' if limit else chr(34) + '_M' + chr(34) + '.*'} FROM ("
           f"SELECT {max_expression(column, kind)} AS \"{META[0]}\", "
           f"SUM(IFF({quote_snowflake(column)} IS NULL, 1, 0)) AS \"{META[1]}\", SUM(IFF({above}, 1, 0)) AS \"{META[2]}\", "
           f"({columns_digest_sql(db)}) AS \"{META[3]}\" FROM {table}{where_sql(spec.source_filter)}) AS \"_M\"")
    if limit:
        select = ", ".join(quote_snowflake(c.name) for c in columns)
        sql += (f" LEFT JOIN (SELECT {select} FROM {table} WHERE ({above}){and_sql(spec.source_filter)} "
                f"LIMIT {limit + 1}) AS \"_R\" ON TRUE")
    try:
        answer = source.arrow(sql, {"schema": schema, "table": name}, f"reading the window of {'.'.join(spec.source)}")
    except TransientError:
        raise
    except MigrationError:
        return None
    if not answer.num_rows:
        return None
    first = answer.select(list(range(len(META)))).slice(0, 1).to_pylist()[0]
    same = first[META[3]] == columns_digest(prior)
    rows = int(first[META[2]] or 0)
    early = row_bytes = None
    if limit and same and rows:
        returned = answer.select(list(range(len(META), answer.num_columns))).slice(0, min(rows, limit + 1))
        if returned.schema.names == [c.name for c in columns]:
            row_bytes = -(-returned.nbytes // returned.num_rows) if returned.num_rows else None
            early = returned if rows <= limit and returned.num_rows == rows else None
    described = [{k: v for k, v in d.items() if k in DESCRIBED} for d in prior]
    return Probe(described if same else None, column, kind, lo, first[META[0]], int(first[META[1]] or 0), rows, early,
                 row_bytes)


def columns_digest(described: list[dict[str, Any]]) -> str:
    """What columns_digest_sql computes in Snowflake, from columns as describe gives them."""
    def text(value: Any) -> str:
        return "" if value is None else str(value)

    lines = [US.join((d["name"], d["data_type"], text(d.get("precision")), text(d.get("scale")),
                      text(d.get("char_length")), "YES" if d.get("nullable", True) else "NO", text(d.get("collation"))))
             for d in described]
    return hashlib.md5(RS.join(lines).encode()).hexdigest()


US, RS = chr(31), chr(30)  # the unit and record separators, which no column name or type holds
