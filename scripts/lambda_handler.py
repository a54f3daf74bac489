"""AWS Lambda entry points for the Step Functions state machine (aws/step_functions/migration.asl.json).

Each handler is thin: read the event, call `lib/`, return a small JSON-able dict. Errors propagate
as exceptions, so Lambda reports the class name as `errorType` (`TransientError`, `FatalError`,
`ConfigError`) and the state machine's Retry/Catch can match it.

The execution input is the set of overrides (`source_name`, `tables`, `resume_max_age`, `no_resume`,
`parallel_threads`, `batch_size`, ...); keys outside the allowlist are refused by the Plan step
before any work starts.
"""

from __future__ import annotations

import os
import time
from typing import Any

from lib import postgres_target as pg
from lib import status
from lib.config import SourceConfig, load_config
from lib.errors import ConfigError
from lib.log import get_logger
from lib.orchestrator import finalize_run, reconcile_finished_tables, start_run, thread_count, work, work_plan

# Execution-level keys, handled here rather than in the config.
EXECUTION_KEYS = {"workers": 4, "max_loops": 50, "loop_wait_seconds": 10}
MAX_WORKERS = 1000
DISTRIBUTED_ABOVE = 40
SAFETY_MARGIN_SECONDS = float(os.environ.get("WORK_SAFETY_MARGIN_SECONDS", "60"))

log = get_logger()


def _split_input(event: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    raw = dict(event.get("input", event))
    execution = {k: raw.pop(k, default) for k, default in EXECUTION_KEYS.items()}
    problems = [f"execution input {k!r} must be a non-negative integer, got {v!r}"
                for k, v in execution.items() if not isinstance(v, int) or isinstance(v, bool) or v < 0]
    if not problems and not 1 <= execution["workers"] <= MAX_WORKERS:
        problems.append(f"execution input 'workers' must be between 1 and {MAX_WORKERS}")
    if not problems and execution["max_loops"] < 1:
        problems.append("execution input 'max_loops' must be at least 1")
    if problems:
        raise ConfigError(problems)
    return raw, execution


def _config(event: dict[str, Any]) -> SourceConfig:
    overrides, _ = _split_input(event)
    return load_config(overrides.get("source_name"), overrides)


def plan(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    """Validate the input, then resume the run of this config or plan a new one."""
    overrides, execution = _split_input(event)
    config = load_config(overrides.get("source_name"), overrides)
    start = start_run(config)
    workers = int(execution["workers"])
    log.info("%s; %d worker(s)", start.message, workers, extra={"run_id": start.run_id})
    return {
        "run_id": start.run_id,
        "mode": start.mode,
        "message": start.message,
        "done": start.mode == "nothing_to_do",
        "slots": list(range(workers)),
        "distributed": workers > DISTRIBUTED_ABOVE,
        "max_loops": execution["max_loops"],
        "loop_wait_seconds": execution["loop_wait_seconds"],
        # a continued execution must resume this run, never start over
        "continue_input": {**overrides, **execution, "no_resume": False},
    }


def work_slot(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    """One worker slot: claim and copy chunks with its threads until time runs short or none is left."""
    config = _config(event)
    remaining = context.get_remaining_time_in_millis() / 1000 if context is not None else 900.0
    deadline = time.monotonic() + max(remaining - SAFETY_MARGIN_SECONDS, 0)
    work_state = work_plan(config, int(event["run_id"]), deadline=deadline)
    stats = work(work_state, thread_count(config, work_state)) if work_state.tables else None
    return {
        "slot": event.get("slot"),
        "chunks_done": stats.chunks_done if stats else 0,
        "chunks_failed": stats.chunks_failed if stats else 0,
        "rows": stats.rows if stats else 0,
    }


def check(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    """Chunk counts of the run, and the loop number for the continue-as-new decision."""
    config = _config(event)
    with pg.connect(config.postgres_connect_args(), autocommit=True) as conn:
        counts = status.chunk_counts(conn, int(event["run_id"]))
    totals = {k: sum(c[k] for c in counts.values()) for k in ("pending", "running", "done", "failed")}
    return {**totals, "remaining": totals["pending"] + totals["running"], "loop": int(event.get("loop", 0)) + 1}


def reconcile(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    config = _config(event)
    return {"reconciled": reconcile_finished_tables(config, int(event["run_id"]))}


def finalize(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    config = _config(event)
    return {"status": finalize_run(config, int(event["run_id"]))}


def record_failure(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    """Catch path: persist the error on the run (if one was started) so the ledger tells the truth."""
    state = event.get("state", event)
    error = state.get("error") or {}
    message = f"{error.get('Error', 'Error')}: {error.get('Cause', '')}"[:4000]
    run_id = (state.get("plan") or {}).get("run_id")
    if run_id is None:
        return {"recorded": False, "error": message}
    config = _config({"input": state["input"]})
    with pg.connect(config.postgres_connect_args(), autocommit=True) as conn:
        status.finalize_run_counters(conn, int(run_id))
        status.set_run_status(conn, int(run_id), "failed", message)
    return {"recorded": True, "run_id": run_id, "error": message}


def continue_as_new(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    """Start a fresh execution of this state machine; it resumes the same run by config hash."""
    import boto3

    response = boto3.client("stepfunctions").start_execution(
        stateMachineArn=event["state_machine_arn"],
        name=f"run-{event['run_id']}-{int(time.time() * 1000)}",
        input=__import__("json").dumps(event["input"]),
    )
    return {"execution_arn": response["executionArn"]}
