"""Every mapped Snowflake type arrives in PostgreSQL value for value, NULLs included."""

from __future__ import annotations

import json
import math
from datetime import datetime
from decimal import Decimal
from typing import Any

from lib.run.orchestrator import run
from scripts.demo_data import ALL_TYPES_DDL, TRICKY_STRINGS, all_types_insert
from tests.conftest import ROOT

COLUMNS = ["ID", "SMALL_N", "INT_N", "BIG_N", "WIDE_N", "AMOUNT", "RATIO", "NAME", "CODE", "FLAG", "DAY",
           "CREATED", "CREATED_TZ", "DOC", "TAGS", "ATTRS", "BLOB", "mixedCase Col"]
JSON_COLUMNS = {"DOC", "TAGS", "ATTRS"}

EXTREMES = """
INSERT INTO "AllTypes" SELECT -1, 9999, 999999999, 999999999999999999, '999999999999999999999999999999'::NUMBER(30,0),
    -9999999999.99, 1e308, 'tab\\tnew\\nline "q" ''s'' back\\\\slash ✓ 漢字 🚀', 'ünïcödé✓✓✓', FALSE, '9999-12-31'::DATE,
    '2024-02-29 23:59:59.123456'::TIMESTAMP_NTZ, '2024-03-10 02:30:00.5+05:30'::TIMESTAMP_TZ,
    PARSE_JSON('{"a": "tab\\\\t", "u": "✓", "n": null, "deep": [[1], {"k": false}]}'), ARRAY_CONSTRUCT(), OBJECT_CONSTRUCT(),
    TO_BINARY('00FF10', 'HEX'), ''
"""
ALL_NULL = 'INSERT INTO "AllTypes" (ID) SELECT -2'
MINIMA = """
INSERT INTO "AllTypes" SELECT -3, -9999, -999999999, -999999999999999999, '-999999999999999999999999999999'::NUMBER(30,0),
    0.01, -0.0, '', '', TRUE, '1900-01-01'::DATE, '1970-01-01 00:00:00'::TIMESTAMP_NTZ,
    '1999-12-31 23:59:59+00:00'::TIMESTAMP_TZ, PARSE_JSON('"just a string"'), ARRAY_CONSTRUCT(1), OBJECT_CONSTRUCT('k', 'v'),
    TO_BINARY('', 'HEX'), ' '
"""


def _normalise(column: str, value: Any, from_snowflake: bool) -> Any:
    if value is None:
        return None
    if column in JSON_COLUMNS:
        # the connector hands VARIANT over as JSON text; psycopg has already parsed jsonb
        return json.loads(value) if from_snowflake else value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if hasattr(value, "tzinfo") and getattr(value, "tzinfo", None) is not None:
        return value.timestamp()
    return value


def test_every_mapped_type_round_trips_value_for_value(env) -> None:
    env.sf_execute(ALL_TYPES_DDL, all_types_insert(3000), EXTREMES, ALL_NULL, MINIMA)
    config = env.config([{
        "source": '"AllTypes"', "target": 'public."AllTypes"',
        "chunking_columns": ["ID"], "chunking_column_types": ["numeric"],
    }], defaults={"chunk_rows": 700, "batch_size": 256})

    result = run(config)

    assert result.status == "completed", result.tables
    select_sf = ", ".join(f'"{c}"' for c in COLUMNS)
    source = env.sf_rows(f'SELECT {select_sf} FROM "AllTypes" ORDER BY ID')
    pg_columns = [c.lower() if c == c.upper() else c for c in COLUMNS]
    select_pg = ", ".join(f'"{c}"' for c in pg_columns)
    target = env.pg_rows(f'SELECT {select_pg} FROM public."AllTypes" ORDER BY id')
    assert len(source) == len(target) == 3003
    for src_row, dst_row in zip(source, target, strict=True):
        for column, a, b in zip(COLUMNS, src_row, dst_row, strict=True):
            assert _normalise(column, a, True) == _normalise(column, b, False), (column, src_row[0], a, b)
    # NULLs stay NULL in every column (the all-NULL row), not 1970-01-01 or empty strings
    assert env.pg_rows('SELECT * FROM public."AllTypes" WHERE id = -2')[0][1:] == (None,) * (len(COLUMNS) - 1)
    names = {r[0] for r in env.pg_rows('SELECT "NAME" FROM (SELECT name AS "NAME" FROM public."AllTypes") t')}
    assert set(TRICKY_STRINGS) <= names


def test_target_types_follow_the_type_map(env) -> None:
    env.sf_execute(ALL_TYPES_DDL, all_types_insert(10))
    run(env.config([{"source": '"AllTypes"', "target": 'public."AllTypes"'}]))
    types = dict(env.pg_rows(
        "SELECT column_name, data_type || coalesce('(' || character_maximum_length || ')', '') "
        "|| coalesce(CASE WHEN data_type = 'numeric' THEN '(' || numeric_precision || ',' || numeric_scale || ')' END, '') "
        "FROM information_schema.columns WHERE table_name = 'AllTypes'"
    ))
    assert types == {
        "id": "numeric(38,0)", "small_n": "smallint", "int_n": "integer", "big_n": "bigint",
        "wide_n": "numeric(30,0)", "amount": "numeric(12,2)", "ratio": "double precision", "name": "text",
        "code": "character varying(10)", "flag": "boolean", "day": "date",
        "created": "timestamp without time zone", "created_tz": "timestamp with time zone",
        "doc": "jsonb", "tags": "jsonb", "attrs": "jsonb", "blob": "bytea", "mixedCase Col": "text",
    }


def test_a_target_type_without_binary_encoding_falls_back_per_column(env) -> None:
    env.sf_execute("CREATE TABLE ODD (ID NUMBER(18,0), U VARCHAR, ADDR VARCHAR, SPAN VARCHAR, N NUMBER(9,0))",
                   "INSERT INTO ODD VALUES (1, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '10.1.2.3', '1 day 02:00:00', 7), "
                   "(2, NULL, '::1', '3 hours', NULL)")
    with env.pg() as conn:
        conn.execute("CREATE TABLE public.odd (id bigint, u uuid, addr inet, span interval, n integer)")
    result = run(env.config([{"source": "ODD"}]))
    assert result.status == "completed", result.tables
    rows = env.pg_rows("SELECT id, u::text, host(addr), span::text, n FROM public.odd ORDER BY id")
    assert rows == [(1, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "10.1.2.3", "1 day 02:00:00", 7), (2, None, "::1", "03:00:00", None)]
    notes = env.pg_value("SELECT plan_notes::text FROM migration_status.migration_table_status")
    assert "column U (uuid) has no binary Arrow encoding" in notes and "column N" not in notes
    assert env.pg_value("SELECT to_regclass('pg_temp.migration_stage')") is None  # dropped at commit


def test_a_merge_compares_fallback_columns_as_their_target_type(env) -> None:
    """uuid and inet travel as text; an upper-case uuid equals its lower-case form, so it is not rewritten;
    a uuid key is matched as a uuid."""
    env.sf_execute("CREATE TABLE ODD3 (ID NUMBER(18,0), U VARCHAR, ADDR VARCHAR, K VARCHAR)",
                   "INSERT INTO ODD3 VALUES (1, 'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11', '10.1.2.3', "
                   "'11111111-1111-1111-1111-111111111111'), (2, NULL, '::1', '22222222-2222-2222-2222-222222222222')")
    with env.pg() as conn:
        conn.execute("CREATE TABLE public.odd3 (id bigint, u uuid, addr inet, k uuid PRIMARY KEY)")
    tables = [{"source": "ODD3", "insert_only_mode": False}]
    assert run(env.config(tables)).status == "completed"
    before = dict(env.pg_rows("SELECT id, xmin::text FROM public.odd3"))
    env.sf_execute("UPDATE ODD3 SET ADDR = '10.1.2.4' WHERE ID = 2")

    merged = run(env.config(tables))

    assert merged.status == "completed", merged.tables
    assert env.pg_rows("SELECT id, u::text, host(addr) FROM public.odd3 ORDER BY id") == [
        (1, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "10.1.2.3"), (2, None, "10.1.2.4")]
    after = dict(env.pg_rows("SELECT id, xmin::text FROM public.odd3"))
    assert (after[1] == before[1], after[2] == before[2]) == (True, False)


def test_a_value_that_fails_the_fallback_cast_fails_only_its_chunk(env) -> None:
    env.sf_execute("CREATE TABLE ODD2 (ID NUMBER(18,0), U VARCHAR)",
                   "INSERT INTO ODD2 SELECT SEQ8(), IFF(SEQ8() = 5, 'not-a-uuid', UUID_STRING()) FROM TABLE(GENERATOR(ROWCOUNT => 40))")
    with env.pg() as conn:
        conn.execute("CREATE TABLE public.odd2 (id bigint, u uuid)")
    result = run(env.config([{"source": "ODD2", "chunking_columns": ["ID"], "chunking_column_types": ["numeric"]}],
                            chunk_rows=10))
    assert result.status == "completed_with_errors"
    error = env.pg_value("SELECT error FROM migration_status.migration_chunk_status WHERE status = 'failed'")
    assert "ODD2" in error and "value does not fit the target column type" in error
    assert env.pg_value("SELECT count(*) FROM public.odd2") == 30


def test_timestamp_precision_and_offsets_behave_as_the_readme_says(env) -> None:
    """timestamptz keeps the instant, not the offset; nanoseconds are truncated to microseconds."""
    env.sf_execute("CREATE TABLE TS (ID NUMBER(9,0), NANOS TIMESTAMP_NTZ(9), ZONED TIMESTAMP_TZ(9))",
                   "INSERT INTO TS VALUES (1, '2024-01-02 03:04:05.123456789', '2024-01-02 03:04:05.987654321+05:00'::TIMESTAMP_TZ)")
    assert run(env.config([{"source": "TS"}])).status == "completed"
    nanos, zoned = env.pg_rows("SELECT nanos::text, zoned AT TIME ZONE 'UTC' FROM public.ts")[0]
    assert nanos == "2024-01-02 03:04:05.123456"
    assert str(zoned) == "2024-01-01 22:04:05.987654"
    type_map = " ".join((ROOT / "README.md").read_text().split("## Configuration reference")[1].split())
    assert "keeps the instant, not the offset" in type_map
    assert "nanoseconds are truncated to microseconds" in type_map


EXTREME_DDL = """CREATE TABLE EXT (ID NUMBER(18,0), TS TIMESTAMP_NTZ(9), D DATE, TZ TIMESTAMP_TZ(9), LTZ TIMESTAMP_LTZ(9),
    T TIME(9), N NUMBER(38,10), F FLOAT, V VARIANT, B BINARY)"""
# (ID, column, Snowflake literal) scattered over several Arrow batches of one chunk; every other value is NULL
EXTREMES_BY_ID = [
    (5, "TS", "'0001-01-01 00:00:00'::TIMESTAMP_NTZ(9)"), (2100, "TS", "'9999-12-31 23:59:59.999999'::TIMESTAMP_NTZ(9)"),
    (2200, "TS", "'1677-09-21 00:12:43.145224'::TIMESTAMP_NTZ(9)"), (4500, "TS", "'2262-04-11 23:47:16.854775'::TIMESTAMP_NTZ(9)"),
    (4600, "TS", "'2024-02-29 12:00:00.123456789'::TIMESTAMP_NTZ(9)"), (6, "D", "'0001-01-01'::DATE"),
    (4700, "D", "'9999-12-31'::DATE"), (7, "TZ", "'1000-06-15 12:00:00+00:00'::TIMESTAMP_TZ(9)"),
    (4800, "TZ", "'9999-12-30 23:59:59.999999+00:00'::TIMESTAMP_TZ(9)"), (8, "LTZ", "'2024-07-01 09:30:00.25'::TIMESTAMP_LTZ(9)"),
    (9, "T", "'23:59:59.999999999'::TIME(9)"), (4900, "T", "'00:00:00'::TIME(9)"),
    (10, "N", "'12345678901234567890123456.1234567891'::NUMBER(38,10)"),
    (5000, "N", "'-99999999999999999999999999.9999999999'::NUMBER(38,10)"),
    (11, "F", "'NaN'::FLOAT"), (12, "F", "'inf'::FLOAT"), (13, "F", "'-inf'::FLOAT"), (14, "F", "'-0.0'::FLOAT"),
    (5100, "F", "1.7976931348623157e308::FLOAT"), (5200, "F", "5e-324::FLOAT"),
    (15, "V", "PARSE_JSON('{\"big\": 18446744073709551616, \"neg\": -92233720368547758080, \"list\": [1, [2, {}]]}')"),
    (5300, "V", "PARSE_JSON('[9223372036854775808, 1e400]')"),
    (16, "B", "TO_BINARY(REPEAT('AB', 8388608), 'HEX')"),  # 8 MiB in one value, Snowflake's largest BINARY
]


def test_extreme_values_mixed_with_nulls_in_the_batches_of_one_chunk_arrive_exactly(env) -> None:
    """Dates far outside 1677-2262 beside NULLs made the connector's batches of one result differ in type
    (timestamp[us] beside timestamp[ns]) and failed the chunk on every attempt."""
    env.sf_execute(EXTREME_DDL, "INSERT INTO EXT (ID) SELECT SEQ8() FROM TABLE(GENERATOR(ROWCOUNT => 6000))",
                   *(f"UPDATE EXT SET {column} = {literal} WHERE ID = {row}" for row, column, literal in EXTREMES_BY_ID))
    result = run(env.config([{"source": "EXT", "chunking_columns": ["ID"], "chunking_column_types": ["numeric"]}],
                            chunk_rows=10_000, batch_size=1000))
    assert result.status == "completed", result.tables
    assert env.pg_value("SELECT max(rows_copied) FROM migration_status.migration_chunk_status") == 6000  # one chunk
    columns = ["TS", "D", "TZ", "LTZ", "T", "N", "F", "V", "B"]
    with env.sf() as conn, conn.cursor() as cur:
        cur.execute(f"SELECT ID, {', '.join(columns)} FROM EXT WHERE ID IN ({', '.join(str(r) for r, _, _ in EXTREMES_BY_ID)})")
        source = {int(r[0]): dict(zip(columns, r[1:], strict=True)) for r in cur.fetchall()}
    target = {r[0]: dict(zip(columns, r[1:], strict=True)) for r in env.pg_rows(
        "SELECT id, ts, d, tz, ltz, t, n, f, v, b FROM public.ext WHERE id = ANY(%s)", ([r for r, _, _ in EXTREMES_BY_ID],))}
    for row, column, literal in EXTREMES_BY_ID:
        want, got = source[row][column], target[row][column]
        if column == "F":
            same = (math.isnan(want) and math.isnan(got)) or (want == got and math.copysign(1, want) == math.copysign(1, got))
            assert same, (row, want, got)
        elif column == "V":
            assert json.loads(want, parse_float=Decimal) == got, (row, want, got)  # exact, 1e400 included
        elif column == "B":
            assert bytes(got) == bytes(want) and len(got) == 8 * 2**20, row
        elif column == "TS" and row == 4600:
            assert got == datetime(2024, 2, 29, 12, 0, 0, 123456), "nanoseconds are truncated to microseconds"
        elif column == "T" and row == 9:
            assert str(got) == "23:59:59.999999"
        else:
            assert got == want, (row, column, literal, want, got)
    assert env.pg_value("SELECT count(*) FROM public.ext WHERE ts IS NULL AND d IS NULL AND n IS NULL") == 6000 - 9
    assert env.pg_value("SELECT v::text FROM public.ext WHERE id = 15") == (
        '{"big": 18446744073709551616, "neg": -92233720368547758080, "list": [1, [2, {}]]}')


def test_nul_bytes_fail_their_chunk_by_name_unless_the_table_strips_or_replaces_them(env) -> None:
    from tests.helpers import cli

    env.sf_execute("CREATE TABLE NULS AS SELECT SEQ8()::NUMBER(18,0) AS ID, "
                   "IFF(SEQ8() IN (7, 1500), 'bad' || CHR(0) || 'value', 'fine ' || SEQ8()) AS NOTE "
                   "FROM TABLE(GENERATOR(ROWCOUNT => 2000))")
    table = {"source": "NULS", "chunking_columns": ["ID"], "chunking_column_types": ["numeric"]}
    failing = run(env.config([table], chunk_rows=1000))
    assert failing.status == "completed_with_errors"
    errors = [r[0] for r in env.pg_rows("SELECT error FROM migration_status.migration_chunk_status WHERE status = 'failed'")]
    assert len(errors) == 2 and all("column NOTE (text)" in e and "holds a NUL byte" in e for e in errors)
    assert any("row with ID = 7" in e for e in errors) and any("row with ID = 1500" in e for e in errors)

    path = env.write_config([{**table, "nul_bytes": "replace:?", "target": "nuls_fixed"}], defaults={"chunk_rows": 1000})
    fixed = cli(env.env, path)
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert env.pg_rows("SELECT note FROM public.nuls_fixed WHERE id IN (7, 1500)") == [("bad?value",)] * 2
    notes = env.pg_rows("SELECT notes::text, values_changed FROM migration_status.migration_chunk_status "
                        "WHERE run_id = 2 AND values_changed > 0 ORDER BY chunk_no")
    assert [n[1] for n in notes] == [1, 1] and "column NOTE had NUL bytes, replaced by '?'" in notes[0][0]
    shown = cli(env.env, path, "status").stdout
    assert "2 value(s) changed by nul_bytes" in shown
