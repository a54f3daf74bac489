"""PostgreSQL side: create target tables from the type map, and COPY Arrow batches in binary.

Batches are cast to each column's wire type and encoded by pgpq straight into the binary COPY
format, so no Python object is built per value.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import psycopg
import pyarrow as pa
from psycopg import sql

from lib.config.connections import connect as connect  # opening a PostgreSQL connection: pg.connect(...)
from lib.errors import FatalError
from lib.models import Bounds
from lib.target.wire import Wire, target_column_name
from lib.typemap import Column


def table_ident(target: tuple[str, str]) -> sql.Composed:
    return sql.Identifier(*target)


def table_exists(conn: psycopg.Connection[Any], target: tuple[str, str]) -> bool:
    row = conn.execute(
        "SELECT 1 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')",
        target,
    ).fetchone()
    return row is not None


def target_column_types(conn: psycopg.Connection[Any], target: tuple[str, str]) -> dict[str, str] | None:
    """Column name → format_type of the table `target`; None when there is no such table (one query for both)."""
    rows = conn.execute(
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_catalog.pg_class c "
        "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace LEFT JOIN pg_catalog.pg_attribute a "
        "ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped "
        "WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p') ORDER BY a.attnum",
        target,
    ).fetchall()
    return {r[0]: r[1] for r in rows if r[0] is not None} if rows else None


def target_column_names(columns: list[Column]) -> list[str]:
    return [target_column_name(c.name) for c in columns]


def types_by_source_column(conn: psycopg.Connection[Any], target: tuple[str, str], columns: list[Column]) -> dict[str, str]:
    """An existing target's column types, keyed by the source column each one receives."""
    return by_source_column(target_column_types(conn, target) or {}, columns)


def by_source_column(types: dict[str, str], columns: list[Column]) -> dict[str, str]:
    """Target column types (by target column name) keyed by the source column each one receives."""
    return {c.name: types[target_column_name(c.name)] for c in columns if target_column_name(c.name) in types}


def existing_types(conn: psycopg.Connection[Any], target: tuple[str, str], columns: list[Column]) -> dict[str, str] | None:
    """An existing target's column types by source column name, checked to have every column; None if there is
    no such table."""
    existing = target_column_types(conn, target)
    if existing is None:
        return None
    types = by_source_column(existing, columns)
    missing = [target_column_name(c.name) for c in columns if c.name not in types]
    if missing:
        raise FatalError(f"target table {'.'.join(target)} exists but lacks column(s) {', '.join(missing)}")
    return types


def ensure_table(conn: psycopg.Connection[Any], target: tuple[str, str], columns: list[Column]) -> dict[str, str] | None:
    """Create the target table when missing (returns None), or check that an existing one has every
    column and return its column types by source column name."""
    names = target_column_names(columns)
    types = existing_types(conn, target, columns)
    if types is not None:
        return types
    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(target[0])))
    column_defs = sql.SQL(", ").join(
        sql.SQL("{} {}").format(sql.Identifier(n), sql.SQL(c.pg_type)) for n, c in zip(names, columns, strict=True)
    )
    conn.execute(sql.SQL("CREATE TABLE {} ({})").format(table_ident(target), column_defs))
    return None


def row_count(conn: psycopg.Connection[Any], target: tuple[str, str]) -> int:
    row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(table_ident(target))).fetchone()
    assert row is not None
    return int(row[0])


def has_rows(conn: psycopg.Connection[Any], target: tuple[str, str]) -> bool:
    return conn.execute(sql.SQL("SELECT 1 FROM {} LIMIT 1").format(table_ident(target))).fetchone() is not None


def add_primary_key(conn: psycopg.Connection[Any], target: tuple[str, str], columns: list[str]) -> None:
    """Build the primary key after the bulk load (one index build instead of one insert per row)."""
    conn.execute(sql.SQL("ALTER TABLE {} ADD PRIMARY KEY ({})").format(
        table_ident(target), sql.SQL(", ").join(sql.Identifier(c) for c in columns)))


def has_primary_key(conn: psycopg.Connection[Any], target: tuple[str, str]) -> bool:
    row = conn.execute("SELECT 1 FROM pg_catalog.pg_constraint WHERE conrelid = %s::regclass AND contype = 'p'",
                       (sql.Identifier(*target).as_string(conn),)).fetchone()
    return row is not None


def has_rows_in_range(conn: psycopg.Connection[Any], target: tuple[str, str], bounds: Bounds,
                      columns: list[Column]) -> bool:
    """Does the target hold a row of this key range (chunk_predicate: the bounds cast to the column's own
    type, so its index is used)? An index probe.

    Ordered by the key so that the planner walks the key's index: an `EXISTS` over a range it expects to
    hold many rows is planned as a sequential scan that stops at the first match, and a target loaded in key
    order keeps the range's rows behind every row before it, so each chunk's probe read the table up to its
    own range (half the table on average, per chunk)."""
    selected = chunk_predicate(bounds, columns)
    assert selected is not None and bounds.column is not None, "a key range, not a hash class"
    where, params = selected
    column = next(c for c in columns if c.name == bounds.column)
    row = conn.execute(sql.SQL("SELECT 1 FROM {} WHERE {} ORDER BY {} LIMIT 1").format(
        table_ident(target), where, sql.Identifier(target_column_name(column.name))), params).fetchone()
    return row is not None


def chunk_predicate(bounds: Bounds, columns: list[Column]) -> tuple[sql.Composable, list[Any]] | None:
    """The chunk's rows in the target, or None when PostgreSQL cannot select them (hash chunks)."""
    if bounds.kind == "all":
        return sql.SQL("TRUE"), []
    if bounds.kind == "hash" or bounds.column is None:
        return None
    column = next(c for c in columns if c.name == bounds.column)
    name = sql.Identifier(target_column_name(column.name))
    if bounds.kind == "null":
        return sql.SQL("{} IS NULL").format(name), []
    instant = sql.SQL("({} AT TIME ZONE 'UTC')").format(name) if bounds.utc else name
    key = {"date": sql.SQL("({})::date").format(instant),
           "hour": sql.SQL("date_trunc('hour', {})").format(instant),
           "string": _code_point_ordered(name)}.get(bounds.key_kind or "", name)
    cast = {"date": "date", "hour": "timestamp", "string": "text"}.get(bounds.key_kind or "", column.pg_type)
    parts: list[sql.Composable] = [sql.SQL("{} IS NOT NULL").format(name)]
    params: list[Any] = []
    for value, operator in ((bounds.lo, ">="), (bounds.hi, "<")):
        if value is not None:
            parts.append(sql.SQL("{} {} %s::{}").format(key, sql.SQL(operator), sql.SQL(cast)))
            params.append(value)
    return sql.SQL(" AND ").join(parts), params


def _code_point_ordered(name: sql.Composable) -> sql.Composable:
    """A string key as Snowflake orders it (code points, no collation): the text itself (a citext value compared as
    its text), in the "C" collation, whose byte order of UTF-8 is code point order. The database's
    own collation (en_US.UTF-8 on RDS and Aurora) orders case, accents and punctuation otherwise, so a chunk's
    key range would select other rows in PostgreSQL than it read in Snowflake. The key's index (in the
    column's collation) cannot serve this comparison: repairing a chunk scans the table."""
    return sql.SQL('({})::text COLLATE "C"').format(name)


def unique_keys(conn: psycopg.Connection[Any], target: tuple[str, str]) -> list[tuple[bool, tuple[str, ...]]]:
    """(is primary key, columns) of every valid, non-partial unique index on plain columns, primary key first:
    the keys ON CONFLICT can use."""
    rows = conn.execute(
        "SELECT i.indisprimary, array_agg(a.attname ORDER BY k.ord) FROM pg_catalog.pg_index i "
        "CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord) "
        "JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum "
        "WHERE i.indrelid = %s::regclass AND i.indisunique AND i.indisvalid AND i.indpred IS NULL "
        "AND i.indexprs IS NULL AND k.ord <= i.indnkeyatts "
        "GROUP BY i.indexrelid, i.indisprimary ORDER BY i.indisprimary DESC, i.indexrelid",
        (sql.Identifier(*target).as_string(conn),),
    ).fetchall()
    return [(bool(r[0]), tuple(r[1])) for r in rows]


def analyze(conn: psycopg.Connection[Any], target: tuple[str, str]) -> None:
    conn.execute(sql.SQL("ANALYZE {}").format(table_ident(target)))


# the share of a table's rows a keyed load must have written for the engine to renew its statistics at once;
# below it autovacuum does so in the background (autovacuum_analyze_scale_factor: after 10% of the rows changed)
ANALYZE_SHARE = 0.5


def worth_analyzing(conn: psycopg.Connection[Any], target: tuple[str, str], rows_written: int) -> bool:
    """Would ANALYZE after writing `rows_written` rows change the planner's view: a table never analyzed, or
    one whose estimated size the load changed by at least ANALYZE_SHARE."""
    row = conn.execute("SELECT reltuples FROM pg_catalog.pg_class WHERE oid = %s::regclass",
                       (table_ident(target).as_string(conn),)).fetchone()
    estimated = float(row[0]) if row else -1.0
    return estimated <= 0 or rows_written >= ANALYZE_SHARE * estimated


def truncate(conn: psycopg.Connection[Any], target: tuple[str, str]) -> None:
    conn.execute(sql.SQL("TRUNCATE TABLE {}").format(table_ident(target)))


def copy_batches(
    conn: psycopg.Connection[Any],
    target: tuple[str, str],
    wire: Wire | list[Column],
    batches: Iterable[pa.RecordBatch],
) -> tuple[int, int]:
    """COPY the batches into the target inside the caller's transaction. Returns (rows, bytes).

    Straight into the table, unless a column has no binary encoding: then through a staging table."""
    wire = wire if isinstance(wire, Wire) else Wire(wire)
    if not any(c.via_text for c in wire.columns):
        return copy_into(conn, table_ident(target), wire, batches)
    stage = create_stage(conn, target, wire.columns)
    rows, written = copy_into(conn, stage, wire, batches)
    insert_from_stage(conn, target, wire.columns, stage)
    return rows, written


def copy_into(conn: psycopg.Connection[Any], destination: sql.Composable, wire: Wire,
              batches: Iterable[pa.RecordBatch],
              watch: Callable[[pa.RecordBatch], None] | None = None) -> tuple[int, int]:
    """Binary COPY of the batches, normalised to the wire, into `destination` (a table or a stage); `watch` sees
    each batch as it is written (normalised). Returns (rows, bytes)."""
    encoder = wire.encoder()
    statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
        destination, sql.SQL(", ").join(sql.Identifier(f.name) for f in wire.schema)
    )
    rows = written = 0
    with conn.cursor() as cur, cur.copy(statement) as copy:
        copy.write(encoder.write_header())
        for batch in batches:
            if batch.num_rows == 0:
                continue
            normalized = wire.normalize(batch)
            if watch is not None:
                watch(normalized)
            payload = encoder.write_batch(normalized)
            del normalized
            copy.write(payload)
            rows += batch.num_rows
            written += len(payload)
            del batch, payload  # both released before the next batch is read, not after
        copy.write(encoder.finish())
    return rows, written


STAGE = sql.Identifier("migration_stage")


def create_stage(conn: psycopg.Connection[Any], target: tuple[str, str], columns: list[Column]) -> sql.Composable:
    """A TEMP table shaped like the target's written columns (those without a binary encoding as text). It
    lives for the chunk's transaction only (ON COMMIT DROP), so a crash or a timeout cannot orphan it."""
    names = target_column_names(columns)
    select = sql.SQL(", ").join(
        sql.SQL("{}::text AS {}").format(sql.Identifier(n), sql.Identifier(n)) if c.via_text else sql.Identifier(n)
        for n, c in zip(names, columns, strict=True))
    conn.execute(sql.SQL("CREATE TEMP TABLE {} ON COMMIT DROP AS SELECT {} FROM {} LIMIT 0").format(
        STAGE, select, table_ident(target)))
    return STAGE


def insert_from_stage(conn: psycopg.Connection[Any], target: tuple[str, str], columns: list[Column],
                      stage: sql.Composable, key: tuple[str, ...] = (), update: bool = False,
                      skip_equal: bool = True) -> tuple[int, int]:
    """Move the stage into the target. Without `key`: plain INSERT. With it: rows whose key exists are
    skipped (ON CONFLICT DO NOTHING) or, with `update`, updated only where a value differs (DO UPDATE ...
    WHERE ... IS DISTINCT FROM), so applying the same chunk twice changes nothing; with `skip_equal` too,
    rows equal to the target's are left out first. Returns (inserted, updated)."""
    names = target_column_names(columns)
    select = sql.SQL(", ").join(
        sql.SQL("{}::{}").format(sql.Identifier(n), sql.SQL(c.pg_type)) if c.via_text else sql.Identifier(n)
        for n, c in zip(names, columns, strict=True))
    insert = sql.SQL("INSERT INTO {} AS t ({}) SELECT {} FROM {}").format(
        table_ident(target), sql.SQL(", ").join(sql.Identifier(n) for n in names), select, stage)
    if not key:
        cur = conn.execute(insert)
        return cur.rowcount, 0
    changing = [(n, c) for n, c in zip(names, columns, strict=True) if n not in key]
    if update and changing:
        by_name = dict(zip(names, columns, strict=True))
        if skip_equal and all(k in by_name for k in key):
            keyed = [(k, by_name[k]) for k in key]
            insert = sql.SQL("{} AS s WHERE {} IS NOT TRUE").format(insert, _equal_in_target(target, keyed, changing))
        conflict = sql.SQL(" ON CONFLICT ({}) DO UPDATE SET {} WHERE ({}) IS DISTINCT FROM ({})").format(
            sql.SQL(", ").join(sql.Identifier(k) for k in key),
            sql.SQL(", ").join(sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(n)) for n, _ in changing),
            _compared("t", changing), _compared("EXCLUDED", changing))
    else:
        conflict = sql.SQL(" ON CONFLICT ({}) DO NOTHING").format(sql.SQL(", ").join(sql.Identifier(k) for k in key))
    row = conn.execute(sql.SQL(
        "WITH written AS ({}{} RETURNING (xmax = 0) AS inserted) "
        "SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) FROM written"
    ).format(insert, conflict)).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def stage_key_problems(conn: psycopg.Connection[Any], stage: sql.Composable, key: tuple[str, ...],
                       casts: dict[str, str] | None = None) -> tuple[int, int, list[tuple[tuple[Any, ...], int]]]:
    """(staged rows with a NULL in `key`, rows whose key another staged row has (each beyond the first), a few of
    those keys with their counts). `casts`: key columns staged as text, with the type the upsert casts them to,
    compared as that type (two texts of one uuid are one key)."""
    casts = casts or {}
    keyed = [sql.SQL("{}::{}").format(sql.Identifier(k), sql.SQL(casts[k])) if k in casts else sql.Identifier(k)
             for k in key]
    cols = sql.SQL(", ").join(keyed)
    any_null = sql.SQL(" OR ").join(sql.SQL("{} IS NULL").format(k) for k in keyed)
    grouped = sql.SQL("SELECT {}, count(*) AS n, bool_or({}) AS has_null FROM {} GROUP BY {}").format(
        cols, any_null, stage, cols)
    row = conn.execute(sql.SQL("SELECT coalesce(sum(n) FILTER (WHERE has_null), 0), "
                               "coalesce(sum(n - 1) FILTER (WHERE NOT has_null AND n > 1), 0) FROM ({}) g").format(grouped)
                       ).fetchone()
    assert row is not None
    examples: list[tuple[tuple[Any, ...], int]] = []
    if row[1]:
        found = conn.execute(sql.SQL("SELECT * FROM ({}) g WHERE NOT has_null AND n > 1 ORDER BY n DESC LIMIT 5")
                             .format(grouped)).fetchall()
        examples = [(tuple(r[:len(key)]), int(r[len(key)])) for r in found]
    return int(row[0]), int(row[1]), examples


def _equal_in_target(target: tuple[str, str], key: list[tuple[str, Column]],
                     changing: list[tuple[str, Column]]) -> sql.Composable:
    """True when the target holds the staged row `s` (by key) with equal values, NULL when it has no such key.

    ON CONFLICT DO UPDATE would lock (and WAL-log) each equal row before its WHERE finds nothing to change;
    leaving them out first spares that. A scalar subquery, not a join, so that PostgreSQL probes the key's
    index once per staged row whatever its estimates of the stage."""
    return sql.SQL("(SELECT ({}) IS NOT DISTINCT FROM ({}) FROM {} AS t WHERE {})").format(
        _compared("t", changing), _compared("s", changing, staged=True), table_ident(target),
        sql.SQL(" AND ").join(sql.SQL("t.{} = {}").format(sql.Identifier(n), _value("s", n, c, staged=True))
                              for n, c in key))


def _value(alias: str, name: str, column: Column, staged: bool = False) -> sql.Composable:
    """alias.name; `staged`: as the target holds it (a column staged as text cast back to its type)."""
    value = sql.SQL(alias + ".{}").format(sql.Identifier(name))
    return sql.SQL("{}::{}").format(value, sql.SQL(column.pg_type)) if staged and column.via_text else value


def _compared(alias: str, columns: list[tuple[str, Column]], staged: bool = False) -> sql.Composable:
    """The columns' values under `alias` as a row that IS [NOT] DISTINCT FROM can compare."""
    return sql.SQL(", ").join(_comparable(_value(alias, n, c, staged), c) for n, c in columns)


# Types whose equality is identity: two values are equal only when they are stored the same.
_IDENTITY_EQUALITY = {
    "smallint", "integer", "bigint", "boolean", "date", "timestamp", "timestamp without time zone", "timestamptz",
    "timestamp with time zone", "time", "time without time zone", "uuid", "bytea", "inet", "cidr", "macaddr",
    "macaddr8", "money", "oid",
}
_STRINGS = {"text", "character varying", "varchar", "character", "char", "bpchar", "name"}
_BINARY_FORM = {"real": "float4send", "double precision": "float8send", "float4": "float4send",
                "float8": "float8send", "numeric": "numeric_send"}


def _comparable(value: sql.Composable, column: Column) -> sql.Composable:
    """The value as the target stores it, so that a merge sees every change: the column's own equality would
    call a case-only change of a citext (or a nondeterministic collation) equal, and so -0.0 and 0.0, 'NaN'
    payloads, 1.0 and 1.00 (numeric without a scale, jsonb numbers), '1 day' and '24 hours' (interval).

    Identity types compare as they are; strings byte for byte (COLLATE "C"); floats and unscaled numerics by
    their binary form; anything else (jsonb, json, citext, interval, arrays, ...) by its text form."""
    base = column.pg_type.split("(")[0].strip().lower()
    if base in _IDENTITY_EQUALITY or (base == "numeric" and "(" in column.pg_type and "," in column.pg_type):
        return value
    if base in _STRINGS:
        return sql.SQL('{} COLLATE "C"').format(value)
    if base in _BINARY_FORM and not column.pg_type.endswith("]"):
        return sql.SQL("{}({})").format(sql.SQL(_BINARY_FORM[base]), value)
    return sql.SQL('{}::text COLLATE "C"').format(value)
