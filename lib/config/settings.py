"""The settings of a run (`defaults` of config.json, a source's `defaults`, an execution's overrides): their
names, types and bounds, and the checks that report every problem at once."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, replace
from typing import Any


@dataclass(frozen=True)
class Settings:
    parallel_threads: int = 0  # 0: one per core, then clamped by the memory budget and the connection cap
    batch_size: int = 50_000
    chunk_rows: int = 250_000
    resume_max_age: float = 168.0
    lease_seconds: int = 900  # a chunk whose copy makes no progress for this long is taken from its worker
    max_attempts: int = 3
    memory_budget_mb: int = 2048
    retry_attempts: int = 5  # per statement that is safe to repeat (stats queries, ledger updates)
    retry_base_seconds: float = 1.0
    retry_max_seconds: float = 30.0
    max_outage_seconds: int = 600  # how long a worker keeps trying to reach PostgreSQL before it gives up
    statement_timeout_seconds: int = 3600  # PostgreSQL statement_timeout of the engine's sessions (0: none)
    lock_timeout_seconds: int = 60  # PostgreSQL lock_timeout (0: none)
    snowflake_statement_timeout_seconds: int = 3600  # Snowflake STATEMENT_TIMEOUT_IN_SECONDS (0: the account's)
    max_target_connections: int = 64  # all workers' PostgreSQL connections together (threads x 2 each)
    keep_backups: int = 2  # swap mode: backups of each target that `cleanup` keeps
    swap_lock_timeout_seconds: float = 2.0  # swap mode: how long the swap waits for the live table's lock per try
    max_delete_fraction: float = 0.05  # deletes: a table whose pass would delete more of its rows is refused
    nul_bytes: str = "fail"  # NUL bytes in text: fail | strip | replace:<char> (per table too)
    # read tables AT(TIMESTAMP => the run's start), one point in time: "auto" where the table's Time Travel
    # retention covers resume_max_age, True for every table, False never (lib/plan/tables.py reads_at)
    snapshot: str | bool = "auto"
    verify: bool = False  # after reconciliation, compare content checksums of every chunk (lib/check/verify.py)
    # a thread claims its next chunk and starts reading it while it writes the last one (lib/run/worker.py)
    read_ahead: bool = True
    source_results: str = "auto"  # how Snowflake answers a chunk: streamed | whole | auto (asks the session)
    result_prefetch: int = 1  # streamed results: result parts downloaded ahead of the one being read
    result_chunk_mb: int = 48  # streamed results: CLIENT_RESULT_CHUNK_SIZE asked of Snowflake (48-160)


@dataclass(frozen=True)
class Bound:
    """The type and range a setting accepts; `what` completes "must be ..."."""

    kind: type
    low: float
    high: float
    what: str

    def check(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float) if self.kind is float else int):
            return False
        return self.low <= value <= self.high


_DAY = 86_400


SETTING_BOUNDS: dict[str, Bound] = {
    "parallel_threads": Bound(int, 0, 256, "an integer from 1 to 256, or 0 for one per core"),
    "batch_size": Bound(int, 1, 5_000_000, "an integer from 1 to 5,000,000 (rows)"),
    "chunk_rows": Bound(int, 1, 1_000_000_000, "an integer from 1 to 1,000,000,000 (rows)"),
    "resume_max_age": Bound(float, 0.001, 87_600, "a number of hours above 0 and at most 87,600 (10 years)"),
    "lease_seconds": Bound(int, 2, _DAY, "an integer from 2 to 86,400 (seconds)"),
    "max_attempts": Bound(int, 1, 100, "an integer from 1 to 100"),
    "memory_budget_mb": Bound(int, 1, 1_048_576, "an integer from 1 to 1,048,576 (MiB)"),
    "retry_attempts": Bound(int, 1, 100, "an integer from 1 to 100"),
    "retry_base_seconds": Bound(float, 0.001, 3600, "a number of seconds above 0 and at most 3,600"),
    "retry_max_seconds": Bound(float, 0.001, _DAY, "a number of seconds above 0 and at most 86,400"),
    "max_outage_seconds": Bound(int, 1, 7 * _DAY, "an integer from 1 to 604,800 (seconds)"),
    "statement_timeout_seconds": Bound(int, 0, 7 * _DAY, "an integer from 0 (none) to 604,800 (seconds)"),
    "lock_timeout_seconds": Bound(int, 0, _DAY, "an integer from 0 (none) to 86,400 (seconds)"),
    "snowflake_statement_timeout_seconds": Bound(int, 0, 7 * _DAY, "an integer from 0 (the account's) to 604,800 (seconds)"),
    "max_target_connections": Bound(int, 2, 100_000, "an integer of at least 2"),
    "keep_backups": Bound(int, 0, 1000, "an integer from 0 to 1,000"),
    "swap_lock_timeout_seconds": Bound(float, 0.001, 3600, "a number of seconds above 0 and at most 3,600"),
    "max_delete_fraction": Bound(float, 0, 1, "a fraction from 0 to 1 (of a table's rows)"),
    "result_prefetch": Bound(int, 1, 10, "an integer from 1 to 10 (result parts)"),
    "result_chunk_mb": Bound(int, 48, 160, "an integer from 48 to 160 (MiB, Snowflake's CLIENT_RESULT_CHUNK_SIZE range)"),
}


RESULT_MODES = ("auto", "streamed", "whole")


def source_results_problem(value: object) -> str | None:
    """Why `source_results` is not a valid mode, or None."""
    if value in RESULT_MODES:
        return None
    return (f"source_results must be one of {', '.join(RESULT_MODES)}, got {value!r} (auto: streamed when the "
            "Snowflake session reports CLIENT_RESULT_CHUNK_SIZE, as Snowflake's does)")


NUL_POLICIES = ("fail", "strip", "replace:<char>")


def nul_policy_problem(value: Any) -> str | None:
    """Why `nul_bytes` is not a valid policy, or None."""
    if value in ("fail", "strip"):
        return None
    if isinstance(value, str) and value.startswith("replace:"):
        char = value[len("replace:"):]
        if len(char) == 1 and char != "\x00":
            return None
        return f"nul_bytes {value!r}: replace:<char> takes exactly one character (not NUL)"
    return f"nul_bytes must be one of {', '.join(NUL_POLICIES)}, got {value!r}"


# settings that are words, each with its own check
TEXT_SETTINGS = {"nul_bytes": nul_policy_problem, "source_results": source_results_problem,
                 "snapshot": lambda value: None if value == "auto" or parse_bool(value) is not None else
                 f"snapshot must be auto, true or false, got {value!r}"}


BOOL_SETTINGS = {"verify", "read_ahead"}


SETTING_NAMES = tuple(Settings.__dataclass_fields__)


# Strings accepted for a boolean override (execution input may come from tools that only write strings).
TRUE_STRINGS, FALSE_STRINGS = frozenset({"true"}), frozenset({"false"})


def parse_bool(value: Any) -> bool | None:
    """A JSON boolean, or the string "true"/"false" in any case; anything else (1, "yes", "") is None."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in TRUE_STRINGS | FALSE_STRINGS:
        return value.strip().lower() in TRUE_STRINGS
    return None


def parse_settings(raw: Any, where: str, problems: list[str], base: Settings) -> Settings:
    if not isinstance(raw, dict):
        problems.append(f"{where} must be an object")
        return base
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key == "$comment":
            continue
        bound = SETTING_BOUNDS.get(key)
        if key in BOOL_SETTINGS:
            parsed = parse_bool(value)
            if parsed is None:
                problems.append(f"{where}.{key} must be true or false, got {value!r}")
            else:
                values[key] = parsed
        elif key in TEXT_SETTINGS:
            if problem := TEXT_SETTINGS[key](value):
                problems.append(f"{where}.{problem}")
            else:
                values[key] = value if key != "snapshot" or value == "auto" else parse_bool(value)
        elif bound is None:
            problems.append(f"{where}: unknown setting {key!r}{suggest(key, SETTING_NAMES)}")
        elif not bound.check(value):
            problems.append(f"{where}.{key} must be {bound.what}, got {value!r}")
        else:
            values[key] = value
    return replace(base, **values)


def suggest(key: str, options: Any) -> str:
    close = difflib.get_close_matches(key, sorted(options), n=3)
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
