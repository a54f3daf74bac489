"""Snowflake column type → PostgreSQL column type and the Arrow type that carries it on the wire.

One declarative table; `map_column` picks the row. The Arrow "wire" type is what a record batch
is cast to before binary COPY encoding, so the bytes match the PostgreSQL column exactly.
"""

from __future__ import annotations

import re
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
    via_text: bool = False  # no binary encoding for the target type: sent as text, cast by PostgreSQL
    collation: str | None = None  # a text column's Snowflake collation (e.g. 'en-ci'); None: code point order


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
    target_type: str | None = None,
    collation: str | None = None,
) -> Column:
    """Map one information_schema row. Raises FatalError for a type with no mapping.

    `target_type` is the column's type in an existing target table (`format_type`): values are
    then cast to what that column holds, so one that does not fit fails its chunk by name.
    """
    if target_type:
        source = map_column(name, data_type, precision, scale, char_length, nullable, collation=collation)
        return _existing_target(source, target_type)
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
                          est_bytes=min(char_length, 256) + 8, nullable=nullable, collation=collation)
        return Column(name, "VARCHAR", "text", pa.string(), est_bytes=64, nullable=nullable, collation=collation)
    rule = _FIXED.get(base)
    if rule is None:
        raise FatalError(f"column {name!r} has Snowflake type {data_type}, which has no PostgreSQL mapping yet")
    return _column(name, base, rule, nullable)


# PostgreSQL type (format_type, without modifiers) → Arrow wire type, for existing target tables.
_PG_WIRE: dict[str, pa.DataType] = {
    "smallint": pa.int16(), "integer": pa.int32(), "bigint": pa.int64(),
    "real": pa.float32(), "double precision": pa.float64(), "boolean": pa.bool_(), "date": pa.date32(),
    "text": pa.string(), "character varying": pa.string(), "character": pa.string(), "jsonb": pa.string(),
    "bytea": pa.binary(), "time without time zone": pa.time64("us"),
    "timestamp without time zone": pa.timestamp("us"), "timestamp with time zone": pa.timestamp("us", tz="UTC"),
    # this module's own spellings, as a dry run of a schema change reports a type it has not applied yet
    "varchar": pa.string(), "time": pa.time64("us"), "timestamp": pa.timestamp("us"),
    "timestamptz": pa.timestamp("us", tz="UTC"),
}


def _existing_target(source: Column, target_type: str) -> Column:
    base = target_type.split("(")[0].strip()
    if base == "numeric":
        digits = [int(x) for x in target_type[len("numeric("):-1].split(",")] if "(" in target_type else []
        precision = digits[0] if digits else 38
        scale = digits[1] if len(digits) > 1 else (0 if digits else source.wire.scale if pa.types.is_decimal(source.wire) else 9)
        wire: pa.DataType = pa.decimal128(min(precision, 38), scale)
    elif base in _PG_WIRE:
        wire = _PG_WIRE[base]
    else:
        # uuid, inet, interval, json, ... : this column alone goes through text and a cast
        return Column(source.name, source.source_type, target_type, pa.string(), False, source.est_bytes,
                      source.nullable, via_text=True, collation=source.collation)
    return Column(source.name, source.source_type, target_type, wire, base == "jsonb", source.est_bytes, source.nullable,
                  collation=source.collation)


def columns_from_description(described: list[dict[str, object]]) -> list[Column]:
    """Columns of a table as stored in its plan (see SnowflakeSource.describe)."""
    return [map_column(**d) for d in described]  # type: ignore[arg-type]


def _column(name: str, source_type: str, rule: _Rule, nullable: bool) -> Column:
    return Column(name, source_type, rule.pg_type, rule.wire, rule.is_json, rule.est_bytes, nullable)


def estimated_row_bytes(columns: list[Column]) -> int:
    # Arrow buffers plus validity bitmaps and offsets; roughly one extra word per column.
    return sum(c.est_bytes + 4 for c in columns)


_TEXT_SOURCES = ("VARCHAR", "TEXT", "STRING", "CHAR", "CHARACTER", "NCHAR", "NVARCHAR")


def numeric_key_scale(column: Column, target_type: str | None = None) -> int | None:
    """The scale at which a key column held as text in Snowflake becomes a number in its target (`target_type`, or
    the column's own target type): two texts of one number ('0350', '350') are two keys in Snowflake and one in
    the target. None when the column keeps its kind on the way."""
    if column.source_type.split("(")[0].upper() not in _TEXT_SOURCES:
        return None
    target = (target_type or column.pg_type).lower()
    if target in ("smallint", "integer", "bigint"):
        return 0
    scale = re.fullmatch(r"numeric\(\d+,\s*(\d+)\)", target)
    return int(scale.group(1)) if scale else None
