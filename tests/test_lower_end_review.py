"""Hostile review of cb5d702 (a reconcile pass finishes only the tables waiting for their post-load step) and 61a8c5a
(a window at its lower end, written with its plan, is reconciled and completed by the planning transaction). Each
test says whether it showed a DEFECT (it failed on the reviewed code; fixed since) or something that HOLDS."""

from __future__ import annotations

import signal
import threading
import time
from typing import Any

import pytest

from lib import ledger
from lib import ledger as status
from lib.run.orchestrator import reconcile_tables, run
from tests.helpers import at_fault_point_once, cli

FAST = {"retry_base_seconds": 0.2, "retry_max_seconds": 1.0, "snapshot": False}
S = status.SCHEMA


def _table(name: str = "ITEMS", **extra: Any) -> dict[str, Any]:
    return {"source": name, "source_watermark": "UPDATED_AT", "merge_key": ["ID"], **extra}


def _source(env, name: str = "ITEMS", rows: int = 300, watermark: str = "TIMESTAMP_NTZ",
            value: str = "DATEADD(second, SEQ8(), '2024-01-01'::TIMESTAMP_NTZ)") -> None:
    env.sf_execute(f"CREATE TABLE {name} (ID NUMBER(18,0), NAME VARCHAR, UPDATED_AT {watermark})",
                   f"INSERT INTO {name} SELECT SEQ8(), 'item ' || SEQ8(), {value} "
                   f"FROM TABLE(GENERATOR(ROWCOUNT => {rows}))")


def _same_rows(env, table: str = "items") -> None:
    """The target holds each source row once, as the source has it."""
    source = {int(r[0]): r[1] for r in env.sf_rows(f"SELECT ID, NAME FROM {table.upper()}")}
    rows = env.pg_rows(f"SELECT id, name FROM public.{table}")
    target = {int(r[0]): r[1] for r in rows}
    assert len(rows) == len(target), "a row was doubled"
    missing = sorted(set(source) - set(target))
    assert not missing, f"{len(missing)} source row(s) missing from the target, e.g. {missing[:5]}"
    assert target == source


def _completes(monkeypatch) -> list[Any]:
    """The `completes` argument of every mark_done_with_plan call from now on (None: left to reconcile)."""
    seen: list[Any] = []
    real = ledger.mark_done_with_plan

    def spy(*args: Any, **kwargs: Any) -> bool:
        seen.append(args[11] if len(args) > 11 else kwargs.get("completes"))
        return real(*args, **kwargs)

    monkeypatch.setattr(ledger, "mark_done_with_plan", spy)
    return seen


def _verdict(env, run_id: int) -> list[tuple[Any, ...]]:
    return env.pg_rows(f"SELECT status, reconcile_status, source_count, rows_copied FROM {S}.migration_table_status "
                       "WHERE run_id = %s ORDER BY table_name", (run_id,))


def _watermark_rows_at_max(env, table: str = "ITEMS") -> int:
    return int(env.sf_rows(f"SELECT count(*) FROM {table} WHERE UPDATED_AT = (SELECT max(UPDATED_AT) FROM {table})")[0][0])


# --- 61a8c5a: which windows complete with their plan -------------------------------------------------------------


def test_a_no_op_window_completes_with_its_plan_and_its_verdict_is_true(env, monkeypatch) -> None:
    """HOLDS: nothing new (hi == lo): the planning transaction writes the rows at lo, marks the chunk done and the
    table matched and completed; the counts are the source's rows at lo and the target holds every row once."""
    _source(env)
    config = env.config([_table()], FAST)
    assert run(config).status == "completed"
    seen = _completes(monkeypatch)
    result = run(config)
    assert result.status == "completed", result.tables
    assert len(seen) == 1 and seen[0] is not None, seen
    at_max = _watermark_rows_at_max(env)
    assert _verdict(env, 2) == [("completed", "match", at_max, at_max)]
    assert env.pg_rows(f"SELECT status, worker FROM {S}.migration_chunk_status WHERE run_id = 2") == [("done", "planning")]
    assert env.pg_value(f"SELECT status FROM {S}.migration_runs WHERE run_id = 2") == "completed"
    _same_rows(env)


def test_a_window_with_newer_rows_is_not_completed_with_its_plan(env, monkeypatch) -> None:
    """HOLDS: a window that is NOT at its lower end (a newer row) is written with its plan but reconciled by the
    normal pass (a fresh count), then finished by its post-load step."""
    _source(env)
    config = env.config([_table()], FAST)
    assert run(config).status == "completed"
    env.sf_execute("INSERT INTO ITEMS VALUES (5000, 'new', '2025-01-01')")
    seen = _completes(monkeypatch)
    assert run(config).status == "completed"
    assert seen == [None]
    assert _verdict(env, 2) == [("completed", "match", 2, 2)]  # the boundary row and the new one
    _same_rows(env)


@pytest.mark.parametrize("deletes", ["hard", "soft"])
def test_a_no_op_window_with_a_deletes_pass_is_not_completed_with_its_plan_and_its_deletes_apply(
        env, monkeypatch, deletes) -> None:
    """HOLDS: deletes hard/soft: a no-op window still goes through the deletes pass: a row deleted in the source
    leaves the target (hard) or is marked (soft)."""
    _source(env)
    config = env.config([_table(deletes=deletes)], FAST)
    assert run(config).status == "completed"
    env.sf_execute("DELETE FROM ITEMS WHERE ID = 17")
    seen = _completes(monkeypatch)
    result = run(config)
    assert result.status == "completed", result.tables
    assert seen == [None]
    if deletes == "hard":
        assert env.pg_value("SELECT count(*) FROM public.items WHERE id = 17") == 0
    else:
        assert env.pg_value("SELECT _deleted_at IS NOT NULL FROM public.items WHERE id = 17")
    assert env.pg_value(f"SELECT count(*) FROM {S}.delete_passes WHERE run_id = 2") == 1


def test_a_no_op_window_with_verify_is_verified_after_it_completes_with_its_plan(env) -> None:
    """HOLDS: verify true: the chunk written and completed by planning is still checksummed in the same run."""
    _source(env)
    config = env.config([_table()], {**FAST, "verify": True})
    assert run(config).status == "completed"
    result = run(config)
    assert result.status == "completed", result.tables
    assert _verdict(env, 2)[0][:2] == ("completed", "match")
    assert env.pg_value(f"SELECT count(*) FROM {S}.chunk_checksums WHERE run_id = 2") >= 1


def test_watermark_lag_keeps_the_window_off_its_lower_end_and_recounts_it(env, monkeypatch) -> None:
    """HOLDS: watermark_lag lowers lo below the last hi: the window holds the rows of the lag, is not at its lower
    end, and is reconciled by the normal pass."""
    _source(env)
    config = env.config([_table(watermark_lag=10)], FAST)
    assert run(config).status == "completed"
    seen = _completes(monkeypatch)
    assert run(config).status == "completed"
    assert seen == [None]
    assert _verdict(env, 2) == [("completed", "match", 11, 11)]  # the last 10 seconds and the boundary row
    _same_rows(env)


def test_watermark_lag_with_the_rows_above_the_lowered_end_gone_completes_with_its_plan_and_loses_nothing(
        env, monkeypatch) -> None:
    """HOLDS: with watermark_lag, hi == lo only when the rows above the lowered end left the source (moved down):
    such a window completes with its plan; the moved rows are merged, and later rows are read by the next window."""
    _source(env, rows=20)
    config = env.config([_table(watermark_lag=10)], FAST)
    assert run(config).status == "completed"
    # the last hi is 2024-01-01 00:00:19; lo becomes 00:00:09: move every row above it down to 00:00:09
    env.sf_execute("UPDATE ITEMS SET NAME = 'moved', UPDATED_AT = '2024-01-01 00:00:09' "
                   "WHERE UPDATED_AT > '2024-01-01 00:00:09'")
    seen = _completes(monkeypatch)
    assert run(config).status == "completed"
    assert len(seen) == 1 and seen[0] is not None, seen
    assert _verdict(env, 2) == [("completed", "match", 11, 11)]
    env.sf_execute("INSERT INTO ITEMS VALUES (5000, 'new', '2024-01-01 00:00:05')")  # inside the next lag
    assert run(config).status == "completed"
    _same_rows(env)


@pytest.mark.parametrize(("watermark", "value", "later"), [
    ("DATE", "DATEADD(day, SEQ8(), '2024-01-01'::DATE)", "'2030-01-01'::DATE"),
    ("NUMBER(12,2)", "SEQ8() / 4", "9999.25"),
    ("TIMESTAMP_TZ", "DATEADD(second, SEQ8(), '2024-01-01 00:00:00 +00:00'::TIMESTAMP_TZ)",
     "'2030-01-01 00:00:00 +00:00'::TIMESTAMP_TZ"),
])
def test_a_no_op_window_of_other_watermark_types_completes_with_its_plan_and_the_next_window_is_right(
        env, monkeypatch, watermark, value, later) -> None:
    """HOLDS: DATE, NUMBER with decimals and TIMESTAMP_TZ watermarks: the no-op window completes with its plan,
    its counts are the rows at the last end, and a later row is read by the next window."""
    _source(env, rows=40, watermark=watermark, value=value)
    config = env.config([_table()], FAST)
    assert run(config).status == "completed"
    env.sf_execute("UPDATE ITEMS SET NAME = 'same end' WHERE ID = 39")  # still at the last end
    seen = _completes(monkeypatch)
    assert run(config).status == "completed"
    assert len(seen) == 1 and seen[0] is not None, seen
    at_max = _watermark_rows_at_max(env)
    assert _verdict(env, 2) == [("completed", "match", at_max, at_max)]
    _same_rows(env)
    env.sf_execute(f"INSERT INTO ITEMS VALUES (5000, 'later', {later})")
    assert run(config).status == "completed"
    _same_rows(env)


def test_a_no_op_window_with_nul_bytes_stripped_completes_with_its_plan(env, monkeypatch) -> None:
    """HOLDS: nul_bytes strip: the row at the end holds a NUL; the window is written stripped, completes with its
    plan, and its chunk records the changed value."""
    _source(env, rows=10)
    env.sf_execute("UPDATE ITEMS SET NAME = 'a' || CHR(0) || 'b' WHERE ID = 9")
    config = env.config([_table()], {**FAST, "nul_bytes": "strip"})
    assert run(config).status == "completed"
    seen = _completes(monkeypatch)
    assert run(config).status == "completed"
    assert len(seen) == 1 and seen[0] is not None, seen
    assert _verdict(env, 2) == [("completed", "match", 1, 1)]
    assert env.pg_value(f"SELECT values_changed FROM {S}.migration_chunk_status WHERE run_id = 2") == 1
    assert env.pg_value("SELECT name FROM public.items WHERE id = 9") == "ab"


def test_an_added_column_with_no_new_rows_is_not_completed_with_its_plan_and_is_filled(env, monkeypatch) -> None:
    """HOLDS: a column added in the source since the last window: the probe's rows are not used, the table is
    planned as usual (the window that fills the column), reconciled by the normal pass, and every row has it."""
    _source(env, rows=50)
    config = env.config([_table()], FAST)
    assert run(config).status == "completed"
    env.sf_execute("ALTER TABLE ITEMS ADD COLUMN EXTRA VARCHAR", "UPDATE ITEMS SET EXTRA = 'x' || ID")
    seen = _completes(monkeypatch)
    result = run(config)
    assert result.status == "completed", result.tables
    assert all(s is None for s in seen), seen
    assert env.pg_value("SELECT count(*) FROM public.items WHERE extra IS NULL") == 0
    _same_rows(env)


def test_a_row_arriving_at_the_lower_end_while_the_window_is_written_is_read_by_the_next_window(env) -> None:
    """HOLDS: a row committed with the window's end as its watermark after the probe read it is not in this
    window's count (its `match` speaks of the rows read), and the next window, which starts at that end, reads it."""
    _source(env)
    config = env.config([_table()], FAST)
    assert run(config).status == "completed"
    end = str(env.sf_rows("SELECT max(UPDATED_AT) FROM ITEMS")[0][0])

    def arrive() -> None:
        env.sf_execute(f"INSERT INTO ITEMS VALUES (6000, 'late', '{end}')")

    with pytest.MonkeyPatch.context() as mp:
        done = at_fault_point_once(mp, "before_commit", arrive)
        assert run(config).status == "completed"
    assert done
    assert _verdict(env, 2) == [("completed", "match", 1, 1)]
    assert env.pg_value("SELECT count(*) FROM public.items WHERE id = 6000") == 0
    assert run(config).status == "completed"
    _same_rows(env)


# --- 61a8c5a: kills ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("point", ["before_commit@1", "after_commit@1"])
def test_a_kill_while_a_no_op_window_completes_with_its_plan_then_resume(env, point) -> None:
    """HOLDS: killed in the planning transaction (nothing of run 2 stays) or right after its commit (the table is
    completed, the run still running): the resume finishes the run, each row once, verdict match."""
    _source(env)
    _source(env, "ITEMS2")
    path = env.write_config([_table(), _table("ITEMS2")], FAST)
    assert cli(env.env, path).returncode == 0
    killed = cli({**env.env, "MIGRATION_FAULTS": point}, path)
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    tables = env.pg_rows(f"SELECT status, reconcile_status FROM {S}.migration_table_status WHERE run_id = 2")
    assert tables == ([("completed", "match")] if point.startswith("after") else [])
    assert env.pg_value(f"SELECT status FROM {S}.migration_runs WHERE run_id = 2") == "running"
    resumed = cli(env.env, path)
    assert resumed.returncode == 0 and "resuming run 2" in resumed.stdout, resumed.stdout + resumed.stderr
    assert [v[:2] for v in _verdict(env, 2)] == [("completed", "match"), ("completed", "match")]
    assert env.pg_value(f"SELECT status FROM {S}.migration_runs WHERE run_id = 2") == "completed"
    assert env.pg_rows(f"SELECT DISTINCT worker FROM {S}.migration_chunk_status WHERE run_id = 2") == [("planning",)]
    _same_rows(env)
    _same_rows(env, "items2")


# --- 61a8c5a: what the ledger says about it --------------------------------------------------------------------


def test_a_table_completed_with_its_plan_is_not_completed_before_its_chunk(env) -> None:
    """DEFECT, fixed (minor, dashboards): the table's completed_at and reconciled_at are now() of the planning transaction,
    i.e. its BEGIN, before its only chunk was even started (the chunk's times are clock_timestamp()): the ledger
    says the table completed before its rows were written, and its duration (completed_at - started_at) is 0, so
    the table_progress view reports rows_per_second as rows / 0.001 s. Before 61a8c5a the post-load step set it
    after the chunk's commit."""
    _source(env)
    config = env.config([_table()], FAST)
    assert run(config).status == "completed"
    time.sleep(0.05)
    assert run(config).status == "completed"
    table_done, reconciled, started, chunk_started, chunk_done = env.pg_rows(
        f"SELECT t.completed_at, t.reconciled_at, t.started_at, c.started_at, c.completed_at "
        f"FROM {S}.migration_table_status t JOIN {S}.migration_chunk_status c USING (run_id, table_name) "
        "WHERE run_id = 2")[0]
    rate = env.pg_value(f"SELECT rows_per_second FROM {S}.table_progress WHERE run_id = 2")
    assert table_done >= chunk_done and reconciled >= chunk_done, (
        f"table completed at {table_done} and reconciled at {reconciled}, its chunk started at {chunk_started} and "
        f"completed at {chunk_done} (table started at {started}); table_progress says {rate} rows/s")


# --- cb5d702: the reconcile pass finishes only the tables that wait ----------------------------------------------


def _killed_in_post_load(env) -> Any:
    """ITEMS's first window (a plain copy) killed in its post-load step: run 1 running, its table 'post_load'."""
    _source(env)
    path = env.write_config([_table()], FAST)
    killed = cli({**env.env, "MIGRATION_FAULTS": "post_load@1"}, path)
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    assert env.pg_value(f"SELECT status FROM {S}.migration_table_status") == "post_load"
    return path


def test_a_table_left_in_post_load_by_a_kill_is_finished_on_resume(env) -> None:
    """HOLDS: the table left 'post_load' is in the one query's set and is finished by the resume's reconcile pass."""
    path = _killed_in_post_load(env)
    resumed = cli(env.env, path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert env.pg_rows(f"SELECT status, reconcile_status FROM {S}.migration_table_status") == [("completed", "match")]
    assert env.pg_value(f"SELECT status FROM {S}.migration_runs") == "completed"
    _same_rows(env)


def test_two_reconcile_passes_at_once_finish_a_waiting_table_once(env) -> None:
    """HOLDS: two processes' reconcile passes both see the table waiting; the row lock lets one finish it, the other
    finds nothing to claim and neither fails."""
    path = _killed_in_post_load(env)
    from lib.config import load_config
    from lib.target import postgres as pg

    config = load_config("test", {}, path)
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def reconcile() -> None:
        try:
            with pg.connect(config.postgres_connect_args(), autocommit=True) as conn:
                barrier.wait()
                reconcile_tables(conn, config, 1, only_running=True)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=reconcile) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert env.pg_rows(f"SELECT status, reconcile_status FROM {S}.migration_table_status") == [("completed", "match")]


def test_a_lambda_reconcile_step_out_of_time_leaves_the_waiting_table_for_the_next_invocation(env, monkeypatch) -> None:
    """HOLDS: a Step Functions Reconcile invocation whose deadline has passed finishes nothing and says `more`; the
    next one finishes the table; the run then finalizes completed."""
    path = _killed_in_post_load(env)
    monkeypatch.setenv("MIGRATION_CONFIG", str(path))
    from scripts import lambda_handler

    class Context:
        def __init__(self, seconds: float) -> None:
            self.seconds = seconds

        def get_remaining_time_in_millis(self) -> int:
            return int(self.seconds * 1000)

    event = {"run_id": 1, "input": {"source_name": "test"}}
    first = lambda_handler.reconcile(event, Context(1))  # less than the safety margin: no time at all
    assert first["more"] and first["left"] == 1, first
    assert env.pg_value(f"SELECT status FROM {S}.migration_table_status") == "post_load"
    second = lambda_handler.reconcile(event, Context(900))
    assert not second["more"], second
    assert lambda_handler.finalize(event)["status"] == "completed"
    assert env.pg_value(f"SELECT status FROM {S}.migration_table_status") == "completed"


# --- 61a8c5a: Step Functions and two starters ---------------------------------------------------------------------


@pytest.fixture
def machine(env, monkeypatch):
    """The real state machine under moto, as tests/test_step_functions.py's `aws` fixture runs it."""
    from moto import mock_aws
    from moto.awslambda_simple.models import LambdaSimpleBackend

    from tests import test_step_functions as sfn

    monkeypatch.setenv("AWS_DEFAULT_REGION", sfn.REGION)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setattr(LambdaSimpleBackend, "invoke", sfn._invoke_in_process)
    with mock_aws(config={"stepfunctions": {"execute_state_machine": True}, "lambda": {"use_docker": False}}):
        yield sfn.Machine(env, monkeypatch)


def test_a_step_functions_execution_with_verify_that_finds_nothing_new_verifies_and_completes(machine) -> None:
    """HOLDS: the Plan step completes the no-op window with its plan; Reconcile has nothing to do, the Verify step
    still checksums its chunk, and Finalize completes the run."""
    machine.env.sf_execute("CREATE TABLE W (ID NUMBER(18,0) PRIMARY KEY, V VARCHAR, TS TIMESTAMP_NTZ)",
                       "INSERT INTO W SELECT SEQ8(), 'v', DATEADD(second, SEQ8(), '2024-01-01'::TIMESTAMP_NTZ) "
                       "FROM TABLE(GENERATOR(ROWCOUNT => 1000))")
    machine.configure([{"source": "W", "source_watermark": "TS", "chunking_columns": ["ID"],
                    "chunking_column_types": ["numeric"]}], snapshot=False, verify=True)
    assert machine.wait(machine.start(workers=1))["status"] == "SUCCEEDED"
    assert machine.wait(machine.start(workers=1))["status"] == "SUCCEEDED"
    assert machine.env.pg_rows(f"SELECT status FROM {S}.migration_runs ORDER BY run_id") == [("completed",), ("completed",)]
    assert _verdict(machine.env, 2) == [("completed", "match", 1, 1)]
    assert machine.env.pg_rows(f"SELECT result FROM {S}.verification WHERE run_id = 2") == [("match",)]


def test_two_starters_of_a_no_op_window_at_once_leave_each_row_once_and_no_run_running(env) -> None:
    """HOLDS: two processes start at once on a window that finds nothing new: one plans and completes it, the
    other joins (or starts the next run after it); no run stays running, every verdict is match."""
    from tests.helpers import cli_popen

    _source(env)
    path = env.write_config([_table()], FAST)
    assert cli(env.env, path).returncode == 0
    procs = [cli_popen(env.env, path) for _ in range(2)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert {s for (s,) in env.pg_rows(f"SELECT status FROM {S}.migration_runs")} == {"completed"}
    assert {r[:2] for r in env.pg_rows(f"SELECT reconcile_status, status FROM {S}.migration_table_status")} \
        == {("match", "completed")}
    _same_rows(env)
