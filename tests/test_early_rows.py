"""A small watermark window read live is read by the query that finds its high end, and those rows are written by
the transaction that stores the table's plan (lib/plan/early_rows.py): no worker claims it, and a window at its
lower end is reconciled and completed there too. A kill at any point of that write leaves the plan and the rows
together or neither, a write that fails leaves nothing behind, and a run that finds nothing sends PostgreSQL a
bounded number of statements per table."""

from __future__ import annotations

import signal
from typing import Any

import psycopg
import pytest

from lib import ledger as status
from lib.run.orchestrator import run
from tests.helpers import cli

TABLES = ("ITEMS", "ITEMS2", "ITEMS3")
FAST = {"retry_base_seconds": 0.2, "retry_max_seconds": 1.0, "snapshot": False}


def _table(name: str) -> dict[str, Any]:
    return {"source": name, "source_watermark": "UPDATED_AT", "merge_key": ["ID"]}


def _source(env, *names: str) -> None:
    for name in names:
        env.sf_execute(f"CREATE TABLE {name} (ID NUMBER(18,0), NAME VARCHAR, UPDATED_AT TIMESTAMP_NTZ)",
                       f"INSERT INTO {name} SELECT SEQ8(), 'item ' || SEQ8(), DATEADD(second, SEQ8(), "
                       "'2024-01-01'::TIMESTAMP_NTZ) FROM TABLE(GENERATOR(ROWCOUNT => 300))")


def _rows(env, table: str = "items") -> dict[int, tuple[Any, ...]]:
    source = {int(r[0]): (r[1], str(r[2])) for r in env.sf_rows(f"SELECT ID, NAME, UPDATED_AT FROM {table.upper()}")}
    target = {int(r[0]): (r[1], str(r[2])) for r in env.pg_rows(f"SELECT id, name, updated_at FROM public.{table}")}
    assert env.pg_value(f"SELECT count(*) FROM public.{table}") == len(target), "a row was doubled"
    assert target == source
    return target


def _pg_statements(monkeypatch) -> list[str]:
    """Every statement the engine sends to PostgreSQL from now on (COPY data aside)."""
    sent: list[str] = []
    real = psycopg.Cursor.execute

    def execute(self: Any, query: Any, params: Any = None, **kwargs: Any) -> Any:
        sent.append(query.as_string(self) if hasattr(query, "as_string") else str(query))
        return real(self, query, params, **kwargs)

    monkeypatch.setattr(psycopg.Cursor, "execute", execute)
    return sent


def test_a_run_that_finds_nothing_new_writes_with_its_plans_and_sends_few_statements_per_table(env, monkeypatch) -> None:
    _source(env, *TABLES)
    every = env.config([_table(t) for t in TABLES], FAST)
    one = env.config([_table(TABLES[0])], FAST)
    assert run(every).status == "completed"  # the first windows
    env.sf_execute("UPDATE ITEMS SET NAME = 'changed', UPDATED_AT = '2025-01-01' WHERE ID = 7")
    assert run(every).status == "completed"  # small windows after it
    sent = _pg_statements(monkeypatch)

    alone = run(one)
    for_one, ledger_for_one = len(sent), sum("migration_status." in s for s in sent)
    sent.clear()
    together = run(every)
    for_three, ledger_for_three = len(sent), sum("migration_status." in s for s in sent)

    for result in (alone, together):
        assert result.status == "completed" and {t["reconcile"] for t in result.tables} == {"match"}, result.tables
    assert not any("WITH next AS" in s for s in sent), "a worker claimed a chunk that planning had written"
    assert not any("'post_load' FOR UPDATE" in s for s in sent), "a window at its lower end waited for a post-load step"
    workers = env.pg_rows(f"SELECT DISTINCT worker FROM {status.SCHEMA}.migration_chunk_status WHERE run_id > 2")
    assert workers == [("planning",)]
    per_table = (for_three - for_one) / 2
    assert per_table <= 15, f"{per_table} statements per further table (one table: {for_one})"
    ledger_per_table = (ledger_for_three - ledger_for_one) / 2
    # its history, the owner check, its plan and its done mark (with its reconciliation); besides those, the target's
    # advisory lock and the chunk's row (executemany) make six ledger round trips
    assert ledger_per_table <= 4, ledger_per_table
    for table in TABLES:
        _rows(env, table.lower())


@pytest.mark.parametrize("point", ["during_read@1", "before_commit@1", "after_commit@1"])
def test_a_kill_while_a_window_is_written_with_its_plan_then_resume_leaves_each_row_once(env, point) -> None:
    _source(env, "ITEMS")
    path = env.write_config([_table("ITEMS")], FAST)
    assert cli(env.env, path).returncode == 0  # the first window, copied by workers
    env.sf_execute("UPDATE ITEMS SET NAME = 'changed', UPDATED_AT = '2025-01-01' WHERE ID IN (3, 4)",
                   "INSERT INTO ITEMS VALUES (5000, 'new', '2025-01-02')")
    before = {r[0] for r in env.pg_rows("SELECT id FROM public.items")}

    killed = cli({**env.env, "MIGRATION_FAULTS": point}, path)

    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    held = {r[0] for r in env.pg_rows("SELECT id FROM public.items")}
    planned = env.pg_value(f"SELECT count(*) FROM {status.SCHEMA}.migration_table_status WHERE run_id = 2")
    assert (held, planned) == ((before | {5000}, 1) if point.startswith("after") else (before, 0))
    resumed = cli(env.env, path)
    assert resumed.returncode == 0 and "resuming run 2" in resumed.stdout, resumed.stdout + resumed.stderr
    chunks = env.pg_rows(f"SELECT status, worker, rows_copied FROM {status.SCHEMA}.migration_chunk_status "
                         "WHERE run_id = 2")
    assert chunks == [("done", "planning", 4)]  # the boundary row of the first window, the two changed, the new
    verdict = env.pg_rows(f"SELECT status, reconcile_status FROM {status.SCHEMA}.migration_table_status WHERE run_id = 2")
    assert verdict == [("completed", "match")]
    _rows(env)


def test_a_window_whose_write_fails_with_its_plan_leaves_nothing_written_and_fails_its_chunk_by_name(env) -> None:
    _source(env, "ITEMS", "ITEMS2")
    config = env.config([_table("ITEMS"), _table("ITEMS2")], FAST)
    assert run(config).status == "completed"
    env.sf_execute("INSERT INTO ITEMS VALUES (5000, 'one', '2025-01-01'), (5000, 'two', '2025-01-02'), "
                   "(5001, 'fine', '2025-01-01')",  # Snowflake does not enforce keys
                   "INSERT INTO ITEMS2 VALUES (5000, 'new', '2025-01-01')")

    failed = run(config)

    assert failed.status == "completed_with_errors", failed.tables
    items, items2 = sorted(failed.tables, key=lambda t: t["table"])
    assert items["status"] == "failed" and "repeat" in items["error"] and "5000" in items["error"], items
    assert env.pg_value("SELECT count(*) FROM public.items WHERE id >= 5000") == 0  # not 5001 either: one chunk
    notes = env.pg_value(f"SELECT plan_notes::text FROM {status.SCHEMA}.migration_table_status WHERE run_id = 2 "
                         "AND table_name LIKE '%.ITEMS'")
    assert "could not be written with the plan" in notes, notes
    assert items2["reconcile"] == "match" and env.pg_value("SELECT count(*) FROM public.items2 WHERE id = 5000") == 1
