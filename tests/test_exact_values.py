"""A merge and a verification see every change the target can store, not only what the column's own equality sees;
a value that an existing target column cannot hold whole fails its chunk instead of losing part of itself."""

from __future__ import annotations

from lib import ledger as status
from lib.check.verify import verify_run
from lib.run.orchestrator import run

NUMERIC = {"chunking_columns": ["ID"], "chunking_column_types": ["numeric"]}


def test_a_merge_applies_changes_the_columns_own_equality_calls_equal(env) -> None:
    env.sf_execute("CREATE TABLE ITEMS (ID NUMBER(18,0) PRIMARY KEY, NAME VARCHAR, W FLOAT, DOC VARIANT, AMOUNT NUMBER(10,1))",
                   "INSERT INTO ITEMS SELECT SEQ8(), 'name ' || SEQ8(), 0.0, PARSE_JSON('{\"a\": 1.0}'), 1.0 "
                   "FROM TABLE(GENERATOR(ROWCOUNT => 100))")
    with env.pg() as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS citext")
        conn.execute("CREATE TABLE public.items (id bigint PRIMARY KEY, name citext, w double precision, doc jsonb, "
                     "amount numeric)")
        conn.execute("INSERT INTO public.items SELECT g, 'NAME ' || g, -0.0, '{\"a\": 1.00}', 1.00 "
                     "FROM generate_series(0, 99) g")
    config = env.config([{"source": "ITEMS", "insert_only_mode": False, **NUMERIC}], chunk_rows=1000)

    result = run(config)

    assert result.status == "completed", result.tables
    assert env.pg_rows("SELECT DISTINCT left(name::text, 5), w::text, doc::text, amount::text FROM public.items") == [
        ("name ", "0", '{"a": 1.0}', "1.0")]
    assert result.tables[0]["rows_updated"] == 100


def test_verify_compares_a_citext_column_by_its_text(env) -> None:
    env.sf_execute("CREATE TABLE ITEMS (ID NUMBER(18,0) PRIMARY KEY, NAME VARCHAR)",
                   "INSERT INTO ITEMS SELECT SEQ8(), 'name ' || SEQ8() FROM TABLE(GENERATOR(ROWCOUNT => 100))")
    with env.pg() as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS citext")
        conn.execute("CREATE TABLE public.items (id bigint PRIMARY KEY, name citext)")
    config = env.config([{"source": "ITEMS", **NUMERIC}], chunk_rows=1000)
    assert run(config).status == "completed"
    assert all(r.clean for r in verify_run(config, 1))
    with env.pg() as conn:
        conn.execute("UPDATE public.items SET name = upper(name) WHERE id = 7")
    results = verify_run(config, 1)
    assert [r.differing for r in results] == [[0]], results
    assert not results[0].nulls_only


def test_a_timestamp_with_a_time_of_day_into_a_date_column_fails_its_chunk_by_name(env) -> None:
    env.sf_execute("CREATE TABLE EVENTS (ID NUMBER(18,0) PRIMARY KEY, TS TIMESTAMP_NTZ)",
                   "INSERT INTO EVENTS SELECT SEQ8(), DATEADD(day, SEQ8(), '2024-01-01'::TIMESTAMP_NTZ) "
                   "FROM TABLE(GENERATOR(ROWCOUNT => 50))",
                   "INSERT INTO EVENTS VALUES (50, '2024-06-01 13:45:00')")
    with env.pg() as conn:
        conn.execute("CREATE TABLE public.events (id bigint PRIMARY KEY, ts date)")

    result = run(env.config([{"source": "EVENTS", **NUMERIC}], chunk_rows=1000))

    assert result.status == "completed_with_errors"
    error = env.pg_value(f"SELECT error FROM {status.SCHEMA}.migration_chunk_status WHERE status = 'failed'")
    assert "column TS (date): the value 2024-06-01 13:45:00 in the row with ID = 50 has a time of day" in error
    assert env.pg_value("SELECT count(*) FROM public.events") == 0
    # midnight values fit: the same table without the odd row copies whole
    env.sf_execute("DELETE FROM EVENTS WHERE ID = 50")
    assert run(env.config([{"source": "EVENTS", **NUMERIC}], chunk_rows=1000)).status == "completed"
    assert env.pg_value("SELECT count(*) FROM public.events") == 50
