"""Strategy choice and the date/hash strategies, end to end through the real connector."""

from __future__ import annotations

import pytest

from lib.plan.strategy import choose_strategy
from lib.run.orchestrator import run
from lib.typemap import map_column
from tests.helpers import cli


def _columns(*spec: tuple[str, str, int | None, int | None]):
    return [map_column(name, t, p, s) for name, t, p, s in spec]


@pytest.mark.parametrize(("columns", "pk", "expected"), [
    (_columns(("CODE", "TEXT", None, None), ("N", "NUMBER", 18, 0)), ["N"], ("numeric", "N", "primary key")),
    (_columns(("DAY", "DATE", None, None), ("V", "TEXT", None, None)), ["DAY"], ("date", "DAY", "primary key")),
    (_columns(("NAME", "TEXT", None, None), ("CUSTOMER_ID", "NUMBER", 9, 0)), [], ("numeric", "CUSTOMER_ID", "ID column")),
    (_columns(("NAME", "TEXT", None, None), ("AT", "TIMESTAMP_NTZ", None, None)), [], ("date", "AT", "date column")),
    (_columns(("NAME", "TEXT", None, None), ("AMOUNT", "NUMBER", 10, 2)), [], ("hash", None, "hash of all columns")),
    (_columns(("CODE", "TEXT", None, None), ("N", "NUMBER", 18, 0)), ["CODE"], ("string", "CODE", "primary key")),
    ([map_column("CODE", "TEXT", collation="en-ci"), map_column("AT", "DATE")], ["CODE"], ("date", "AT", "date column")),
])
def test_strategy_is_chosen_from_the_columns_and_says_why(columns, pk, expected) -> None:
    choice = choose_strategy(columns, pk)
    assert (choice.strategy, choice.column) == expected[:2]
    assert expected[2] in choice.reason


def test_table_without_any_key_is_split_by_hash_and_copied_completely(env) -> None:
    env.sf_execute(
        "CREATE TABLE NOKEY AS SELECT 'name ' || MOD(SEQ8(), 977) AS NAME, (SEQ8() / 7.0)::NUMBER(12,2) AS AMOUNT "
        "FROM TABLE(GENERATOR(ROWCOUNT => 5000))"
    )
    result = run(env.config([{"source": "NOKEY"}], chunk_rows=1000))
    table = result.tables[0]
    assert result.status == "completed"
    assert table["strategy"] == "hash" and table["chunks"] == 5
    assert table["expected_rows"] == table["target_count"] == 5000
    assert env.pg_value("SELECT count(*) FROM (SELECT DISTINCT name, amount FROM public.nokey) d") == \
        env.sf_rows("SELECT COUNT(*) FROM (SELECT DISTINCT NAME, AMOUNT FROM NOKEY)")[0][0]


def test_primary_key_is_found_and_used(env) -> None:
    env.sf_execute("CREATE TABLE WITHPK (K NUMBER(18,0) PRIMARY KEY, NAME VARCHAR)",
                   "INSERT INTO WITHPK SELECT SEQ8() * 5, 'n' FROM TABLE(GENERATOR(ROWCOUNT => 3000))")
    result = run(env.config([{"source": "WITHPK"}], chunk_rows=1000))
    assert result.status == "completed"
    assert result.tables[0]["strategy"] == "numeric" and result.tables[0]["chunks"] >= 3


def test_heavy_day_is_split_by_hour_and_every_row_arrives(env) -> None:
    env.sf_execute(
        "CREATE TABLE EV AS SELECT SEQ8()::NUMBER(18,0) AS ID, "
        "CASE WHEN SEQ8() < 6000 THEN DATEADD(second, SEQ8() * 14, '2024-06-15'::TIMESTAMP_NTZ) "
        "     WHEN MOD(SEQ8(), 500) = 0 THEN NULL "
        "     ELSE DATEADD(day, MOD(SEQ8(), 60), '2024-04-01'::TIMESTAMP_NTZ) END AS TS "
        "FROM TABLE(GENERATOR(ROWCOUNT => 9000))"
    )
    path = env.write_config([{"source": "EV", "chunking_columns": ["TS"], "chunking_column_types": ["date"]}],
                            defaults={"chunk_rows": 1000})
    plan = cli(env.env, path, "plan")
    assert plan.returncode == 0, plan.stderr
    assert "2024-06-15 holds 6000 rows: split into" in plan.stdout
    assert "DATE_TRUNC('HOUR', TS) >= 2024-06-15T00:00:00" in plan.stdout
    assert "2 planning queries" in plan.stdout

    result = run(env.config([{"source": "EV", "chunking_columns": ["TS"], "chunking_column_types": ["date"]}],
                            chunk_rows=1000))
    table = result.tables[0]
    assert result.status == "completed"
    assert table["expected_rows"] == table["target_count"] == 9000
    sizes = [r[0] for r in env.pg_rows("SELECT expected_rows FROM migration_status.migration_chunk_status "
                                       "WHERE bounds->>'key_kind' = 'hour'")]
    assert sum(sizes) == 6000 and max(sizes) <= 1000


def test_primary_key_of_a_created_table_is_built_after_the_load(env) -> None:
    env.sf_execute("CREATE TABLE KEYED (K NUMBER(18,0) PRIMARY KEY, NAME VARCHAR)",
                   "INSERT INTO KEYED SELECT SEQ8(), 'n' FROM TABLE(GENERATOR(ROWCOUNT => 2000))",
                   "CREATE TABLE UNKEYED_TOO (K NUMBER(18,0) PRIMARY KEY, NAME VARCHAR)",
                   "INSERT INTO UNKEYED_TOO SELECT SEQ8(), 'n' FROM TABLE(GENERATOR(ROWCOUNT => 20))")
    result = run(env.config([{"source": "KEYED"}, {"source": "UNKEYED_TOO", "build_primary_key": False}], chunk_rows=500))
    assert result.status == "completed"
    keys = dict(env.pg_rows("SELECT conrelid::regclass::text, pg_get_constraintdef(oid) FROM pg_constraint "
                            "WHERE contype = 'p' AND connamespace = 'public'::regnamespace"))
    assert keys == {"keyed": "PRIMARY KEY (k)"}
    assert env.pg_value("SELECT primary_key_built_at IS NOT NULL FROM migration_status.migration_table_status "
                        "WHERE table_name LIKE '%KEYED'")
    assert env.pg_value("SELECT last_analyze IS NOT NULL OR last_autoanalyze IS NOT NULL "
                        "FROM pg_stat_user_tables WHERE relname = 'keyed'")


def test_timestamp_is_accepted_as_a_chunking_type_and_chunks_like_date(env) -> None:
    """Configs written for the system this replaces spell the date strategy `timestamp`."""
    env.sf_execute("CREATE TABLE TS_EV AS SELECT SEQ8()::NUMBER(18,0) AS ID, "
                   "DATEADD(minute, SEQ8() * 7, '2024-06-15'::TIMESTAMP_NTZ) AS TS FROM TABLE(GENERATOR(ROWCOUNT => 600))")
    path = env.write_config([{"source": "TS_EV", "chunking_columns": ["TS"], "chunking_column_types": ["timestamp"]}],
                            defaults={"chunk_rows": 200})
    plan = cli(env.env, path, "plan")
    assert plan.returncode == 0, plan.stderr
    assert "date (chunking_columns=TS (timestamp) from the config: rows per day" in plan.stdout
    assert "2024-06-15 holds" in plan.stdout and "split into" in plan.stdout  # a heavy day split by hour, as date does
