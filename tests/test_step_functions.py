"""The real state machine definition, executed by moto's Step Functions interpreter, with every
Lambda task dispatched in-process to scripts/lambda_handler.py, against the local stack."""

from __future__ import annotations

import importlib
import io
import json
import time
import uuid
import zipfile
from itertools import pairwise
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws
from moto.awslambda_simple.models import LambdaSimpleBackend

from lib import faults
from lib import ledger as status
from lib.errors import ConfigError, FatalError, TransientError
from lib.run.step_functions import EXECUTION_OVERHEAD_EVENTS, HISTORY_LIMIT, continuation_name, events_per_loop, max_loops_for, split_input
from scripts import lambda_handler
from tests.helpers import fail_planning_once

ROOT = Path(__file__).resolve().parent.parent
ASL = ROOT / "aws" / "step_functions" / "migration.asl.json"
FUNCTIONS = {
    "PlanFunctionArn": "plan", "WorkFunctionArn": "work_slot", "CheckFunctionArn": "check",
    "ReconcileFunctionArn": "reconcile", "VerifyFunctionArn": "verify", "FinalizeFunctionArn": "finalize",
    "FailureFunctionArn": "record_failure", "ContinueFunctionArn": "continue_as_new",
}
REGION = "us-east-1"


class LambdaContext:
    def __init__(self, timeout_seconds: float) -> None:
        self._deadline = time.monotonic() + timeout_seconds

    def get_remaining_time_in_millis(self) -> int:
        return int(max(self._deadline - time.monotonic(), 0) * 1000)


def _invoke_in_process(self: LambdaSimpleBackend, function_name: str, qualifier: Any, body: Any,
                       headers: Any, response_headers: dict[str, str]) -> bytes:
    """What Lambda does: call the configured handler; an exception becomes AWS's error envelope."""
    function = self.get_function(function_name, qualifier)
    module, _, attr = function.handler.rpartition(".")
    handler = getattr(importlib.import_module(module), attr)
    event = json.loads(body) if body else {}
    try:
        return json.dumps(handler(event, LambdaContext(function.timeout))).encode()
    except Exception as exc:  # noqa: BLE001 - reported exactly as Lambda reports it
        response_headers["x-amz-function-error"] = "Unhandled"
        return json.dumps({"errorType": type(exc).__name__, "errorMessage": str(exc)}).encode()


@pytest.fixture
def aws(env, monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setattr(LambdaSimpleBackend, "invoke", _invoke_in_process)
    with mock_aws(config={"stepfunctions": {"execute_state_machine": True}, "lambda": {"use_docker": False}}):
        yield Machine(env, monkeypatch)


class Machine:
    def __init__(self, env, monkeypatch) -> None:
        self.env = env
        self.monkeypatch = monkeypatch
        self.sfn = boto3.client("stepfunctions", region_name=REGION)
        self.lam = boto3.client("lambda", region_name=REGION)
        role = boto3.client("iam", region_name=REGION).create_role(
            RoleName="migration", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
        self.work_timeout = 900
        definition = ASL.read_text()
        for placeholder, handler in FUNCTIONS.items():
            arn = self.lam.create_function(
                FunctionName=handler, Runtime="python3.11", Role=role, Handler=f"scripts.lambda_handler.{handler}",
                Code={"ZipFile": _empty_zip()}, Timeout=900,
            )["FunctionArn"]
            definition = definition.replace("${" + placeholder + "}", arn)
        self.arn = self.sfn.create_state_machine(name="migration", definition=definition, roleArn=role)["stateMachineArn"]

    def configure(self, tables: list[dict[str, Any]], **defaults: Any) -> None:
        path = self.env.write_config(tables, defaults={"chunk_rows": 500, "batch_size": 250, **defaults})
        self.monkeypatch.setenv("MIGRATION_CONFIG", str(path))

    def work_timeout_seconds(self, seconds: int) -> None:
        self.lam.update_function_configuration(FunctionName="work_slot", Timeout=seconds)

    def start(self, **execution_input: Any) -> str:
        payload = {"source_name": "test", "loop_wait_seconds": 0, **execution_input}
        return self.sfn.start_execution(stateMachineArn=self.arn, name=f"test-{uuid.uuid4().hex[:12]}",
                                        input=json.dumps(payload))["executionArn"]

    def wait(self, execution_arn: str, timeout: float = 180) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            described = self.sfn.describe_execution(executionArn=execution_arn)
            if described["status"] != "RUNNING":
                return described
            time.sleep(0.2)
        raise AssertionError(f"execution {execution_arn} still running after {timeout}s")

    def history(self, execution_arn: str) -> list[dict[str, Any]]:
        return self.sfn.get_execution_history(executionArn=execution_arn, maxResults=1000)["events"]

    def entered(self, execution_arn: str, state: str) -> int:
        return sum(1 for e in self.history(execution_arn)
                   if e.get("stateEnteredEventDetails", {}).get("name") == state)


def _empty_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("placeholder.txt", "handlers run in-process in tests")
    return buffer.getvalue()


def _fail_first_work_slot(monkeypatch, error: Exception) -> None:
    """The first worker invocation raises `error`; later ones do the real work."""
    real = lambda_handler.work_slot
    calls = {"n": 0}

    def failing_once(event, context=None):
        calls["n"] += 1
        if calls["n"] == 1:
            raise error
        return real(event, context)

    monkeypatch.setattr(lambda_handler, "work_slot", failing_once)


def _load(env, name: str, rows: int) -> None:
    env.sf_execute(f"CREATE TABLE {name} AS SELECT (SEQ8() * 3)::NUMBER(18,0) AS ID, 'v' || SEQ8() AS V "
                   f"FROM TABLE(GENERATOR(ROWCOUNT => {rows}))")


def _table(name: str) -> dict[str, Any]:
    return {"source": name, "chunking_columns": ["ID"], "chunking_column_types": ["numeric"]}


def _assert_copied(env, name: str, rows: int) -> None:
    assert env.pg_value(f"SELECT count(*) FROM public.{name.lower()}") == rows
    assert env.pg_value(f"SELECT count(DISTINCT id) FROM public.{name.lower()}") == rows


def test_multi_table_migration_succeeds_with_reconciled_counts(aws) -> None:
    _load(aws.env, "A", 3000)
    _load(aws.env, "B", 2000)
    aws.configure([_table("A"), _table("B")])

    result = aws.wait(aws.start(workers=3))

    assert result["status"] == "SUCCEEDED", result
    _assert_copied(aws.env, "A", 3000)
    _assert_copied(aws.env, "B", 2000)
    assert aws.env.pg_rows(f"SELECT reconcile_status, count(*) FROM {status.SCHEMA}.migration_table_status GROUP BY 1") \
        == [("match", 2)]
    assert aws.env.pg_rows(f"SELECT status, total_rows_copied FROM {status.SCHEMA}.migration_runs") == [("completed", 5000)]


def test_transient_worker_error_is_retried_by_the_state_machine(aws, monkeypatch) -> None:
    _load(aws.env, "T", 2000)
    aws.configure([_table("T")])
    _fail_first_work_slot(monkeypatch, TransientError("connection reset by peer (injected)"))
    execution = aws.start(workers=1)
    result = aws.wait(execution)

    assert result["status"] == "SUCCEEDED", result
    failures = [e for e in aws.history(execution) if e["type"] == "LambdaFunctionFailed"]
    assert failures and failures[0]["lambdaFunctionFailedEventDetails"]["error"] == "TransientError"
    _assert_copied(aws.env, "T", 2000)


def test_fatal_error_ends_in_the_failure_path_with_the_run_marked_failed(aws, monkeypatch) -> None:
    _load(aws.env, "F", 1000)
    aws.configure([_table("F")])

    def broken(event, context=None):
        raise FatalError("permission denied for table f (injected)")

    monkeypatch.setattr(lambda_handler, "work_slot", broken)
    execution = aws.start(workers=2)
    result = aws.wait(execution)

    assert result["status"] == "FAILED"
    assert aws.entered(execution, "RecordFailure") == 1
    state, error = aws.env.pg_rows(f"SELECT status, error FROM {status.SCHEMA}.migration_runs")[0]
    assert state == "failed" and "FatalError" in error and "permission denied" in error


def test_unknown_input_keys_are_refused_before_any_work(aws) -> None:
    _load(aws.env, "U", 10)
    aws.configure([_table("U")])
    execution = aws.start(workers=1, drop_target_first=True)
    result = aws.wait(execution)
    assert result["status"] == "FAILED"
    failed = next(e for e in aws.history(execution) if e["type"] == "LambdaFunctionFailed")
    assert failed["lambdaFunctionFailedEventDetails"]["error"] == "ConfigError"
    assert "drop_target_first" in failed["lambdaFunctionFailedEventDetails"]["cause"]
    assert aws.env.pg_value("SELECT to_regclass('migration_status.migration_runs')") is None, "no run was started"


def test_worker_out_of_time_leaves_chunks_to_the_next_loop_and_nothing_is_lost(aws, monkeypatch) -> None:
    _load(aws.env, "L", 40_000)
    aws.configure([_table("L")], parallel_threads=1)
    monkeypatch.setattr(lambda_handler, "SAFETY_MARGIN_SECONDS", 0.0)
    aws.work_timeout_seconds(1)  # each worker slot gets about one second: a few chunks at most

    execution = aws.start(workers=1)
    result = aws.wait(execution)

    assert result["status"] == "SUCCEEDED", result
    assert aws.entered(execution, "Check") >= 2, "the work did not fit in one Lambda and took several loops"
    _assert_copied(aws.env, "L", 40_000)


def test_continue_as_new_resumes_the_same_run(aws, monkeypatch) -> None:
    _load(aws.env, "C", 40_000)
    aws.configure([_table("C")], parallel_threads=1)
    monkeypatch.setattr(lambda_handler, "SAFETY_MARGIN_SECONDS", 0.0)
    aws.work_timeout_seconds(1)

    first = aws.start(workers=1, max_loops=1, no_resume=True)
    assert aws.wait(first)["status"] == "SUCCEEDED"
    assert aws.entered(first, "ContinuedAsNew") == 1

    deadline = time.monotonic() + 180
    while True:
        executions = aws.sfn.list_executions(stateMachineArn=aws.arn)["executions"]
        if all(e["status"] != "RUNNING" for e in executions) and aws.env.pg_value(
                f"SELECT status FROM {status.SCHEMA}.migration_runs") == "completed":
            break
        assert time.monotonic() < deadline, executions
        time.sleep(0.3)
    assert len(executions) >= 2
    assert all(e["status"] == "SUCCEEDED" for e in executions)
    assert aws.env.pg_value(f"SELECT count(*) FROM {status.SCHEMA}.migration_runs") == 1, "one run, resumed"
    _assert_copied(aws.env, "C", 40_000)


def test_more_than_40_workers_use_the_distributed_map(aws) -> None:
    _load(aws.env, "D", 5000)
    aws.configure([_table("D")], parallel_threads=1)

    execution = aws.start(workers=41, max_target_connections=200)
    result = aws.wait(execution)

    assert result["status"] == "SUCCEEDED", result
    assert aws.entered(execution, "WorkDistributed") >= 1 and aws.entered(execution, "Work") == 0
    _assert_copied(aws.env, "D", 5000)


def test_a_slot_that_times_out_ends_normally_and_the_next_loop_finishes_the_work(aws, monkeypatch) -> None:
    _load(aws.env, "Z", 3000)
    aws.configure([_table("Z")])
    _fail_first_work_slot(monkeypatch, SandboxTimedout("Task timed out after 900.00 seconds (injected)"))
    execution = aws.start(workers=1)
    result = aws.wait(execution)
    assert result["status"] == "SUCCEEDED", result
    assert aws.entered(execution, "CopyChunksSlotLost") == 1 and aws.entered(execution, "Check") >= 2
    _assert_copied(aws.env, "Z", 3000)


# Lambda reports a timeout with this errorType; Retry does not list it, the slot's Catch does.
SandboxTimedout = type("Sandbox.Timedout", (Exception,), {})


def test_bad_execution_settings_are_a_config_error() -> None:
    for bad in ({"workers": "abc"}, {"workers": 0}, {"max_loops": 0}, {"workers": 5000}, {"loop_wait_seconds": True}):
        with pytest.raises(ConfigError):
            split_input({"source_name": "x", **bad})
    with pytest.raises(ConfigError) as caught:
        split_input({"source_name": "x", "workers": 0, "max_loops": "9", "no_resume": "false"})
    assert len(caught.value.problems) == 2  # both listed; no_resume is checked with the config


def test_a_slot_that_stays_throttled_is_lost_not_the_whole_map(aws, monkeypatch) -> None:
    _load(aws.env, "Q", 3000)
    aws.configure([_table("Q")])
    real = lambda_handler.work_slot
    calls = {"n": 0}

    def throttled_for_a_while(event, context=None):
        calls["n"] += 1
        if calls["n"] <= 5:  # the first invocation and all four of its retries
            raise LambdaThrottled("Rate Exceeded. (injected)")
        return real(event, context)

    monkeypatch.setattr(lambda_handler, "work_slot", throttled_for_a_while)
    execution = aws.start(workers=1)
    result = aws.wait(execution, timeout=240)

    assert result["status"] == "SUCCEEDED", result
    assert aws.entered(execution, "CopyChunksSlotLost") == 1 and aws.entered(execution, "Check") >= 2
    _assert_copied(aws.env, "Q", 3000)


LambdaThrottled = type("Lambda.TooManyRequestsException", (Exception,), {})


def test_workers_and_threads_are_capped_by_max_target_connections(aws) -> None:
    _load(aws.env, "W", 10)
    aws.configure([_table("W")])
    planned = lambda_handler.plan({"input": {"source_name": "test", "workers": 10, "parallel_threads": 8,
                                             "max_target_connections": 20}, "execution_id": "arn:x"})
    slots, threads = len(planned["slots"]), planned["threads_per_slot"]
    assert (slots, threads) == (6, 1)
    assert slots * (threads * 2 + 1) <= 20
    worked = lambda_handler.work_slot({"input": {"source_name": "test", "parallel_threads": 8,
                                                 "max_target_connections": 20}, "run_id": planned["run_id"],
                                       "slot": 0, "threads": threads})
    assert worked["threads"] == 1
    assert not planned["read_ahead"]  # 6 slots of 1 thread reading two chunks would hold 30 connections


def test_slots_read_ahead_when_the_connection_cap_allows_it_and_copy_every_row(aws) -> None:
    _load(aws.env, "RA", 3000)
    aws.configure([_table("RA")], chunk_rows=500)
    execution = aws.start(workers=2, parallel_threads=2)  # 2 × (2 × 4 + 1) = 18 connections of 64
    result = aws.wait(execution, timeout=240)

    assert result["status"] == "SUCCEEDED", result
    _assert_copied(aws.env, "RA", 3000)
    chunks = aws.env.pg_rows(f"SELECT worker, started_at, completed_at FROM {status.SCHEMA}.migration_chunk_status "
                             "ORDER BY worker, started_at")
    by_worker: dict[str, list[tuple]] = {}
    for worker, started, completed in chunks:
        by_worker.setdefault(worker, []).append((started, completed))
    # some thread claimed a chunk before it committed its previous one: it read ahead
    assert any(later[0] < earlier[1] for runs in by_worker.values() for earlier, later in pairwise(runs)), by_worker


def test_max_loops_keeps_one_execution_within_its_event_history() -> None:
    for slots in (1, 4, 40, 41, 1000):
        loops = max_loops_for(slots)
        assert EXECUTION_OVERHEAD_EVENTS + loops * events_per_loop(slots) <= HISTORY_LIMIT * 0.9
        assert EXECUTION_OVERHEAD_EVENTS + (loops + 1) * events_per_loop(slots) > HISTORY_LIMIT * 0.9
    assert max_loops_for(40) < 50 <= max_loops_for(4)  # the default 50 is lowered for 40 inline slots


def test_the_plan_step_lowers_max_loops_for_many_inline_slots(aws) -> None:
    _load(aws.env, "M", 10)
    aws.configure([_table("M")])
    planned = lambda_handler.plan({"input": {"source_name": "test", "workers": 40, "max_loops": 50,
                                             "max_target_connections": 1000}, "execution_id": "arn:y"})
    assert planned["max_loops"] == max_loops_for(40) < 50


def test_history_events_per_loop_stay_within_the_arithmetic(aws, monkeypatch) -> None:
    """moto's interpreter writes the same kinds of events as AWS; a loop of 3 slots must not write more
    than the arithmetic that bounds max_loops assumes."""
    _load(aws.env, "H", 40_000)
    aws.configure([_table("H")], parallel_threads=1)
    monkeypatch.setattr(lambda_handler, "SAFETY_MARGIN_SECONDS", 0.0)
    aws.work_timeout_seconds(1)
    # at least 50 ms a chunk: 81 chunks over 3 slots outlast a 1 s Work step however fast the machine is, so the
    # execution loops (a slower machine loops more, which the bound below scales with)
    real = faults.maybe_crash
    monkeypatch.setattr(faults, "maybe_crash", lambda point: (time.sleep(0.05) if point == "after_claim" else None,
                                                              real(point)))
    execution = aws.start(workers=3)
    # every slot copies at least one chunk (worker.WorkPlan.may_claim), so the loops are bounded by the chunks,
    # not by how fast a shared CPU runs a slot's setup within its one second: the wait is sized for that bound
    assert aws.wait(execution, timeout=600)["status"] == "SUCCEEDED"
    events = aws.history(execution)
    loops = aws.entered(execution, "Check")
    assert loops >= 2
    assert len(events) <= EXECUTION_OVERHEAD_EVENTS + loops * events_per_loop(3)


def test_continue_as_new_names_its_execution_by_run_and_step_and_a_retry_starts_nothing_new(aws) -> None:
    event = {"state_machine_arn": aws.arn, "run_id": 7,
             "input": {"source_name": "test", "continuation": 3, "lineage": "arn:aws:states:x:execution:m:first"}}
    first = lambda_handler.continue_as_new(event)
    again = lambda_handler.continue_as_new(event)  # Step Functions retried the step: still running, same input
    aws.wait(first["execution_arn"])  # (it fails at once: this test configured no source)
    late = lambda_handler.continue_as_new(event)  # retried after the continuation already ended
    assert first["already_started"] is False and late["already_started"] is True
    assert first["execution_name"] == again["execution_name"] == late["execution_name"] \
        == continuation_name(7, event["input"]["lineage"], 3)
    names = [e["name"] for e in aws.sfn.list_executions(stateMachineArn=aws.arn)["executions"]]
    assert names.count(first["execution_name"]) == 1
    other_chain = continuation_name(7, "arn:aws:states:x:execution:m:second", 3)
    assert other_chain != first["execution_name"] and len(other_chain) <= 80


def test_a_transient_error_planning_the_second_table_resumes_the_run_the_retry_started(aws, monkeypatch) -> None:
    _load(aws.env, "P1", 1000)
    _load(aws.env, "P2", 1000)
    aws.configure([_table("P1"), _table("P2")])
    failed = fail_planning_once(monkeypatch, "P2")
    execution = aws.start(workers=2, no_resume=True)
    result = aws.wait(execution)

    assert result["status"] == "SUCCEEDED", result
    assert failed and any(e["type"] == "LambdaFunctionFailed" for e in aws.history(execution))
    assert aws.env.pg_rows(f"SELECT run_id, status FROM {status.SCHEMA}.migration_runs") == [(1, "completed")]
    _assert_copied(aws.env, "P1", 1000)
    _assert_copied(aws.env, "P2", 1000)


def test_the_work_function_has_reserved_concurrency() -> None:
    from cfnlint.decode import cfn_yaml

    template = cfn_yaml.load(str(ROOT / "aws" / "template.yaml"))
    reserved = template["Resources"]["WorkFunction"]["Properties"]["ReservedConcurrentExecutions"]
    assert reserved == {"Ref": "WorkReservedConcurrency"}
    assert template["Parameters"]["WorkReservedConcurrency"]["Default"] >= 1


def test_the_state_machine_runs_watermark_merges_and_swap_reloads_unchanged(aws) -> None:
    aws.env.sf_execute(
        "CREATE TABLE W (ID NUMBER(18,0) PRIMARY KEY, V VARCHAR, TS TIMESTAMP_NTZ)",
        "INSERT INTO W SELECT SEQ8(), 'v', DATEADD(second, SEQ8(), '2024-01-01'::TIMESTAMP_NTZ) "
        "FROM TABLE(GENERATOR(ROWCOUNT => 2000))",
    )
    _load(aws.env, "S", 1500)
    with aws.env.pg() as conn:
        conn.execute("CREATE TABLE public.s (id bigint PRIMARY KEY, v text)")
        conn.execute("INSERT INTO public.s SELECT g, 'old' FROM generate_series(1, 10) g")
    aws.configure([{**_table("W"), "source_watermark": "TS"}, {**_table("S"), "load_mode": "swap"}])

    assert aws.wait(aws.start(workers=2))["status"] == "SUCCEEDED"
    aws.env.sf_execute("UPDATE W SET V = 'changed', TS = '2025-01-01' WHERE ID < 20")
    assert aws.wait(aws.start(workers=2))["status"] == "SUCCEEDED"

    assert aws.env.pg_value("SELECT count(*) FROM public.w WHERE v = 'changed'") == 20
    loads = aws.env.pg_rows(f"SELECT run_id, table_name, load_mode, rows_read, rows_updated FROM {status.SCHEMA}.table_loads "
                            "ORDER BY run_id, table_name")
    assert [(r[0], r[1].split(".")[-1], r[2], r[3], r[4]) for r in loads] == [
        (1, "S", "swap", 1500, 0), (1, "W", "copy", 2000, 0), (2, "S", "swap", 1500, 0),
        (2, "W", "merge", 20 + 1, 20)]  # the 20 changed rows and the one at the last window's end (inclusive lo)
    _assert_copied(aws.env, "S", 1500)
    assert aws.env.pg_value("SELECT count(*) FROM public.s__backup_1") == 10
    assert aws.env.pg_value("SELECT count(*) FROM public.s__backup_2") == 1500


def test_the_verify_state_checks_content_when_the_config_asks_for_it(aws) -> None:
    _load(aws.env, "V", 2000)
    aws.configure([_table("V")], verify=True)
    execution = aws.start(workers=2)
    assert aws.wait(execution)["status"] == "SUCCEEDED"
    assert aws.entered(execution, "Verify") == 1
    chunks = aws.env.pg_value(f"SELECT count(*) FROM {status.SCHEMA}.migration_chunk_status")
    assert aws.env.pg_value(f"SELECT count(*) FROM {status.SCHEMA}.verification WHERE result = 'match'") == chunks


def test_a_run_that_finds_nothing_new_is_planned_and_written_by_the_plan_step_in_one_snowflake_query(aws) -> None:
    from lib.source import snowflake as snowflake_source

    aws.env.sf_execute("CREATE TABLE W (ID NUMBER(18,0) PRIMARY KEY, V VARCHAR, TS TIMESTAMP_NTZ)",
                       "INSERT INTO W SELECT SEQ8(), 'v', DATEADD(second, SEQ8(), '2024-01-01'::TIMESTAMP_NTZ) "
                       "FROM TABLE(GENERATOR(ROWCOUNT => 2000))")
    aws.configure([{**_table("W"), "source_watermark": "TS"}], snapshot=False)
    assert aws.wait(aws.start(workers=2))["status"] == "SUCCEEDED"
    sent: list[str] = []
    real = snowflake_source.run
    aws.monkeypatch.setattr(snowflake_source, "run", lambda cur, sql, params=None: sent.append(sql) or real(cur, sql, params))

    assert aws.wait(aws.start(workers=2))["status"] == "SUCCEEDED"

    assert len(sent) == 1 and "_MIGRATION_HI" in sent[0], sent  # the probe, whose rows the Plan step wrote
    chunks = aws.env.pg_rows(f"SELECT status, worker, rows_copied FROM {status.SCHEMA}.migration_chunk_status "
                             "WHERE run_id = 2")
    assert chunks == [("done", "planning", 1)]  # the row at the last window's end
    assert aws.env.pg_rows(f"SELECT status, reconcile_status FROM {status.SCHEMA}.migration_table_status "
                           "WHERE run_id = 2") == [("completed", "match")]
    _assert_copied(aws.env, "W", 2000)
