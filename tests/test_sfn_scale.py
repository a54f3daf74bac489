"""Step Functions at scale, under moto with the real state machine: thousands of tables whose stats (and most of
whose copies) are answered by a stub, a few tables copied for real. No step's work grows with the number of
tables or rows in one invocation: Plan and Reconcile each do a share bounded by their time budget and loop,
the history stays within its limit, and the Map's output stays small however many slots are lost.

SFN_SIM_TABLES and SFN_SIM_ROWS scale it (make sfn-sim: 10,000 tables, 10,000,000,000 rows); the figures of
the last such run are written to bench/results/sfn_sim.json."""

from __future__ import annotations

import json
import os
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

from lib import ledger as status
from lib.models import KeyBucket
from lib.run import worker as worker_module
from lib.run.step_functions import HISTORY_LIMIT
from lib.source.snowflake import SnowflakeSource
from lib.target import load_modes
from lib.target import postgres as pg
from lib.target.loaders import Written
from scripts import lambda_handler
from tests.test_step_functions import ASL, _load, _table, aws  # noqa: F401 - the fixture

TABLES = int(os.environ.get("SFN_SIM_TABLES", "300"))
ROWS = int(os.environ.get("SFN_SIM_ROWS", str(TABLES * 1_000_000)))
BUDGET = float(os.environ.get("SFN_SIM_BUDGET", "0.25"))
RESULTS = Path(__file__).resolve().parent.parent / "bench" / "results" / "sfn_sim.json"
STUB = "STUB_"


def _stubbed(table: Any) -> bool:
    return str(table[-1] if isinstance(table, tuple) else table).split(".")[-1].startswith(STUB) or \
        str(table).startswith(("public.stub_", "stub_"))


def _stub_world(monkeypatch, rows_per_table: int) -> None:
    """Stub tables exist for the engine's reads, plans, copies and counts; nothing of them travels."""
    def patch(owner: Any, name: str, stub: Any) -> None:
        real = getattr(owner, name)

        def either(*args: Any, **kwargs: Any) -> Any:
            return stub(*args, **kwargs) if _stubbed(args[1]) else real(*args, **kwargs)

        monkeypatch.setattr(owner, name, either)

    patch(SnowflakeSource, "describe", lambda self, t: [
        {"name": "ID", "data_type": "NUMBER", "precision": 18, "scale": 0, "char_length": None, "nullable": False},
        {"name": "V", "data_type": "TEXT", "precision": None, "scale": None, "char_length": None, "nullable": True}])
    patch(SnowflakeSource, "sample_row_bytes", lambda self, t, columns, f: 64)
    patch(SnowflakeSource, "count", lambda self, t, f: rows_per_table)
    half = rows_per_table // 2
    patch(SnowflakeSource, "key_buckets", lambda self, t, c, f, bucket_rows, strings=False: ([
        KeyBucket(Decimal(0), Decimal(half - 1), half, 1), KeyBucket(Decimal(half), Decimal(rows_per_table - 1), half, 1)], 0))
    monkeypatch.setattr(SnowflakeSource, "retention_days", lambda self, t: 1)
    for name, stub in (("existing_types", lambda conn, t, columns: None), ("has_primary_key", lambda conn, t: True),
                       ("analyze", lambda conn, t: None), ("row_count", lambda conn, t: rows_per_table)):
        real = getattr(pg, name)
        monkeypatch.setattr(pg, name, lambda conn, t, *a, _r=real, _s=stub: _s(conn, t, *a) if _stubbed(".".join(t))
                            else _r(conn, t, *a))
    real_ensure = pg.ensure_table
    monkeypatch.setattr(pg, "ensure_table", lambda conn, t, columns: None if _stubbed(".".join(t))
                        else real_ensure(conn, t, columns))
    real_copy = worker_module.Worker._copy

    def copy(self: Any, chunk: Any, lane: Any, started: Any = None) -> Written:
        if not _stubbed(self.plan.tables[chunk.table_name][0].source):
            return real_copy(self, chunk, lane, started)
        conn = lane.pg()
        with conn.transaction():
            status.mark_done(conn, chunk, chunk.expected_rows, chunk.expected_rows * 64)
        status.release_liveness_lock(conn, chunk)
        return Written(chunk.expected_rows, chunk.expected_rows * 64, chunk.expected_rows, 0)

    monkeypatch.setattr(worker_module.Worker, "_copy", copy)
    assert load_modes  # the load mode of a stub table is chosen as for any new table


def _timed(monkeypatch, name: str, measure: Any) -> list[dict[str, Any]]:
    """Every invocation of a handler: its seconds and what `measure` counted before and after it."""
    real, calls = getattr(lambda_handler, name), []

    def timed(event: dict[str, Any], context: Any = None) -> Any:
        before, began = measure(), time.monotonic()
        answer = real(event, context)
        calls.append({"seconds": round(time.monotonic() - began, 2), "done": measure() - before})
        return answer

    monkeypatch.setattr(lambda_handler, name, timed)
    return calls


def test_thousands_of_tables_plan_copy_and_reconcile_in_bounded_steps(aws, monkeypatch) -> None:  # noqa: F811
    _load(aws.env, "REAL_A", 3000)
    rows_per_table = ROWS // TABLES
    _stub_world(monkeypatch, rows_per_table)
    tables = [_table("REAL_A"), *({"source": f"{STUB}{n:05d}", "chunking_columns": ["ID"],
                                   "chunking_column_types": ["numeric"]} for n in range(TABLES))]
    aws.configure(tables, chunk_rows=max(rows_per_table // 2, 1), parallel_threads=2, max_target_connections=400)
    budget = BUDGET  # seconds a Plan or Reconcile invocation may start work for: its Lambda's timeout less the margin
    timeout = int(budget) + 2
    monkeypatch.setattr(lambda_handler, "STEP_SAFETY_MARGIN_SECONDS", timeout - budget)
    for function in ("plan", "reconcile"):
        aws.lam.update_function_configuration(FunctionName=function, Timeout=timeout)

    def counted(sql: str) -> Any:
        def count() -> int:
            try:
                return int(aws.env.pg_value(sql))
            except Exception:  # noqa: BLE001 - before the ledger exists
                return 0
        return count

    plans = _timed(monkeypatch, "plan", counted(
        f"SELECT count(*) FROM {status.SCHEMA}.migration_table_status WHERE planned_chunks IS NOT NULL"))
    reconciles = _timed(monkeypatch, "reconcile", counted(
        f"SELECT count(*) FROM {status.SCHEMA}.migration_table_status WHERE status = 'completed'"))
    began = time.monotonic()
    execution = aws.start(workers=20, max_loops=100_000)
    results = [aws.wait(execution, timeout=3600)]
    while running := [e for e in aws.sfn.list_executions(stateMachineArn=aws.arn)["executions"]
                      if e["status"] == "RUNNING"]:  # continuations (ContinueAsNew) carry the run on
        results.append(aws.wait(running[0]["executionArn"], timeout=3600))
    took = time.monotonic() - began

    assert all(r["status"] == "SUCCEEDED" for r in results), results
    completed = aws.env.pg_value(f"SELECT count(*) FROM {status.SCHEMA}.migration_table_status WHERE status = 'completed'")
    copied = aws.env.pg_value(f"SELECT sum(rows_copied) FROM {status.SCHEMA}.migration_chunk_status WHERE status = 'done'")
    assert completed == TABLES + 1 and copied == TABLES * rows_per_table + 3000
    assert aws.env.pg_value("SELECT count(*) FROM public.real_a") == 3000
    assert len(plans) > 1, "planning was spread over invocations"
    slack = 2.0  # one table's work may finish after the budget
    assert max(c["seconds"] for c in plans + reconciles) <= budget + slack, (plans, reconciles)
    events = sum(len(aws.history(e["executionArn"])) for e in aws.sfn.list_executions(stateMachineArn=aws.arn)["executions"])
    assert events <= HISTORY_LIMIT * 0.9
    figures = {"tables": TABLES + 1, "rows": TABLES * rows_per_table + 3000, "seconds": round(took, 1),
               "plan_invocations": len(plans), "plan_tables_per_invocation_max": max(c["done"] for c in plans),
               "plan_seconds_max": max(c["seconds"] for c in plans), "reconcile_invocations": len(reconciles),
               "reconcile_tables_per_invocation_max": max(c["done"] for c in reconciles),
               "reconcile_seconds_max": max(c["seconds"] for c in reconciles), "budget_seconds": budget,
               "history_events": events, "executions": len(results)}
    if os.environ.get("SFN_SIM_TABLES"):
        RESULTS.write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures))


def test_the_maps_output_stays_small_with_hundreds_of_lost_slots(aws, monkeypatch) -> None:  # noqa: F811
    _load(aws.env, "SMALL", 500)
    aws.configure([_table("SMALL")], parallel_threads=1, max_target_connections=4000)
    real, lost = lambda_handler.work_slot, []
    timed_out = type("Sandbox.Timedout", (Exception,), {})  # the errorType Lambda reports for a timeout

    def lost_in_the_first_loop(event: dict[str, Any], context: Any = None) -> Any:
        if len(lost) < 500:  # every slot of the first loop times out: 500 lost slots, each with its error text
            lost.append(event.get("slot"))
            raise timed_out("Task timed out after 900.00 seconds " + "x" * 400)
        return real(event, context)

    monkeypatch.setattr(lambda_handler, "work_slot", lost_in_the_first_loop)
    execution = aws.start(workers=500, max_target_connections=4000)
    result = aws.wait(execution, timeout=900)

    assert result["status"] == "SUCCEEDED", result
    assert len(set(lost)) == 500
    exits = [e for e in aws.history(execution) if e["type"] in ("MapStateExited", "DistributedMapStateExited")]
    assert exits and max(len(e["stateExitedEventDetails"].get("output", "")) for e in exits) < 20_000
    assert aws.env.pg_value("SELECT count(*) FROM public.small") == 500
    # the result a Map collects is its iterations' outputs: each ends in a state whose output is {} (OutputPath
    # null), a finished slot and a lost one alike, so 1,000 slots make a result of about 3 KB, never 256 KB
    definition = json.loads(ASL.read_text())
    for name in ("Work", "WorkDistributed"):
        states = definition["States"][name]["ItemProcessor"]["States"]
        ends = [s for s in states.values() if s.get("End")]
        assert ends and all("OutputPath" in s and s["OutputPath"] is None for s in ends), name
        assert definition["States"][name]["ResultPath"] is None


class _SlowSnowflake:
    """A Snowflake connection whose async queries run for `polls` status checks."""

    def __init__(self, polls: int) -> None:
        self.polls, self.submitted, self.fetched = polls, [], []

    def cursor(self) -> Any:
        outer = self

        class Cursor:
            sfqid = None

            def __enter__(self) -> Any:
                return self

            def __exit__(self, *_: Any) -> None:
                return None

            def execute_async(self, sql: str, params: Any) -> None:
                outer.submitted.append(sql)
                self.sfqid = f"q{len(outer.submitted)}"

            def get_results_from_sfqid(self, query_id: str) -> None:
                outer.fetched.append(query_id)

            def fetchall(self) -> list[tuple[int]]:
                return [(42,)]

        return Cursor()

    def get_query_status_throw_if_error(self, query_id: str) -> str:
        self.polls -= 1
        return "RUNNING" if self.polls > 0 else "SUCCESS"

    def is_still_running(self, state: str) -> bool:
        return state == "RUNNING"


def test_a_stats_query_that_outlasts_an_invocation_is_taken_by_the_next_without_running_it_again() -> None:
    import pytest

    from lib.errors import StillRunning
    from lib.source.deferred import Deferred

    kept: dict[str, str] = {}
    snowflake = _SlowSnowflake(polls=5)

    def step() -> Deferred:  # each invocation: the ledger's ids, and a short wait
        return Deferred(kept.get, kept.__setitem__, lambda key: kept.pop(key, None), wait_seconds=0.05,
                        poll_seconds=0.02)

    with pytest.raises(StillRunning, match="q1 is still running"):
        step().fetchall(snowflake, "SELECT COUNT(*) FROM T", None, "counting T")
    assert list(kept.values()) == ["q1"]
    rows = None
    for _ in range(5):  # later invocations ask for q1 until it is done
        try:
            rows = step().fetchall(snowflake, "SELECT COUNT(*) FROM T", None, "counting T")
            break
        except StillRunning:
            continue
    assert rows == [(42,)] and snowflake.submitted == ["SELECT COUNT(*) FROM T"] and snowflake.fetched == ["q1"]
    assert kept == {}


def test_a_table_whose_key_build_would_outlast_a_post_load_step_gets_its_key_before_the_load(env) -> None:
    from lib.run.orchestrator import run, start_run

    env.sf_execute("CREATE TABLE BIG (ID NUMBER(18,0) PRIMARY KEY, V VARCHAR)",
                   "INSERT INTO BIG SELECT SEQ8(), 'v' FROM TABLE(GENERATOR(ROWCOUNT => 5000))")
    config = env.config([{"source": "BIG"}], chunk_rows=1000)
    # a post-load step of 0.001 s cannot build a key over 5,000 rows at 1,000,000 rows a second
    start = start_run(config, post_load_seconds=0.001)
    assert env.pg_value("SELECT count(*) FROM pg_constraint WHERE conrelid = 'public.big'::regclass AND contype = 'p'") == 1
    assert env.pg_value(f"SELECT primary_key FROM {status.SCHEMA}.migration_table_status") in (None, [])
    assert run(config).status == "completed" and start.run_id == 1
    assert env.pg_value("SELECT count(*) FROM public.big") == 5000
    notes = env.pg_value(f"SELECT plan_notes::text FROM {status.SCHEMA}.migration_table_status")
    assert "primary key (id) built before the load" in notes
