"""Bad input fails only what it touches, with a message naming it; the rest of the run goes on."""

from __future__ import annotations

from lib import ledger as status
from lib.run.orchestrator import run
from tests.helpers import cli


def test_missing_source_table_fails_that_table_and_the_others_complete(env) -> None:
    env.sf_execute("CREATE TABLE PRESENT AS SELECT SEQ8()::NUMBER(18,0) AS ID FROM TABLE(GENERATOR(ROWCOUNT => 2000))")
    path = env.write_config([
        {"source": "NOT_THERE"},
        {"source": "PRESENT", "chunking_columns": ["ID"], "chunking_column_types": ["numeric"]},
    ], defaults={"chunk_rows": 500})

    result = cli(env.env, path)

    assert result.returncode == 1
    assert f"{env.sf_database}.PUBLIC.NOT_THERE does not exist or the configured role cannot see it" in result.stdout
    assert env.pg_value("SELECT count(*) FROM public.present") == 2000
    rows = dict(env.pg_rows(f"SELECT table_name, status FROM {status.SCHEMA}.migration_table_status"))
    assert rows == {f"{env.sf_database}.PUBLIC.NOT_THERE": "failed", f"{env.sf_database}.PUBLIC.PRESENT": "completed"}
    assert env.pg_rows(f"SELECT status, completed_tables, failed_tables FROM {status.SCHEMA}.migration_runs") == [
        ("completed_with_errors", 1, 1)]


def test_table_created_after_a_failed_run_is_copied_on_resume(env) -> None:
    tables = [{"source": "LATE"}]
    first = run(env.config(tables))
    assert first.status == "completed_with_errors"
    env.sf_execute("CREATE TABLE LATE AS SELECT SEQ8()::NUMBER(18,0) AS ID FROM TABLE(GENERATOR(ROWCOUNT => 30))")

    second = run(env.config(tables))

    assert second.mode == "resumed" and second.run_id == first.run_id and second.status == "completed"
    assert env.pg_value("SELECT count(*) FROM public.late") == 30


def test_source_filter_applies_to_planning_copying_and_reconciliation(env) -> None:
    env.sf_execute("CREATE TABLE F AS SELECT SEQ8()::NUMBER(18,0) AS ID FROM TABLE(GENERATOR(ROWCOUNT => 1000))")
    result = run(env.config([{"source": "F", "source_filter": "ID % 10 = 0",
                              "chunking_columns": ["ID"], "chunking_column_types": ["numeric"]}], chunk_rows=30))
    assert result.status == "completed"
    table = result.tables[0]
    assert table["expected_rows"] == table["source_count"] == table["target_count"] == 100
    assert env.pg_value("SELECT count(*) FROM public.f WHERE id % 10 <> 0") == 0


def test_rows_added_after_planning_are_copied_and_counts_reconcile(env) -> None:
    """Open-ended first/last ranges and a NULL chunk catch keys that did not exist at plan time."""
    from lib.run.orchestrator import start_run

    env.sf_execute("CREATE TABLE G (ID NUMBER(18,0), V VARCHAR)",
                   "INSERT INTO G SELECT SEQ8() + 100, 'x' FROM TABLE(GENERATOR(ROWCOUNT => 300))")
    config = env.config([{"source": "G", "chunking_columns": ["ID"], "chunking_column_types": ["numeric"]}], chunk_rows=100)
    start_run(config)
    env.sf_execute("INSERT INTO G VALUES (-5, 'below'), (1000000, 'above'), (NULL, 'null key')")

    result = run(config)

    table = result.tables[0]
    assert result.status == "completed"
    assert (table["expected_rows"], table["rows_copied"], table["target_count"]) == (300, 303, 303)


def test_a_database_error_while_planning_one_table_fails_only_that_table(env) -> None:
    env.sf_execute("CREATE TABLE CLASH AS SELECT SEQ8()::NUMBER(18,0) AS ID FROM TABLE(GENERATOR(ROWCOUNT => 10))",
                   "CREATE TABLE FINE AS SELECT SEQ8()::NUMBER(18,0) AS ID FROM TABLE(GENERATOR(ROWCOUNT => 10))")
    with env.pg() as conn:
        conn.execute("CREATE VIEW public.clash AS SELECT 1 AS id")  # CREATE TABLE will collide with it
    result = run(env.config([{"source": "CLASH"}, {"source": "FINE"}]))
    by_table = {t["table"].split(".")[-1]: t for t in result.tables}
    assert result.status == "completed_with_errors"
    assert by_table["FINE"]["status"] == "completed"
    assert by_table["CLASH"]["status"] == "failed" and "DuplicateTable" in by_table["CLASH"]["error"]


def test_percent_signs_in_identifiers_and_filters_survive_every_statement(env) -> None:
    """The connector interpolates `command % params` client-side: one escaping rule must hold for range
    chunks, hash chunks, the stats queries, the filter and reconciliation alike."""
    env.sf_execute(
        'CREATE TABLE "RATES%" AS SELECT SEQ8()::NUMBER(18,0) AS "ID%", (SEQ8() % 7)::NUMBER(9,0) AS "GROWTH_%", '
        "IFF(SEQ8() % 3 = 0, '5% off', 'full') AS NOTE FROM TABLE(GENERATOR(ROWCOUNT => 900))",
        'CREATE TABLE "NOKEY%" AS SELECT (SEQ8() % 50)::NUMBER(9,0) AS "GROWTH_%", \'x%\' || SEQ8() AS NOTE '
        "FROM TABLE(GENERATOR(ROWCOUNT => 700))",
    )
    result = run(env.config([
        {"source": '"RATES%"', "target": "rates", "chunking_columns": ['"ID%"'], "chunking_column_types": ["numeric"],
         "source_filter": "NOTE LIKE '5%' OR \"GROWTH_%\" >= 0"},
        {"source": '"NOKEY%"', "target": "nokey"},
    ], chunk_rows=200))
    assert result.status == "completed", result.tables
    by_target = {t["target"]: t for t in result.tables}
    assert by_target["public.nokey"]["strategy"] == "hash" and by_target["public.nokey"]["chunks"] > 1
    assert env.pg_value('SELECT count(DISTINCT "id%") FROM public.rates') == 900
    assert env.pg_value("SELECT count(*) FROM public.rates WHERE note = '5% off'") == 300
    assert env.pg_value('SELECT sum("growth_%") FROM public.nokey') == sum(i % 50 for i in range(700))


def test_a_column_name_postgres_would_truncate_fails_its_table_by_name(env) -> None:
    long_name = "AMOUNT_INCLUDING_ALL_DISCOUNTS_AND_TAXES_IN_THE_REPORTING_CURRENCY_X"  # 68 bytes
    env.sf_execute(f"CREATE TABLE WIDE AS SELECT SEQ8()::NUMBER(18,0) AS ID, 1::NUMBER(9,0) AS {long_name} "
                   "FROM TABLE(GENERATOR(ROWCOUNT => 10))",
                   "CREATE TABLE NARROWER AS SELECT SEQ8()::NUMBER(18,0) AS ID FROM TABLE(GENERATOR(ROWCOUNT => 10))")
    result = run(env.config([{"source": "WIDE"}, {"source": "NARROWER"}]))
    by_table = {t["table"].split(".")[-1]: t for t in result.tables}
    assert by_table["NARROWER"]["status"] == "completed"
    assert by_table["WIDE"]["status"] == "failed"
    assert f"would silently call it '{long_name.lower()[:63]}'" in by_table["WIDE"]["error"]
