"""Schema evolution on the real stack: a source column added, widened or dropped between two incremental (merge)
runs changes the target in the plan's transaction and every row stays exact; a narrowing or incompatible change
fails its table with the DDL a person could run while the run's other tables complete; `freeze` lists every
difference; `migrate.py plan` shows what would change and changes nothing."""

from __future__ import annotations

import signal

import pytest

from lib import ledger
from lib.check.verify import verify_run
from lib.run.orchestrator import run
from lib.target.evolution import parse_type, rewrites, widens
from tests.helpers import cli

NUMERIC = {"chunking_columns": ["ID"], "chunking_column_types": ["numeric"]}
WINDOW = [{"source": "CUSTOMERS", "source_watermark": "UPDATED_AT", **NUMERIC}]
ROWS = 1000


def _source(env) -> None:
    env.sf_execute(
        "CREATE TABLE CUSTOMERS (ID NUMBER(18,0) PRIMARY KEY, NAME VARCHAR(20), AMOUNT NUMBER(10,2), NOTE VARCHAR(30), "
        "UPDATED_AT TIMESTAMP_NTZ)",
        "INSERT INTO CUSTOMERS SELECT SEQ8(), 'c ' || SEQ8(), (SEQ8() % 1000) / 8, 'note ' || SEQ8(), "
        f"DATEADD(second, SEQ8(), '2024-01-01'::TIMESTAMP_NTZ) FROM TABLE(GENERATOR(ROWCOUNT => {ROWS}))")


def _columns(env) -> list[str]:
    return [r[0] for r in env.sf_rows("SELECT column_name FROM information_schema.columns "
                                      "WHERE table_name = 'CUSTOMERS' ORDER BY ordinal_position")]


def _exact(env) -> None:
    """Every source row, in every source column, exactly once in the target."""
    names = _columns(env)
    source = {int(r[0]): tuple(r) for r in env.sf_rows(f"SELECT {', '.join(names)} FROM CUSTOMERS")}
    target = {int(r[0]): tuple(r) for r in env.pg_rows(f"SELECT {', '.join(n.lower() for n in names)} FROM public.customers")}
    assert target == source
    assert env.pg_value("SELECT count(*) FROM public.customers") == len(source)


def _changes(env, run_id: int) -> list[tuple]:
    return env.pg_rows(f"SELECT column_name, change, from_type, to_type, ddl, applied_at IS NOT NULL "
                       f"FROM {ledger.SCHEMA}.schema_changes WHERE run_id = %s ORDER BY column_name, change", (run_id,))


def _target_types(env) -> dict[str, str]:
    return dict(env.pg_rows("SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
                            "WHERE attrelid = 'public.customers'::regclass AND attnum > 0 AND NOT attisdropped"))


def _notes(env, run_id: int) -> str:
    return env.pg_value(f"SELECT plan_notes::text FROM {ledger.SCHEMA}.migration_table_status WHERE run_id = %s",
                        (run_id,))


def test_a_column_added_widened_and_dropped_between_incremental_runs_keeps_every_row_exact(env) -> None:
    _source(env)
    assert run(env.config(WINDOW, chunk_rows=400)).status == "completed"
    _exact(env)

    # a column added, with values in every existing row (their watermark unchanged), and new rows
    env.sf_execute("ALTER TABLE CUSTOMERS ADD COLUMN PHONE VARCHAR(20)",
                   "UPDATE CUSTOMERS SET PHONE = '+1 555 ' || ID",
                   "INSERT INTO CUSTOMERS VALUES (5000, 'new', 1.25, 'n', '2025-01-01', '+1 999')")
    added = run(env.config(WINDOW, chunk_rows=400))
    assert added.status == "completed", added.tables
    _exact(env)
    assert _changes(env, 2) == [("phone", "added", None, "varchar(20)",
                                 'ALTER TABLE "public"."customers" ADD COLUMN "phone" varchar(20)', True)]
    assert "reads the whole scope" in _notes(env, 2)
    assert env.pg_value(f"SELECT watermark_lo FROM {ledger.SCHEMA}.migration_table_status WHERE run_id = 2") is None
    # the fill reads the whole scope in chunks of chunk_rows, not as the one chunk its two new rows would make
    assert env.pg_value(f"SELECT planned_chunks FROM {ledger.SCHEMA}.migration_table_status WHERE run_id = 2") >= 3

    # a VARCHAR and a NUMBER widened, with values only the wider types hold
    env.sf_execute("ALTER TABLE CUSTOMERS ALTER COLUMN NAME SET DATA TYPE VARCHAR(100)",
                   "ALTER TABLE CUSTOMERS ALTER COLUMN AMOUNT SET DATA TYPE NUMBER(14,2)",
                   "UPDATE CUSTOMERS SET NAME = REPEAT('x', 90), AMOUNT = 123456789012.34, UPDATED_AT = '2025-02-01' "
                   "WHERE ID < 5")
    filenode = env.pg_value("SELECT pg_relation_filenode('public.customers')")
    widened = run(env.config(WINDOW, chunk_rows=400))
    assert widened.status == "completed", widened.tables
    assert env.pg_value("SELECT pg_relation_filenode('public.customers')") == filenode, "catalog only: no rewrite"
    assert "changes only the catalog (no rewrite)" in _notes(env, 3)
    _exact(env)
    assert {k: v for k, v in _target_types(env).items() if k in ("name", "amount")} == {
        "name": "character varying(100)", "amount": "numeric(14,2)"}
    assert [c[:4] for c in _changes(env, 3)] == [
        ("amount", "widened", "numeric(10,2)", "numeric(14,2)"),
        ("name", "widened", "character varying(20)", "varchar(100)")]
    assert "whole scope" not in _notes(env, 3), "a widened column needs no full read"

    # a column dropped: the target keeps it, rows written from now on hold NULL there
    env.sf_execute("ALTER TABLE CUSTOMERS DROP COLUMN NOTE",
                   "INSERT INTO CUSTOMERS VALUES (6000, 'after drop', 2.5, '2025-03-01', '+1 777')",
                   "UPDATE CUSTOMERS SET NAME = 'renamed', UPDATED_AT = '2025-03-02' WHERE ID = 7")
    dropped = run(env.config(WINDOW, chunk_rows=400))
    assert dropped.status == "completed", dropped.tables
    _exact(env)
    assert env.pg_value("SELECT note FROM public.customers WHERE id = 6000") is None
    assert env.pg_value("SELECT note FROM public.customers WHERE id = 7") == "note 7", "kept as the target held it"
    assert _changes(env, 4) == [("note", "dropped", "character varying(30)", None, None, False)]
    assert all(r.clean for r in verify_run(env.config(WINDOW, chunk_rows=400), 4, threads=2))

    # nothing changed since: the next window is incremental again and records no change
    quiet = run(env.config(WINDOW, chunk_rows=400))
    assert quiet.status == "completed" and _changes(env, 5) == []
    assert env.pg_value(f"SELECT watermark_lo_from FROM {ledger.SCHEMA}.migration_table_status WHERE run_id = 5") == "ledger"

    shown = cli(env.env, env.write_config(WINDOW, defaults={"chunk_rows": 400}), "status", "--run-id", "4")
    assert shown.returncode == 0, shown.stderr
    assert "schema: customers column note dropped" in shown.stdout.replace("public.", ""), shown.stdout
    view = env.pg_rows(f"SELECT run_id, column_name, change FROM {ledger.SCHEMA}.schema_change_log ORDER BY run_id, column_name")
    assert view == [(2, "phone", "added"), (3, "amount", "widened"), (3, "name", "widened"), (4, "note", "dropped")]


def test_a_narrowing_or_incompatible_change_fails_its_table_with_the_ddl_and_the_others_complete(env) -> None:
    _source(env)
    env.sf_execute("CREATE TABLE OTHERS (ID NUMBER(18,0) PRIMARY KEY, V VARCHAR)",
                   "INSERT INTO OTHERS SELECT SEQ8(), 'v' FROM TABLE(GENERATOR(ROWCOUNT => 50))")
    tables = [*WINDOW, {"source": "OTHERS", "insert_only_mode": False, **NUMERIC}]
    assert run(env.config(tables)).status == "completed"
    env.sf_execute("ALTER TABLE CUSTOMERS ALTER COLUMN NAME SET DATA TYPE VARCHAR(10)",
                   "ALTER TABLE CUSTOMERS ALTER COLUMN AMOUNT SET DATA TYPE VARCHAR(20)",
                   "ALTER TABLE CUSTOMERS ADD COLUMN PHONE VARCHAR(20)",
                   "INSERT INTO OTHERS VALUES (100, 'new')")

    second = run(env.config(tables))

    by_table = {t["table"].split(".")[-1]: t for t in second.tables}
    assert second.status == "completed_with_errors"
    assert by_table["OTHERS"]["status"] == "completed"
    assert env.pg_value("SELECT count(*) FROM public.others") == 51
    error = by_table["CUSTOMERS"]["error"]
    narrowing = 'ALTER TABLE "public"."customers" ALTER COLUMN "name" TYPE varchar(10) USING "name"::varchar(10)'
    incompatible = 'ALTER TABLE "public"."customers" ALTER COLUMN "amount" TYPE varchar(20) USING "amount"::varchar(20)'
    assert narrowing in error and incompatible in error, error
    assert "phone" not in _target_types(env), "nothing is applied to a table that fails"
    assert [c[:2] for c in _changes(env, 2)] == [("amount", "refused"), ("name", "refused")]

    with env.pg() as conn:  # a person checks and runs the DDL the message gave: the next run goes on
        conn.execute(narrowing)
        conn.execute(incompatible)
    third = run(env.config(tables))
    assert third.status == "completed", third.tables
    _exact(env)


def test_a_widening_is_refused_naming_the_views_that_use_the_column(env) -> None:
    _source(env)
    assert run(env.config(WINDOW)).status == "completed"
    with env.pg() as conn:
        conn.execute("CREATE VIEW public.big_spenders AS SELECT id, amount FROM public.customers WHERE amount > 100")
    env.sf_execute("ALTER TABLE CUSTOMERS ALTER COLUMN AMOUNT SET DATA TYPE NUMBER(14,2)")

    second = run(env.config(WINDOW))

    assert second.status == "completed_with_errors"
    assert "view(s) big_spenders use it" in second.tables[0]["error"], second.tables[0]["error"]
    assert _target_types(env)["amount"] == "numeric(10,2)"


def test_freeze_fails_the_table_listing_every_difference_and_changes_nothing(env) -> None:
    _source(env)
    frozen = [{**WINDOW[0], "schema_changes": "freeze"}]
    assert run(env.config(frozen)).status == "completed"
    env.sf_execute("ALTER TABLE CUSTOMERS ADD COLUMN PHONE VARCHAR(20)",
                   "ALTER TABLE CUSTOMERS ALTER COLUMN NAME SET DATA TYPE VARCHAR(100)",
                   "ALTER TABLE CUSTOMERS DROP COLUMN NOTE")
    types = _target_types(env)

    second = run(env.config(frozen))

    assert second.status == "completed_with_errors"
    error = second.tables[0]["error"]
    for needed in ("3 refused", "column phone added in the source", "column name widened in the source",
                   "column note dropped in the source", "schema_changes is freeze"):
        assert needed in error, (needed, error)
    assert _target_types(env) == types
    assert [c[:2] for c in _changes(env, 2)] == [("name", "refused"), ("note", "refused"), ("phone", "refused")]


def test_an_added_column_on_a_catch_up_fails_with_guidance_and_a_merge_fills_it(env) -> None:
    _source(env)
    catch_up = [{"source": "CUSTOMERS", **NUMERIC}]
    assert run(env.config([{**catch_up[0], "source_filter": "ID < 500"}])).status == "completed"
    env.sf_execute("ALTER TABLE CUSTOMERS ADD COLUMN PHONE VARCHAR(20)", "UPDATE CUSTOMERS SET PHONE = 'p' || ID")

    refused = run(env.config(catch_up))
    assert refused.status == "completed_with_errors"
    assert "--insert-only-mode false" in refused.tables[0]["error"]

    merged = run(env.config(catch_up, insert_only_mode=False))
    assert merged.status == "completed", merged.tables
    _exact(env)


def test_a_dropped_column_that_is_not_null_without_default_fails_saying_so(env) -> None:
    _source(env)
    assert run(env.config(WINDOW)).status == "completed"
    with env.pg() as conn:
        conn.execute("ALTER TABLE public.customers ALTER COLUMN note SET NOT NULL")
    env.sf_execute("ALTER TABLE CUSTOMERS DROP COLUMN NOTE")

    second = run(env.config(WINDOW))

    error = second.tables[0]["error"]
    assert "NOT NULL without a default" in error and 'ALTER COLUMN "note" DROP NOT NULL' in error, error


def test_plan_shows_what_would_change_and_changes_nothing(env) -> None:
    _source(env)
    config = env.write_config(WINDOW)
    assert cli(env.env, config).returncode == 0
    env.sf_execute("ALTER TABLE CUSTOMERS ADD COLUMN PHONE VARCHAR(20)",
                   "ALTER TABLE CUSTOMERS ALTER COLUMN NAME SET DATA TYPE VARCHAR(100)")
    types = _target_types(env)

    shown = cli(env.env, config, "plan")

    assert shown.returncode == 0, shown.stderr
    assert "schema (would apply): column phone added" in shown.stdout and "column name widened" in shown.stdout, shown.stdout
    assert _target_types(env) == types
    assert env.pg_value(f"SELECT count(*) FROM {ledger.SCHEMA}.schema_changes") == 0


@pytest.mark.parametrize(("old", "new", "lossless"), [
    ("character varying(20)", "varchar(100)", True), ("character varying(20)", "text", True),
    ("character varying(100)", "varchar(50)", False), ("text", "varchar(50)", False),
    ("numeric(10,2)", "numeric(14,2)", True), ("numeric(10,2)", "numeric(12,4)", True),
    ("numeric(10,2)", "numeric(10,4)", False), ("numeric(10,2)", "numeric(12,1)", False),
    ("numeric(10,2)", "varchar(20)", False), ("integer", "bigint", True), ("bigint", "integer", False),
    ("bigint", "numeric(38,0)", True), ("bigint", "numeric(18,0)", False), ("smallint", "numeric(5,0)", True),
    ("numeric(9,0)", "integer", True), ("numeric(10,0)", "integer", False), ("real", "double precision", True),
    ("timestamp(3) without time zone", "timestamp", True), ("timestamp", "timestamptz", False),
    ("date", "timestamp", False), ("numeric(10,2)", "numeric", True), ("numeric", "numeric(38,2)", False),
])
def test_widening_rules(old: str, new: str, lossless: bool) -> None:
    assert widens(old, new) is lossless


def test_what_a_widening_costs() -> None:
    assert not rewrites("character varying(20)", "varchar(100)")
    assert not rewrites("numeric(10,2)", "numeric(14,2)")
    assert rewrites("numeric(10,2)", "numeric(12,4)") and rewrites("integer", "bigint")
    assert parse_type("timestamp with time zone") == parse_type("timestamptz")


def test_a_crash_after_the_ddl_leaves_neither_the_column_nor_its_record_and_the_next_start_adds_it(env) -> None:
    _source(env)
    config = env.write_config(WINDOW)
    assert cli(env.env, config).returncode == 0
    env.sf_execute("ALTER TABLE CUSTOMERS ADD COLUMN PHONE VARCHAR(20)", "UPDATE CUSTOMERS SET PHONE = 'p' || ID")

    killed = cli({**env.env, "MIGRATION_FAULTS": "schema_change@1"}, config)

    assert killed.returncode == -signal.SIGKILL
    assert "phone" not in _target_types(env)
    assert env.pg_value(f"SELECT count(*) FROM {ledger.SCHEMA}.schema_changes") == 0
    assert cli(env.env, config).returncode == 0
    _exact(env)
    assert [c[:2] for c in _changes(env, 2)] == [("phone", "added")]


def test_a_swap_reload_after_a_column_was_added_swaps_in_a_table_that_has_it(env) -> None:
    _source(env)
    assert run(env.config([{"source": "CUSTOMERS", **NUMERIC}])).status == "completed"
    env.sf_execute("ALTER TABLE CUSTOMERS ADD COLUMN PHONE VARCHAR(20)", "UPDATE CUSTOMERS SET PHONE = 'p' || ID",
                   "ALTER TABLE CUSTOMERS DROP COLUMN NOTE")

    swapped = run(env.config([{"source": "CUSTOMERS", "load_mode": "swap", **NUMERIC}]))

    assert swapped.status == "completed", swapped.tables
    _exact(env)
    assert env.pg_value("SELECT count(*) FROM public.customers WHERE note IS NOT NULL") == 0, "reloaded: no old value"
    assert [c[:2] for c in _changes(env, 2)] == [("note", "dropped"), ("phone", "added")]


def test_a_run_that_added_a_column_and_died_leaves_the_fill_to_the_next_fresh_run(env) -> None:
    _source(env)
    config = env.write_config(WINDOW, defaults={"chunk_rows": 400})
    assert cli(env.env, config).returncode == 0
    env.sf_execute("ALTER TABLE CUSTOMERS ADD COLUMN PHONE VARCHAR(20)", "UPDATE CUSTOMERS SET PHONE = 'p' || ID")
    killed = cli({**env.env, "MIGRATION_FAULTS": "after_commit@1"}, config)
    assert killed.returncode == -signal.SIGKILL and "phone" in _target_types(env), "the column came with run 2's plan"

    fresh = cli(env.env, config, "--no-resume")

    assert fresh.returncode == 0, fresh.stderr
    _exact(env)
    assert "PHONE new since the last window" in _notes(env, 3)
