"""The real state machine definition, executed by moto's Step Functions interpreter, with every
Lambda task dispatched in-process to scripts/lambda_handler.py, against the local stack."""

from __future__ import annotations

import importlib
import io
import json
import time
import zipfile
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws
from moto.awslambda_simple.models import LambdaSimpleBackend

from lib import status
from lib.errors import FatalError, TransientError
from scripts import lambda_handler

ROOT = Path(__file__).resolve().parent.parent
ASL = ROOT / "aws" / "step_functions" / "migration.asl.json"
FUNCTIONS = {
    "PlanFunctionArn": "plan", "WorkFunctionArn": "work_slot", "CheckFunctionArn": "check",
    "ReconcileFunctionArn": "reconcile", "FinalizeFunctionArn": "finalize",
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
        return self.sfn.start_execution(stateMachineArn=self.arn, input=json.dumps(payload))["executionArn"]

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

    execution = aws.start(workers=41)
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
    import pytest as _pytest

    from lib.errors import ConfigError

    for bad in ({"workers": "abc"}, {"workers": 0}, {"max_loops": 0}, {"workers": 5000}):
        with _pytest.raises(ConfigError):
            lambda_handler._split_input({"input": {"source_name": "x", **bad}})
