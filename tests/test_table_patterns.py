"""Tables named by a pattern (`SCHEMA.*`, a glob, `exclude`): each match is planned, copied and reconciled as
if it were listed; a table listed on its own keeps its entry; the tables a run matched are pinned in it, and a
table that appears later is copied by the next run of the config, alone."""

from __future__ import annotations

from typing import Any

import pytest

from lib.config import load_config
from lib.errors import ConfigError
from lib.run import orchestrator
from lib.run.orchestrator import config_of_run, finalize_run, reconcile_finished_tables, run, start_run, work, work_plan
from tests.helpers import cli

PATTERN = {"source": "PUBLIC.*", "exclude": ["TMP_*", "AUDIT"], "target": "shop.*", "truncate_onstart": True}
LISTED = {"source": "ORDERS", "target": "public.orders_listed", "chunking_columns": ["ID"],
          "chunking_column_types": ["numeric"], "truncate_onstart": True}


def _table(env: Any, name: str, rows: int) -> None:
    env.sf_execute(f'CREATE TABLE {name} AS SELECT SEQ8()::NUMBER(18,0) AS ID, \'row \' || SEQ8() AS NOTE '
                   f"FROM TABLE(GENERATOR(ROWCOUNT => {rows}))")


def _schema(env: Any) -> None:
    for name, rows in (("ORDERS", 3000), ("CUSTOMERS", 1200), ('"MixedCase"', 700), ("TMP_SCRATCH", 50),
                       ("AUDIT", 40)):
        _table(env, name, rows)
    env.sf_execute("CREATE VIEW BIG_ORDERS AS SELECT * FROM ORDERS WHERE ID > 100")


def _snowflake_statements(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    import lib.source.snowflake as sf

    seen: list[str] = []
    real = sf.run

    def counting(cur: Any, sql: str, params: Any = None) -> Any:
        seen.append(sql)
        return real(cur, sql, params)

    monkeypatch.setattr(sf, "run", counting)
    return seen


def test_a_pattern_copies_every_matching_table_but_the_excluded_and_the_listed_ones(env, monkeypatch) -> None:
    _schema(env)
    with env.pg() as conn:
        conn.execute("CREATE SCHEMA shop")
    statements = _snowflake_statements(monkeypatch)
    result = run(env.config([LISTED, PATTERN], chunk_rows=1000))

    assert result.status == "completed", result.tables
    db = env.sf_database
    assert {t["table"]: t["target"] for t in result.tables} == {
        f"{db}.PUBLIC.ORDERS": "public.orders_listed",  # listed on its own: its own target and options
        f"{db}.PUBLIC.CUSTOMERS": "shop.customers",
        f"{db}.PUBLIC.MixedCase": "shop.MixedCase",  # a quoted name keeps its case, as a listed one does
    }
    assert all(t["reconcile"] == "match" for t in result.tables)
    assert env.pg_value("SELECT count(*) FROM public.orders_listed") == 3000
    assert env.pg_value("SELECT count(DISTINCT id) FROM shop.customers") == 1200
    assert env.pg_value('SELECT count(*) FROM shop."MixedCase"') == 700
    assert env.pg_value("SELECT count(*) FROM information_schema.tables WHERE table_name IN "
                        "('tmp_scratch', 'audit', 'big_orders', 'orders')") == 0  # excluded, a view, listed elsewhere
    # one listing of the schema, shared with the Time Travel retention every table's plan reads
    assert sum(s.startswith("SHOW TABLES") for s in statements) == 1


def test_planning_cost_per_matched_table_is_constant(env, monkeypatch) -> None:
    for i in range(12):
        _table(env, f"T_{i:02d}", 10 + i)
    statements = _snowflake_statements(monkeypatch)
    start_run(env.config([{"source": "PUBLIC.T_0[0-2]"}], chunk_rows=1000))
    three = len(statements)
    statements.clear()
    with env.pg() as conn:
        conn.execute("CREATE SCHEMA b")
    start_run(env.config([{"source": "PUBLIC.T_*", "target": "b.*"}], chunk_rows=1000))
    twelve = len(statements)
    per_table = (twelve - three) / 9
    assert per_table == int(per_table) and twelve == 12 * per_table + (three - 3 * per_table), (three, twelve)
    assert sum(s.startswith("SHOW TABLES") for s in statements) == 1


def test_the_run_keeps_its_matches_and_a_table_that_appears_is_copied_by_the_next_run_alone(env) -> None:
    for name, rows in (("A_ONE", 500), ("A_TWO", 800)):
        _table(env, name, rows)
    entries = [{"source": "PUBLIC.A_*", "truncate_onstart": True}]
    start = start_run(env.config(entries, chunk_rows=1000))

    # mid-run: A_TWO is dropped in Snowflake and A_THREE appears; the run's later steps see the tables it pinned
    env.sf_execute("DROP TABLE A_TWO")
    _table(env, "A_THREE", 300)
    pinned = config_of_run(env.config(entries, chunk_rows=1000), start.run_id)
    db = env.sf_database
    assert [t.name for t in pinned.tables] == [f"{db}.PUBLIC.A_ONE", f"{db}.PUBLIC.A_TWO"]
    work(work_plan(pinned, start.run_id), 2)
    reconcile_finished_tables(pinned, start.run_id)
    assert finalize_run(pinned, start.run_id) == "completed_with_errors"  # A_TWO fails, naming itself; A_ONE goes on
    failed = dict(env.pg_rows("SELECT table_name, error FROM migration_status.migration_table_status WHERE status = 'failed'"))
    assert list(failed) == [f"{db}.PUBLIC.A_TWO"] and "A_TWO does not exist" in failed[f"{db}.PUBLIC.A_TWO"]
    assert env.pg_value("SELECT count(*) FROM public.a_one") == 500

    # the next start resumes the run: A_TWO (back) is retried, A_THREE (never copied) is planned into it
    _table(env, "A_TWO", 800)
    resumed = run(env.config(entries, chunk_rows=1000))
    assert resumed.mode == "resumed" and resumed.status == "completed", resumed.tables
    assert env.pg_value("SELECT count(*) FROM public.a_two") == 800
    assert env.pg_value("SELECT count(*) FROM public.a_three") == 300

    # after a completed run, a table that appears is copied by a run of its own: the others are not reloaded
    _table(env, "A_FOUR", 200)
    env.pg_rows("UPDATE public.a_one SET note = 'kept' WHERE id = 1 RETURNING id")  # a reload would lose it
    fresh = run(env.config(entries, chunk_rows=1000))
    assert fresh.mode == "fresh" and [t["table"] for t in fresh.tables] == [f"{db}.PUBLIC.A_FOUR"]
    assert env.pg_value("SELECT count(*) FROM public.a_four") == 200
    assert env.pg_value("SELECT note FROM public.a_one WHERE id = 1") == "kept"
    assert run(env.config(entries, chunk_rows=1000)).mode == "nothing_to_do"


def test_plan_lists_what_a_pattern_matched_and_status_shows_the_run(env) -> None:
    _schema(env)
    path = env.write_config([{"source": "PUBLIC.*", "exclude": ["TMP_*", "AUDIT", "\"MixedCase\""]}],
                            defaults={"chunk_rows": 1000})
    planned = cli(env.env, path, "plan", "--json")
    assert planned.returncode == 0, planned.stderr
    assert "table pattern PUBLIC.* matched 2 table(s)" in planned.stderr
    assert '"target": "public.customers"' in planned.stdout and '"target": "public.orders"' in planned.stdout
    assert cli(env.env, path).returncode == 0
    shown = cli(env.env, path, "status").stdout
    assert "public.customers" in shown and "public.orders" in shown and "completed" in shown


def test_pattern_problems_are_listed_together(env) -> None:
    entries = [
        {"source": "PUBLIC.*", "target": "shop.orders", "exclude": "TMP_*"},
        {"source": "ORDERS", "exclude": ["X"]},
        {"source": "*.ORDERS"},
        {"source": "PUBLIC.A_*", "chunk_rows": -1, "load_mode": "swap", "truncate_onstart": True},
    ]
    with pytest.raises(ConfigError) as raised:
        env.config(entries)
    text = str(raised.value)
    assert "exclude must be a list" in text
    assert "target of a table pattern must be left out (schema public) or be SCHEMA.*" in text
    assert "exclude belongs to a table pattern" in text
    assert "only the table part may be a glob" in text
    assert "chunk_rows must be a positive integer" in text and "never truncates the live table" in text


def test_a_match_that_would_load_a_listed_tables_target_fails_before_anything_is_copied(env) -> None:
    _table(env, "ORDERS", 10)
    _table(env, "ORDERS_2024", 10)
    entries = [{"source": "ORDERS_2024", "target": "public.orders"}, {"source": "PUBLIC.ORDERS*"}]
    with pytest.raises(ConfigError, match=r"matches .*ORDERS, whose target public.orders is also the target of"):
        orchestrator.start_run(env.config(entries))
    assert env.pg_value("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'") == 0
    excluded = run(env.config([entries[0], {**entries[1], "exclude": ["ORDERS"]}]))
    assert excluded.status == "completed" and [t["target"] for t in excluded.tables] == ["public.orders"]


def test_a_table_subset_of_a_config_with_patterns_is_a_run_of_its_own(env) -> None:
    for name, rows in (("A_ONE", 50), ("A_TWO", 80)):
        _table(env, name, rows)
    _table(env, "LISTED", 30)
    entries = [{"source": "LISTED", "truncate_onstart": True}, {"source": "PUBLIC.A_*", "truncate_onstart": True}]
    subset = run(load_config("test", {"tables": ["A_ONE"]}, env.write_config(entries)))
    assert [t["table"].rsplit(".", 1)[1] for t in subset.tables] == ["A_ONE"]

    # not "already completed", and not only the tables the subset left: the subset ran under a fingerprint of its
    # own, as a --table subset of listed tables does
    whole = run(env.config(entries))
    assert whole.mode == "fresh" and whole.status == "completed", whole.tables
    assert env.pg_value("SELECT count(*) FROM public.listed") == 30
    assert env.pg_value("SELECT count(*) FROM public.a_two") == 80


def test_a_match_whose_target_name_postgres_would_truncate_is_refused(env) -> None:
    long = "EVENTS_" + "X" * 60
    _table(env, f"{long}_2023", 5)
    with pytest.raises(ConfigError, match="PostgreSQL keeps at most 63"):
        orchestrator.start_run(env.config([{"source": "PUBLIC.EVENTS_*"}]))


def test_the_order_of_patterns_is_part_of_the_fingerprint(env) -> None:
    wide, narrow = {"source": "PUBLIC.*"}, {"source": "PUBLIC.CUST*", "source_filter": "ID > 5"}
    assert env.config([wide, narrow]).fingerprint() != env.config([narrow, wide]).fingerprint()
