"""Snowflake column type → PostgreSQL column type and the Arrow type that carries it on the wire.

One declarative table; `map_column` picks the row. The Arrow "wire" type is what a record batch
is cast to before binary COPY encoding, so the bytes match the PostgreSQL column exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from lib.errors import FatalError

SNOWFLAKE_MAX_VARCHAR = 16_777_216


@dataclass(frozen=True)
class Column:
    """A source column and its target mapping."""

    name: str  # exact Snowflake spelling
    source_type: str  # e.g. NUMBER(10,2)
    pg_type: str  # DDL, e.g. numeric(10,2)
    wire: pa.DataType  # Arrow type the values are cast to before COPY
    is_json: bool = False
    est_bytes: int = 8  # estimated in-memory bytes per value, for the memory budget
    nullable: bool = True


@dataclass(frozen=True)
class _Rule:
    pg_type: str
    wire: pa.DataType
    est_bytes: int
    is_json: bool = False


# Fixed-shape types. NUMBER and VARCHAR depend on precision/length and are handled below.
_FIXED: dict[str, _Rule] = {
    "FLOAT": _Rule("double precision", pa.float64(), 8),
    "DOUBLE": _Rule("double precision", pa.float64(), 8),
    "REAL": _Rule("double precision", pa.float64(), 8),
    "BOOLEAN": _Rule("boolean", pa.bool_(), 1),
    "DATE": _Rule("date", pa.date32(), 4),
    "TIME": _Rule("time", pa.time64("us"), 8),
    "TIMESTAMP_NTZ": _Rule("timestamp", pa.timestamp("us"), 8),
    "DATETIME": _Rule("timestamp", pa.timestamp("us"), 8),
    "TIMESTAMP_TZ": _Rule("timestamptz", pa.timestamp("us", tz="UTC"), 8),
    "TIMESTAMP_LTZ": _Rule("timestamptz", pa.timestamp("us", tz="UTC"), 8),
    "VARIANT": _Rule("jsonb", pa.string(), 256, is_json=True),
    "OBJECT": _Rule("jsonb", pa.string(), 256, is_json=True),
    "ARRAY": _Rule("jsonb", pa.string(), 256, is_json=True),
    "BINARY": _Rule("bytea", pa.binary(), 128),
    "VARBINARY": _Rule("bytea", pa.binary(), 128),
}

# NUMBER(p, 0) → the narrowest integer that holds every p-digit value.
_INTEGER_BY_PRECISION: list[tuple[int, _Rule]] = [
    (4, _Rule("smallint", pa.int16(), 2)),
    (9, _Rule("integer", pa.int32(), 4)),
    (18, _Rule("bigint", pa.int64(), 8)),
]

_TEXT_TYPES = {"TEXT", "VARCHAR", "STRING", "CHAR", "CHARACTER", "NCHAR", "NVARCHAR"}
_NUMBER_TYPES = {"NUMBER", "DECIMAL", "NUMERIC", "FIXED"}


def map_column(
    name: str,
    data_type: str,
    precision: int | None = None,
    scale: int | None = None,
    char_length: int | None = None,
    nullable: bool = True,
) -> Column:
    """Map one information_schema row. Raises FatalError for a type with no mapping."""
    base = data_type.upper().split("(")[0].strip()
    if base in _NUMBER_TYPES:
        p = precision or 38
        s = scale or 0
        if s == 0:
            for max_digits, rule in _INTEGER_BY_PRECISION:
                if p <= max_digits:
                    return _column(name, f"NUMBER({p},0)", rule, nullable)
        return Column(name, f"NUMBER({p},{s})", f"numeric({p},{s})", pa.decimal128(p, s), est_bytes=16, nullable=nullable)
    if base in _TEXT_TYPES:
        if char_length and char_length < SNOWFLAKE_MAX_VARCHAR:
            return Column(name, f"VARCHAR({char_length})", f"varchar({char_length})", pa.string(),
                          est_bytes=min(char_length, 256) + 8, nullable=nullable)
        return Column(name, "VARCHAR", "text", pa.string(), est_bytes=64, nullable=nullable)
    rule = _FIXED.get(base)
    if rule is None:
        raise FatalError(f"column {name!r} has Snowflake type {data_type}, which has no PostgreSQL mapping yet")
    return _column(name, base, rule, nullable)


def _column(name: str, source_type: str, rule: _Rule, nullable: bool) -> Column:
    return Column(name, source_type, rule.pg_type, rule.wire, rule.is_json, rule.est_bytes, nullable)


def estimated_row_bytes(columns: list[Column]) -> int:
    # Arrow buffers plus validity bitmaps and offsets; roughly one extra word per column.
    return sum(c.est_bytes + 4 for c in columns)
