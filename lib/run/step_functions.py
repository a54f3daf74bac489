"""What only a Step Functions execution has: its own input keys, the worker-slot arithmetic that keeps
PostgreSQL connections and the execution's event history within their limits, and the names of the
executions that continue a long run.

Event history (AWS Standard workflows stop an execution at 25,000 events). Counted for the worst case,
where every Lambda task uses all 4 of its retries:
- a Lambda task state: TaskStateEntered + 5 × (Scheduled, Started, Failed/Succeeded) + TaskStateExited = 17;
- a worker slot of the inline Map: MapIterationStarted/Succeeded (2) + its task (17) + the Pass state of a
  lost slot (2) = 21;
- one loop: the Map state itself (4 for Entered/Started/Succeeded/Exited, and 4 for a Distributed Map,
  whose items run as child executions with histories of their own) + slots + Check (17) + the MoreWork,
  Wait and ChooseMapKind states (2 each) = 27 + 21 × slots inline, 27 distributed;
- once per execution: start, Init, Plan, AlreadyDone, Reconcile, Finalize, the end states and a
  ContinueAsNew or RecordFailure: at most 200.
`max_loops` is clamped so that 200 + loops × (events per loop) stays under 90% of 25,000.
"""

from __future__ import annotations

import hashlib
from typing import Any

from lib.errors import ConfigError

HISTORY_LIMIT = 25_000
HISTORY_SHARE = 0.9  # headroom for events this arithmetic does not foresee
EXECUTION_OVERHEAD_EVENTS = 200
TASK_EVENTS = 17
INLINE_SLOT_EVENTS = 21
LOOP_FIXED_EVENTS = 27

MAX_WORKERS = 1000
DISTRIBUTED_ABOVE = 40  # the inline Map runs at most 40 iterations at once

# Execution-level keys (not config overrides) and their defaults. `continuation` and `lineage` are set by
# ContinueAsNew for the executions that continue a run; a user never needs them.
EXECUTION_KEYS: dict[str, Any] = {"workers": 4, "max_loops": 50, "loop_wait_seconds": 10, "continuation": 0,
                                  "lineage": ""}


def split_input(raw_input: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split an execution input into config overrides and execution keys; every bad value is listed."""
    if not isinstance(raw_input, dict):
        raise ConfigError([f"the execution input must be a JSON object, got {type(raw_input).__name__}"])
    overrides = dict(raw_input)
    execution = {k: overrides.pop(k, default) for k, default in EXECUTION_KEYS.items()}
    problems = []
    bounds = {"workers": (1, MAX_WORKERS), "max_loops": (1, 100_000), "loop_wait_seconds": (0, 3600),
              "continuation": (0, 10**9)}
    for key, (low, high) in bounds.items():
        value = execution[key]
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            problems.append(f"execution input {key!r} must be an integer from {low} to {high}, got {value!r}")
    if not isinstance(execution["lineage"], str) or len(execution["lineage"]) > 200:
        problems.append(f"execution input 'lineage' must be a short string, got {execution['lineage']!r}")
    if problems:
        raise ConfigError(problems)
    return overrides, execution


def events_per_loop(slots: int) -> int:
    return LOOP_FIXED_EVENTS + (0 if slots > DISTRIBUTED_ABOVE else INLINE_SLOT_EVENTS * slots)


def max_loops_for(slots: int) -> int:
    """The most loops one execution can run with this many slots and stay within its event history."""
    budget = int(HISTORY_LIMIT * HISTORY_SHARE) - EXECUTION_OVERHEAD_EVENTS
    return max(1, budget // events_per_loop(slots))


def continuation_name(run_id: int, lineage: str, continuation: int) -> str:
    """The execution that continues a run: the same for a retried ContinueAsNew (so a second start is
    ExecutionAlreadyExists, not a second execution), different for every run, chain and step.
    `lineage` is the ARN of the chain's first execution; names are at most 80 characters."""
    chain = hashlib.sha256(lineage.encode()).hexdigest()[:12]
    return f"run-{run_id}-{chain}-continuation-{continuation}"
