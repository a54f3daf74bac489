"""Content checksums computed inside each database, from one definition of each type's canonical text.

A row's canonical text is its fields joined by `|`; a field is `~` for NULL, else the column's canonical
text, preceded by its length and `:` where the text itself could hold a `|` (text, JSON). So no value
can pass for another, or for NULL. The row's hash is the lower 64 bits of its MD5 (Snowflake's
MD5_NUMBER_LOWER64; in PostgreSQL the last 16 hex digits of md5()); a chunk's checksum is its row
count and the sums of two 30-bit slices of those hashes, which no realistic chunk can overflow. Only
these three numbers travel.

| source type | canonical text | in Snowflake | in PostgreSQL |
|---|---|---|---|
| NUMBER(p,s) | digits at the source's scale | TO_VARCHAR(c) | c::numeric(38,s)::text |
| VARCHAR, TEXT | the text, length-prefixed | c | c |
| BOOLEAN | 1 or 0 | IFF(c, '1', '0') | CASE WHEN c THEN '1' ELSE '0' END |
| DATE | days since 1970-01-01 | DATEDIFF(day, '1970-01-01', c) | c - DATE '1970-01-01' |
| TIMESTAMP_NTZ | microseconds since 1970-01-01 00:00 | DATE_PART(EPOCH_MICROSECOND, c) | extract(epoch FROM c) * 1e6 |
| TIMESTAMP_TZ / LTZ | microseconds since the epoch, UTC | DATE_PART(EPOCH_MICROSECOND, c) | extract(epoch FROM c) * 1e6 |
| TIME | microseconds since midnight | DATEDIFF(microsecond, '00:00:00', c) | extract(epoch FROM c) * 1e6 |
| BINARY | lower-case hex | LOWER(HEX_ENCODE(c)) | encode(c, 'hex') |
| VARIANT, OBJECT, ARRAY | jsonb's text form (lib/check/jsonb_text.py), length-prefixed | MIGRATION_JSONB_TEXT(TO_JSON(c)) | c::text |
| FLOAT | NULL or not only | 'f' | 'f' |
| VARCHAR into a citext column | the text, length-prefixed | c | c::text |

FLOAT is compared for NULLs only: no text form of a double is produced identically by both engines
(shortest round-trip digits, exponent and NaN spellings differ), and the report says so. A target
column whose type has no binary encoding (uuid, inet, ...) is likewise compared for NULLs only.
Timestamps compare at microseconds: the copy truncates Snowflake's nanoseconds, and so does this.
"""

from __future__ import annotations

from dataclasses import dataclass

from psycopg import sql

from lib.check.jsonb_text import UDF_NAME
from lib.identifiers import quote_snowflake
from lib.target.wire import target_column_name
from lib.typemap import Column

SLICE = (1 << 30) - 1  # each of the two sums adds 30 bits of a row's hash


@dataclass(frozen=True)
class Field:
    column: Column
    snowflake: str  # canonical text, a Snowflake expression (statement-ready: identifiers %-escaped)
    postgres: sql.Composable
    framed: bool  # length-prefixed: the text could contain the separator
    values: bool  # False: only NULL or not is compared

    def describe(self) -> str:
        return self.column.name if self.values else f"{self.column.name} ({self.column.source_type}: NULLs only)"


_TIME_OF_DAY_ZERO = "'00:00:00'::TIME"


def fields(columns: list[Column]) -> list[Field]:
    """The canonical text of every column, in both dialects (see the table above)."""
    out = []
    for column in columns:
        sf, pg = quote_snowflake(column.name), sql.Identifier(target_column_name(column.name))
        base = column.source_type.split("(")[0]
        if column.via_text and base in ("VARCHAR", "TEXT", "STRING", "CHAR") and column.pg_type.split("(")[0] == "citext":
            # a citext keeps the text it was given: compared as text, case and all (its own equality ignores case)
            out.append(Field(column, sf, sql.SQL("{}::text").format(pg), framed=True, values=True))
        elif column.via_text or base in ("FLOAT", "DOUBLE", "REAL"):
            out.append(Field(column, "'f'", sql.SQL("'f'"), framed=False, values=False))
        elif base == "NUMBER":
            scale = int(column.source_type.rstrip(")").split(",")[1]) if "," in column.source_type else 0
            out.append(Field(column, f"TO_VARCHAR({sf})",  # Snowflake prints a NUMBER at its own scale
                             sql.SQL("({}::numeric(38,{}))::text").format(pg, sql.SQL(str(scale))), False, True))
        elif base in ("VARCHAR", "TEXT", "STRING", "CHAR"):
            out.append(Field(column, sf, sql.SQL("{}::text").format(pg), framed=True, values=True))
        elif base == "BOOLEAN":
            out.append(Field(column, f"IFF({sf}, '1', '0')", sql.SQL("CASE WHEN {} THEN '1' ELSE '0' END").format(pg),
                             False, True))
        elif base == "DATE":
            out.append(Field(column, f"TO_VARCHAR(DATEDIFF(day, '1970-01-01'::DATE, {sf}))",
                             sql.SQL("({} - DATE '1970-01-01')::text").format(pg), False, True))
        elif base in ("TIMESTAMP_NTZ", "DATETIME", "TIMESTAMP_TZ", "TIMESTAMP_LTZ"):
            out.append(Field(column, f"TO_VARCHAR(DATE_PART(EPOCH_MICROSECOND, {sf}))",
                             sql.SQL("(extract(epoch FROM {}) * 1000000)::bigint::text").format(pg), False, True))
        elif base == "TIME":
            out.append(Field(column, f"TO_VARCHAR(DATEDIFF(microsecond, {_TIME_OF_DAY_ZERO}, {sf}))",
                             sql.SQL("(extract(epoch FROM {}) * 1000000)::bigint::text").format(pg), False, True))
        elif base in ("BINARY", "VARBINARY"):
            out.append(Field(column, f"LOWER(HEX_ENCODE({sf}))", sql.SQL("encode({}, 'hex')").format(pg), False, True))
        elif base in ("VARIANT", "OBJECT", "ARRAY"):
            target = sql.SQL("{}::jsonb::text" if column.pg_type == "json" else "{}::text").format(pg)
            out.append(Field(column, f"{UDF_NAME}(TO_JSON({sf}))", target, framed=True, values=True))
        else:
            out.append(Field(column, "'?'", sql.SQL("'?'"), framed=False, values=False))
    return out


# Each field's text is computed once, in an inner SELECT (as F0, F1, ...), and framed in the outer one:
# written inline, a framed text (a JSON UDF call, a jsonb cast) would be computed twice, for its length
# and for itself. The canonical text is NULL exactly when the column is.
def _snowflake_text(f: Field) -> str:
    return f.snowflake if f.framed else f"IFF({quote_snowflake(f.column.name)} IS NULL, '~', {f.snowflake})"


def _snowflake_framed(i: int, f: Field) -> str:
    return f"IFF(F{i} IS NULL, '~', LENGTH(F{i}) || ':' || F{i})" if f.framed else f"F{i}"


def _postgres_text(f: Field) -> sql.Composable:
    if f.framed:
        return f.postgres
    name = sql.Identifier(target_column_name(f.column.name))
    return sql.SQL("CASE WHEN {} IS NULL THEN '~' ELSE {} END").format(name, f.postgres)


def _postgres_framed(i: int, f: Field) -> sql.Composable:
    name = sql.Identifier(f"f{i}")
    return sql.SQL("CASE WHEN {0} IS NULL THEN '~' ELSE length({0}) || ':' || {0} END").format(name) if f.framed else name


def snowflake_query(fields_: list[Field], table_sql: str, buckets: list[str], filter_sql: str = "") -> str:
    """Per bucket (the index of the first of the `buckets` predicates a row satisfies; rows satisfying none
    are not read): bucket, count, sum of the low 30 bits, sum of the next 30 bits of each row's hash (as
    text: exact). `filter_sql` (" AND ...") narrows every bucket."""
    texts = ", ".join(f"{_snowflake_text(f)} AS F{i}" for i, f in enumerate(fields_))
    row = " || '|' || ".join(_snowflake_framed(i, f) for i, f in enumerate(fields_))
    bucket = " ".join(f"WHEN {b} THEN {i}" for i, b in enumerate(buckets))
    where = " OR ".join(f"({b})" for b in buckets)
    return (f"SELECT B, COUNT(*), TO_VARCHAR(SUM(BITAND(h, {SLICE}))), TO_VARCHAR(SUM(BITAND(BITSHIFTRIGHT(h, 30), {SLICE}))) "
            f"FROM (SELECT B, MD5_NUMBER_LOWER64({row}) AS h FROM (SELECT CASE {bucket} END AS B, {texts} "
            f"FROM {table_sql} WHERE ({where}){filter_sql}) AS canonical) AS hashed GROUP BY B")


def postgres_query(fields_: list[Field], table: tuple[str, str], buckets: list[sql.Composable],
                   narrowed: sql.Composable | None = None) -> sql.Composable:
    """The same in PostgreSQL. Its parameters are the buckets', twice over: the CASE's, then the WHERE's; then
    those of `narrowed`, a predicate that narrows every bucket (a watermark window)."""
    texts = sql.SQL(", ").join(sql.SQL("{} AS {}").format(_postgres_text(f), sql.Identifier(f"f{i}"))
                               for i, f in enumerate(fields_))
    row = sql.SQL(" || '|' || ").join(_postgres_framed(i, f) for i, f in enumerate(fields_))
    bucket = sql.SQL(" ").join(sql.SQL("WHEN {} THEN {}").format(b, sql.Literal(i)) for i, b in enumerate(buckets))
    where = sql.SQL(" OR ").join(sql.SQL("({})").format(b) for b in buckets)
    if narrowed is not None:
        where = sql.SQL("({}) AND ({})").format(where, narrowed)
    # OFFSET 0 keeps each subquery a subquery: PostgreSQL would otherwise pull it up and paste its
    # expressions into every place the outer query names them: each framed text three times, each row's
    # MD5 twice (measured: 2.2x the CPU of the fenced query on the bench table)
    return sql.SQL(
        "SELECT b, count(*), sum(h & {0})::text, sum((h >> 30) & {0})::text FROM "
        "(SELECT b, ('x' || substr(md5({1}), 17, 16))::bit(64)::bigint AS h FROM "
        "(SELECT CASE {2} END AS b, {3} FROM {4} WHERE {5} OFFSET 0) AS canonical OFFSET 0) AS hashed GROUP BY b"
    ).format(sql.Literal(SLICE), row, bucket, texts, sql.Identifier(*table), where)
