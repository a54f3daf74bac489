"""AWS Lambda entry points for the Step Functions state machine (aws/step_functions/migration.asl.json).

Each handler is thin: read the event, call `lib/`, return a small JSON-able dict. Errors propagate
as exceptions, so Lambda reports the class name as `errorType` (`TransientError`, `FatalError`,
`ConfigError`) and the state machine's Retry/Catch can match it.

The execution input is the set of overrides (`source_name`, `tables`, `resume_max_age`, `no_resume`,
`parallel_threads`, `batch_size`, ...); keys outside the allowlist are refused by the Plan step
before any work starts.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from lib import ledger
from lib.config import SourceConfig, load_config
from lib.log import get_logger
from lib.plan.budget import fit_connections
from lib.run.orchestrator import (
    config_of_run,
    finalize_run,
    reading_ahead,
    reconcile_finished_tables,
    start_run,
    thread_count,
    verify_finished_tables,
    work,
    work_plan,
)
from lib.run.step_functions import DISTRIBUTED_ABOVE, HISTORY_LIMIT, continuation_name, events_per_loop, max_loops_for, split_input
from lib.target import postgres as pg

SAFETY_MARGIN_SECONDS = float(os.environ.get("WORK_SAFETY_MARGIN_SECONDS", "60"))
# Plan, Reconcile and Verify do a bounded share of the tables per invocation: they stop starting new work this
# long before their Lambda's end, and wait at most DEFER_WAIT_SECONDS for one Snowflake query (a longer one
# runs on and is taken by a later invocation: lib/source/deferred.py).
STEP_SAFETY_MARGIN_SECONDS = float(os.environ.get("STEP_SAFETY_MARGIN_SECONDS", "60"))
DEFER_WAIT_SECONDS = float(os.environ.get("DEFER_WAIT_SECONDS", "60"))
# How long the state machine waits before asking again for queries that still run in Snowflake
PENDING_QUERY_WAIT_SECONDS = 30
# The Reconcile function's timeout (the stack sets it): a table's post-load step (its key build) must fit in it
RECONCILE_TIMEOUT_SECONDS = float(os.environ.get("RECONCILE_TIMEOUT_SECONDS", "600"))

log = get_logger()


def _config(event: dict[str, Any]) -> SourceConfig:
    """The execution's config; within a run, with the tables its patterns matched when the run started."""
    overrides, _ = split_input(event.get("input", event))
    config = load_config(overrides.get("source_name"), overrides)
    return config_of_run(config, int(event["run_id"])) if "run_id" in event else config


def plan(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    """Validate the input, then resume the run of this config or plan a new one.

    The execution's ARN is the start token: when Step Functions retries this step (e.g. after a
    transient error while planning the second table), the retry resumes the run the first attempt
    created, even under no_resume.
    """
    overrides, execution = split_input(event.get("input", event))
    config = load_config(overrides.get("source_name"), overrides)
    execution_id = event.get("execution_id")
    deadline = _step_deadline(context)
    start = start_run(config, start_token=execution_id, deadline=deadline, defer_seconds=DEFER_WAIT_SECONDS,
                      post_load_seconds=max(RECONCILE_TIMEOUT_SECONDS - STEP_SAFETY_MARGIN_SECONDS, 1.0), write_early=True)
    slots, threads, why = fit_connections(execution["workers"], config.settings.parallel_threads or 64,
                                          config.settings.max_target_connections)
    if why:
        log.warning("%s", why, extra={"run_id": start.run_id})
    max_loops = min(execution["max_loops"], max_loops_for(slots))
    if max_loops < execution["max_loops"]:
        log.warning("max_loops lowered from %d to %d: %d slot(s) write up to %d history events a loop and an "
                    "execution may hold %d", execution["max_loops"], max_loops, slots, events_per_loop(slots),
                    HISTORY_LIMIT, extra={"run_id": start.run_id})
    log.info("%s; %d worker slot(s) of up to %d thread(s)", start.message, slots, threads, extra={"run_id": start.run_id})
    return {
        "run_id": start.run_id,
        "mode": start.mode,
        "message": start.message,
        "planned_all": start.unplanned == 0,
        "unplanned": start.unplanned,
        "loop": int(event.get("loop") or 0) + 1,
        # tables the time budget left are planned at once; queries still running in Snowflake are asked again later
        "plan_wait_seconds": PENDING_QUERY_WAIT_SECONDS if time.monotonic() < deadline else 0,
        "done": start.mode == "nothing_to_do",
        "slots": list(range(slots)),
        "threads_per_slot": threads,
        # each slot's threads claim and read their next chunk while they write one, where the cap allows it
        "read_ahead": reading_ahead(config, threads, start.run_id, slots),
        "distributed": slots > DISTRIBUTED_ABOVE,
        "max_loops": max_loops,
        "verify": config.settings.verify,
        "loop_wait_seconds": execution["loop_wait_seconds"],
        # a continued execution must resume this run, never start over
        "continue_input": {**overrides, **execution, "no_resume": False,
                           "continuation": execution["continuation"] + 1,
                           "lineage": execution["lineage"] or execution_id or ""},
    }


def work_slot(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    """One worker slot: claim and copy chunks with its threads until time runs short or none is left."""
    config = _config(event)
    remaining = context.get_remaining_time_in_millis() / 1000 if context is not None else 900.0
    deadline = time.monotonic() + max(remaining - SAFETY_MARGIN_SECONDS, 0)
    work_state = work_plan(config, int(event["run_id"]), deadline=deadline)
    threads = thread_count(config, work_state, at_most=event.get("threads")) if work_state.tables else 0
    work_state.read_ahead = bool(event.get("read_ahead"))  # decided by the Plan step for all slots together
    stats = work(work_state, threads) if work_state.tables else None
    return {
        "slot": event.get("slot"),
        "threads": threads,
        "chunks_done": stats.chunks_done if stats else 0,
        "chunks_failed": stats.chunks_failed if stats else 0,
        "rows": stats.rows if stats else 0,
    }


def check(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    """Chunk counts of the run, and the loop number for the continue-as-new decision."""
    config = _config(event)
    with pg.connect(config.postgres_connect_args(), autocommit=True) as conn:
        counts = ledger.chunk_counts(conn, int(event["run_id"]))
    totals = {k: sum(c[k] for c in counts.values()) for k in ("pending", "running", "done", "failed")}
    return {**totals, "remaining": totals["pending"] + totals["running"], "loop": int(event.get("loop", 0)) + 1}


def reconcile(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    """Count and finish tables until the time budget; `more` when some are left for the next invocation."""
    config = _config(event)
    run_id = int(event["run_id"])
    done = reconcile_finished_tables(config, run_id, deadline=_step_deadline(context), defer_seconds=DEFER_WAIT_SECONDS)
    with pg.connect(config.postgres_connect_args(), autocommit=True) as conn:
        left = ledger.unfinished_tables(conn, run_id)
    return {"reconciled": len(done), "left": left, "more": left > 0, "loop": int(event.get("loop") or 0) + 1}


def verify(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    """settings.verify: content checksums of completed tables' chunks until the time budget; a table that differs
    is failed; `more` when chunks are left for the next invocation."""
    config = _config(event)
    results, left = verify_finished_tables(config, int(event["run_id"]), deadline=_step_deadline(context))
    differing = sorted(r.table for r in results if r.differing)
    return {"tables": len(results), "chunks_checked": sum(r.checked for r in results), "left": left, "more": left > 0,
            "differing_tables": len(differing), "differing": differing[:20], "loop": int(event.get("loop") or 0) + 1}


def _budget(context: Any) -> float:
    """Seconds this invocation may start new work for."""
    remaining = context.get_remaining_time_in_millis() / 1000 if context is not None else 900.0
    return max(remaining - STEP_SAFETY_MARGIN_SECONDS, 0.0)


def _step_deadline(context: Any) -> float:
    return time.monotonic() + _budget(context)


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
        ledger.finalize_run_counters(conn, int(run_id))
        ledger.set_run_status(conn, int(run_id), "failed", message)
    return {"recorded": True, "run_id": run_id, "error": message}


def continue_as_new(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    """Start the execution that continues this run; it resumes the same run by config hash.

    Its name is fixed by run, chain and continuation number, so a retried step cannot start a second
    execution: ExecutionAlreadyExists means the first attempt already started it.
    """
    import boto3

    run_input = event["input"]
    name = continuation_name(int(event["run_id"]), str(run_input.get("lineage", "")), int(run_input.get("continuation", 1)))
    client = boto3.client("stepfunctions")
    try:
        response = client.start_execution(stateMachineArn=event["state_machine_arn"], name=name,
                                          input=json.dumps(run_input))
    except client.exceptions.ExecutionAlreadyExists:
        log.info("execution %s already started by an earlier attempt of this step", name)
        return {"execution_name": name, "already_started": True}
    return {"execution_name": name, "execution_arn": response["executionArn"], "already_started": False}
