"""The order of a run: resume or plan → work → reconcile → finalize. The only module that knows it.

Each step is callable on its own (the Step Functions handlers call them one by one); `run()`
chains them for a local invocation and guarantees the run status is persisted on every exit.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import psycopg

from lib import faults, ledger
from lib.check import deletes
from lib.check.reconcile import Reconciliation, reconcile_table
from lib.config import SourceConfig, TableSpec
from lib.errors import FatalError, MigrationError, StillRunning, TransientError, classify
from lib.ledger import schema as ledger_schema
from lib.ledger.tables import source_snapshots
from lib.log import ctx, get_logger
from lib.plan import discover
from lib.plan.budget import (
    MIB,
    ReadShape,
    estimate_bytes,
    fit_connections,
    fit_threads,
    memory_budget_bytes,
    reading_ahead_connections,
    reads_ahead,
    requested_threads,
    widest,
)
from lib.plan.tables import plan_missing_tables, refresh_target_types, scoped_spec
from lib.retry import call_with_retry
from lib.run.progress import ProgressMonitor
from lib.run.worker import Worker, WorkerStats, WorkPlan
from lib.source.deferred import Deferred
from lib.source.snowflake import SnowflakeSource
from lib.target import postgres as pg
from lib.target import swap
from lib.target.load_modes import TableLoad, held_scope, table_loads
from lib.typemap import Column, estimated_row_bytes

log = get_logger()
T = TypeVar("T")


@dataclass
class StartResult:
    run_id: int
    mode: str  # "fresh" | "resumed" | "nothing_to_do"
    message: str
    unplanned: int = 0  # tables left to plan (a deadline, or a stats query still running in Snowflake)
    config: SourceConfig | None = None  # the config with the tables its patterns matched for the run


def _appeared_since_completed(conn: psycopg.Connection[Any], config: SourceConfig, config_hash: str) -> list[TableSpec]:
    """Tables the config's patterns match now that no run of the config completed."""
    if not config.patterns:
        return []
    done = ledger.completed_tables(conn, config_hash)
    return [t for t in config.tables if t.pattern is not None and t.name not in done]


def _tables_of_resumed_run(conn: psycopg.Connection[Any], config: SourceConfig, config_hash: str,
                           run_id: int) -> SourceConfig:
    """A resumed run keeps its own tables (planned, or pinned by its patterns) and takes those its patterns
    match that no run of the config completed; a table an earlier run completed is not copied again."""
    if not config.patterns:
        return config
    mine = set(ledger.planned_tables(conn, run_id)) | {".".join(t) for t in ledger.pinned_matches(conn, run_id)}
    done = ledger.completed_tables(conn, config_hash)
    return replace(config, tables=tuple(t for t in config.tables if t.name in mine or t.name not in done))


def config_of_run(config: SourceConfig, run_id: int) -> SourceConfig:
    """The config with the tables its patterns matched for run `run_id` (pinned at its start)."""
    if not config.patterns:
        return config
    with pg.connect(config.postgres_connect_args(), autocommit=True) as conn:
        return discover.pinned(config, conn, run_id)


@dataclass
class RunResult:
    run_id: int
    mode: str
    status: str
    message: str
    seconds: float
    tables: list[dict[str, Any]] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)


def _hash_lock_key(conn: psycopg.Connection[Any], config_hash: str) -> int:
    row = conn.execute("SELECT hashtextextended(%s, 7)", (config_hash,)).fetchone()
    assert row is not None
    return int(row[0])


def start_run(config: SourceConfig, start_token: str | None = None, deadline: float | None = None,
              defer_seconds: float | None = None, post_load_seconds: float | None = None,
              write_early: bool = False) -> StartResult:
    """Resume the run of this config, or plan a new one. Two starters at once join one run.

    `deadline` (time.monotonic()) stops planning there, and `defer_seconds` lets a stats query run on in
    Snowflake past that wait (lib/source/deferred.py): a Step Functions Plan step plans a bounded share of the
    tables per invocation and is called again for the rest (StartResult.unplanned). `post_load_seconds`: how
    long a post-load step may run there; a new table whose key could not be built in that time after the
    load gets it before (lib/target/load_modes.py).

    `start_token` names the invocation (a local run, a Step Functions execution). A retry of the same
    invocation, e.g. after a transient error while planning its second table, resumes the run that
    invocation created, even under `no_resume`: only a new invocation starts a fresh run. `write_early`: a small window read while
    planning is written with its plan, see plan_missing_tables.
    """
    config_hash = config.fingerprint()
    max_age = config.settings.resume_max_age
    # one Snowflake session (opened on first use) reads the snapshot time and plans the tables
    source = SnowflakeSource(config.snowflake_connect_args(), config.retry_policy())
    with contextlib.closing(source), pg.connect(config.postgres_connect_args(), autocommit=True) as conn:
        source.preflight()
        ledger_schema.apply_migrations(conn)
        key = _hash_lock_key(conn, config_hash)
        conn.execute("SET lock_timeout = 0")  # waiting for another starter (planning many tables) is intended
        conn.execute("SELECT pg_advisory_lock(%s)", (key,))
        try:
            latest = ledger.find_latest_run(conn, config_hash)
            config = discover.discovered(config, source, conn, None)
            retry_of_this_start = bool(latest and start_token and latest.start_token == start_token)
            repeatable = any(t.repeatable for t in config.tables)
            appeared = _appeared_since_completed(conn, config, config_hash) if latest and not repeatable else []
            if latest and latest.status == "completed" and (not config.no_resume or retry_of_this_start) and appeared \
                    and not retry_of_this_start:
                log.info("run %s completed, and %d table(s) matched by the config's patterns appeared since: a new run "
                         "copies them (%s)", latest.run_id, len(appeared), ", ".join(t.name for t in appeared[:20]))
                config = replace(config, tables=tuple(appeared))
                latest = None
            if latest and latest.status == "completed" and (not config.no_resume or retry_of_this_start):
                if retry_of_this_start or not repeatable:
                    return StartResult(
                        latest.run_id, "nothing_to_do",
                        f"run {latest.run_id} of this config already completed ({latest.age_hours:.1f} h ago): "
                        "nothing left to do; use --no-resume to copy everything again",
                    )
                log.info("run %s completed; its tables load changes (merge or watermark): a new run brings the "
                         "next ones", latest.run_id)
                latest = None
            superseded: tuple[int, str] | None = None
            if latest and config.no_resume and not retry_of_this_start:
                alive = ledger.live_sessions(conn, latest.run_id) if latest.status == "running" else 0
                if alive and not config.abandon_live:
                    raise FatalError(
                        f"run {latest.run_id} of this config is being worked on now ({alive} live session(s)): "
                        "--no-resume would abandon it under its workers. Stop them first (Ctrl-C, or let them "
                        "finish), or add --abandon-live to abandon it anyway")
                log.info("no_resume: not resuming run %s (%s); starting a fresh run", latest.run_id, latest.status)
                superseded = (latest.run_id, "superseded by a --no-resume run") if latest.status != "completed" else None
                latest = None
            elif latest and latest.age_hours > max_age:
                log.info(
                    "run %s started %.1f h ago, beyond resume_max_age=%s h: not resumed, starting a fresh run",
                    latest.run_id, latest.age_hours, max_age,
                )
                superseded = (latest.run_id, f"older than resume_max_age={max_age} h")
                latest = None
            if latest:
                run_id, mode = latest.run_id, "resumed"
                config = _tables_of_resumed_run(conn, discover.discovered(config, source, conn, run_id), config_hash, run_id)
                retried = ledger.reset_failed(conn, run_id)
                ledger.set_run_status(conn, run_id, "running")
                ledger.record_resume_window(conn, run_id, max_age)
                refresh_target_types(conn, config, run_id)
                message = f"resuming run {run_id} (started {latest.age_hours:.1f} h ago, was {latest.status})"
                if retried:
                    message += f"; {retried} failed chunk(s) get new attempts"
            else:
                metadata = {"source_names": [config.name], "config": config.redacted(), "start_token": start_token}
                if config.settings.snapshot:
                    metadata["snapshot_at"] = source.now()
                with conn.transaction():  # abandoning the old run and creating the new one: all or nothing
                    if superseded:
                        ledger.abandon_run(conn, *superseded)
                    run_id = ledger.create_run(conn, config_hash, config.name, metadata)
                mode, message = "fresh", f"started run {run_id}"
            log.info(message, **ctx(run_id=run_id))
            if defer_seconds is not None:
                source.deferred = deferred_queries(conn, run_id, defer_seconds)
            discover.pin(conn, config, run_id)
            unplanned = plan_missing_tables(conn, config, run_id, source, deadline, post_load_seconds, write_early)
            return StartResult(run_id, mode, message, unplanned, config)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (key,))


def work_plan(config: SourceConfig, run_id: int, deadline: float | None = None) -> WorkPlan:
    """What the workers need of every planned table: its scope, columns and stored load mode."""
    with pg.connect(config.postgres_connect_args(), autocommit=True) as conn:
        loads = table_loads(conn, config, run_id)
        snapshots = source_snapshots(conn, config, run_id)
        stored_shapes = ledger.read_shapes(conn, run_id)
        repair_filters = {name: held_scope(conn, run_id, spec) for name, (spec, _, load) in loads.items()
                          if not load.staged and load.window is None}
    tables = {name: (scoped_spec(spec, load.window), columns, load) for name, (spec, columns, load) in loads.items()}
    settings = config.settings
    shapes = {}
    for name, (_, columns, _) in tables.items():
        results, row_bytes, largest_chunk = stored_shapes.get(name, (None, None, 0))
        shapes[name] = ReadShape.for_settings(results or "whole", row_bytes or estimated_row_bytes(columns),
                                              max(largest_chunk, 1), settings)
    return WorkPlan(config, run_id, tables, deadline=deadline, snapshots=snapshots, shapes=shapes,
                    repair_filters=repair_filters)


def thread_count(config: SourceConfig, plan: WorkPlan, at_most: int | None = None) -> int:
    """Threads for this process: parallel_threads (or one per core), within the memory budget, the
    connection cap (max_target_connections) and `at_most` (a Step Functions slot's share of it)."""
    shapes = list(plan.shapes.values())
    threads, why = fit_threads(requested_threads(config.settings.parallel_threads), shapes,
                               config.settings.memory_budget_mb)
    if why:
        log.warning(why, **ctx(run_id=plan.run_id))
    _, threads, why = fit_connections(1, min(threads, at_most or threads), config.settings.max_target_connections)
    if why:
        log.warning(why, **ctx(run_id=plan.run_id))
    shape = widest(shapes)
    if shape:
        log.info("memory: %d thread(s) × %s = %.0f MiB at most, of a %.0f MiB budget", threads, shape.describe(),
                 estimate_bytes(threads, shapes) / MIB, memory_budget_bytes(config.settings.memory_budget_mb) / MIB,
                 **ctx(run_id=plan.run_id))
    return threads


def reading_ahead(config: SourceConfig, threads: int, run_id: int, slots: int = 1) -> bool:
    """Whether the threads read ahead: read_ahead set and two chunks per thread of every process (a local run,
    or each of a Step Functions execution's slots, decided for all of them by its Plan step) within
    max_target_connections."""
    if not config.settings.read_ahead:
        return False
    if reads_ahead(threads, config.settings.max_target_connections, slots):
        return True
    log.info("not reading ahead: %d slot(s) of %d thread(s) reading two chunks each would hold %d PostgreSQL "
             "connections, more than max_target_connections (%d)", slots, threads,
             reading_ahead_connections(threads, slots), config.settings.max_target_connections, **ctx(run_id=run_id))
    return False


def work(plan: WorkPlan, threads: int) -> WorkerStats:
    """Run `threads` workers until no chunk is claimable (or stop/deadline). Returns summed stats.

    On Ctrl-C/SIGTERM workers claim nothing more and finish their chunk in flight; a second one
    aborts at once (in-flight transactions roll back; the chunks are reclaimed on resume). The
    main thread waits on Events, not Thread.join: an interrupted join can mark a live thread as
    stopped, and the process would then exit under a worker in the middle of its chunk.
    """
    plan.threads = threads
    workers = [Worker(plan, index) for index in range(threads)]
    finished = [threading.Event() for _ in workers]

    def body(worker: Worker, done: threading.Event) -> None:
        try:
            worker.run()
        finally:
            done.set()

    try:
        for worker, done in zip(workers, finished, strict=True):
            threading.Thread(target=body, args=(worker, done), name=worker.name).start()
        _wait_all(finished)
    except KeyboardInterrupt:
        plan.stop.set()
        log.warning("stop requested: finishing in-flight chunks, claiming no more (Ctrl-C again to abort)")
        try:
            _wait_all(finished)
        except KeyboardInterrupt:
            log.error("aborted: chunks in flight roll back and are claimed again when the run resumes")
            os._exit(130)
        raise
    total = WorkerStats()
    for w in workers:
        total.chunks_done += w.stats.chunks_done
        total.chunks_failed += w.stats.chunks_failed
        total.rows += w.stats.rows
        total.bytes += w.stats.bytes
        total.errors.extend(w.stats.errors)
    return total


def _wait_all(events: list[threading.Event]) -> None:
    for event in events:
        while not event.wait(0.2):
            pass


NO_CHUNKS = {"pending": 0, "running": 0, "done": 0, "failed": 0, "rows_copied": 0}


def reconcile_finished_tables(config: SourceConfig, run_id: int, deadline: float | None = None,
                              defer_seconds: float | None = None) -> list[str]:
    """Reconcile every table of the run whose chunks are all done or failed and that is not yet
    reconciled, then finish every table that waits for its post-load step (also one left by a crash)."""
    with pg.connect(config.postgres_connect_args(), autocommit=True) as conn:
        results = reconcile_tables(conn, config, run_id, only_running=True, deadline=deadline,
                                   defer_seconds=defer_seconds)
    for rec in results:
        level = log.info if rec.ok else log.error
        level("reconciled: source %s, target %s%s", rec.source_count, rec.target_count,
              "" if rec.ok else f" — {rec.error}", **ctx(run_id=run_id, table=rec.table))
    return [rec.table for rec in results]


def reconcile_tables(conn: psycopg.Connection[Any], config: SourceConfig, run_id: int, only_running: bool,
                     skipped: Callable[[str, dict[str, int]], None] | None = None, deadline: float | None = None,
                     defer_seconds: float | None = None) -> list[Reconciliation]:
    """Count source and target of each table whose chunks are all done or failed (`only_running`: and that
    is not reconciled yet; `skipped` hears of the others), then finish every table that waits for its
    post-load step: a matching table is completed only by that step. `deadline` and `defer_seconds`, as for
    start_run: a Step Functions Reconcile step does a bounded share per invocation (unfinished_tables)."""
    counts = ledger.chunk_counts(conn, run_id)
    states = {r["table_name"]: r["status"] for r in ledger.table_rows(conn, run_id)}
    loads = table_loads(conn, config, run_id)
    results = []
    source = SnowflakeSource(config.snowflake_connect_args(), config.retry_policy(), source_snapshots(conn, config, run_id))
    if defer_seconds is not None:
        source.deferred = deferred_queries(conn, run_id, defer_seconds)
    try:
        for name, (spec, columns, load) in loads.items():
            chunks = counts.get(name, NO_CHUNKS)  # an empty watermark window has no chunks
            if chunks["pending"] or chunks["running"]:
                if skipped:
                    skipped(name, chunks)
                continue
            if only_running and states.get(name) != "running":
                continue
            if deadline is not None and time.monotonic() >= deadline:
                break
            try:
                refused = _deletes(conn, source, config, run_id, spec, columns, load, chunks, deadline)
                if refused is CONTINUED:
                    continue
                results.append(refused or reconcile_table(source, conn, run_id, scoped_spec(spec, load.window), chunks, load,
                                                          columns))
            except StillRunning as pending:
                log.info("%s: the count waits for Snowflake query %s", name, pending.query_id,
                         **ctx(run_id=run_id, table=name))
    finally:
        source.close()
    waiting = ledger.tables_waiting_for_post_load(conn, run_id)  # not one claim per table of a run of thousands
    for name, (spec, _, load) in loads.items():
        if name not in waiting:
            continue
        if deadline is not None and time.monotonic() >= deadline:
            break
        finish_table(conn, run_id, spec, load, config.settings.swap_lock_timeout_seconds)
    return results


# a deletes pass that the step's deadline interrupted: the table is reconciled by a later invocation
CONTINUED = Reconciliation("", False, 0, None, None, "the deletes pass continues")


def _deletes(conn: psycopg.Connection[Any], source: SnowflakeSource, config: SourceConfig, run_id: int,
             spec: TableSpec, columns: list[Column], load: TableLoad, chunks: dict[str, int],
             deadline: float | None) -> Reconciliation | None:
    """The table's deletes pass (lib/check/deletes.py), before its counts; a refused pass fails the table, one the
    deadline interrupted is CONTINUED."""
    if spec.deletes == "soft":
        deletes.add_soft_column(conn, load.destination)  # from the first load on: verify compares the live rows
    if spec.deletes == "ignore" or chunks.get("failed") or not load.staged:  # a copy starts the target afresh
        return None
    try:
        owner = ledger.target_owner(conn, spec.target_name, run_id)
        if owner is not None:
            raise FatalError(
                f"{spec.name}: deletes {spec.deletes} refused: run {owner.run_id} (source {owner.source_name}, table "
                f"{owner.table_name}) is loading {spec.target_name} too and has not finished; its rows are in no "
                "scope this config knows yet, so the pass would delete them. Let that run finish or abandon it, then resume")
        done = deletes.find_and_apply(conn, source, spec, columns, load, held_scope(conn, run_id, spec),
                                      config.settings.max_delete_fraction, run_id, deadline, config.nul_bytes(spec))
    except FatalError as exc:
        log.error("%s", exc, **ctx(run_id=run_id, table=spec.name))
        ledger.record_delete_pass(conn, run_id, spec.name, spec.deletes, {}, str(exc))
        ledger.store_reconciliation(conn, run_id, spec.name, chunks.get("rows_copied", 0), None, None, False, str(exc),
                                    "rows_read")
        return Reconciliation(spec.name, False, chunks.get("rows_copied", 0), None, None, str(exc))
    if done is None:
        log.info("the deletes pass of %s goes on in the next invocation", spec.name, **ctx(run_id=run_id, table=spec.name))
        return CONTINUED
    ledger.record_delete_pass(conn, run_id, spec.name, spec.deletes, vars(done))
    ledger.add_plan_note(conn, run_id, spec.name, done.describe())
    return None


def deferred_queries(conn: psycopg.Connection[Any], run_id: int, wait_seconds: float) -> Deferred:
    """Snowflake queries of this run that may be waited for across invocations, their ids kept in the ledger."""
    return Deferred(lambda key: ledger.pending_query(conn, run_id, key),
                    lambda key, query_id: ledger.remember_query(conn, run_id, key, query_id),
                    lambda key: ledger.forget_query(conn, run_id, key), wait_seconds)


def finish_table(conn: psycopg.Connection[Any], run_id: int, spec: TableSpec, load: TableLoad,
                 swap_lock_timeout: float = 2.0) -> bool:
    """The post-load step of a reconciled table: build its primary key (if planned) or, in swap mode, swap the
    shadow in; ANALYZE; mark it completed. A crash leaves it 'post_load' for the next attempt; two callers at
    once are serialised by the ledger row's lock and the second finds nothing to do.

    A swap first prepares the shadow (its indexes, keys, grants, statistics) in its own transaction, which
    never locks the live table; then one short transaction waits at most `swap_lock_timeout` seconds for the
    live table's lock (readers queue behind a waiting lock) and swaps. A timeout retries only that
    transaction. Returns True if this call completed the table."""
    started = time.monotonic()
    step = None
    swapping = load.mode == "swap" and load.destination != spec.target  # (after the swap: a repair's post-load)
    what = f"finishing {spec.target_name} after the load"
    began = 0.0
    try:
        if swapping:
            what = f"preparing {'.'.join(load.destination)} to replace {spec.target_name}"
            with conn.transaction():
                if ledger.claim_post_load(conn, run_id, spec.name) is None:
                    return False
                conn.execute("SET LOCAL statement_timeout = 0")  # index builds on a big table may take hours
                swap.prepare(conn, spec.target, load.destination, run_id)
        with conn.transaction():
            step = ledger.claim_post_load(conn, run_id, spec.name)
            if step is None:
                return False
            analyzed = False
            if swapping:
                conn.execute("SET LOCAL statement_timeout = 0")
                what = f"swapping {'.'.join(load.destination)} in for {spec.target_name}"
                conn.execute(f"SET LOCAL lock_timeout = {max(1, int(swap_lock_timeout * 1000))}")
                began = time.monotonic()
                backup = swap.swap_in(conn, spec.target, load.destination, run_id, spec.name)
            else:
                build_key = bool(step.primary_key) and not pg.has_primary_key(conn, spec.target)
                analyzed = not load.staged or pg.worth_analyzing(conn, spec.target, step.rows_written)
                if build_key or analyzed:
                    conn.execute("SET LOCAL statement_timeout = 0")  # index builds on a big table may take hours
                if build_key:
                    what = f"building the primary key of {spec.target_name} after the load"
                    pg.add_primary_key(conn, spec.target, step.primary_key)
                if analyzed:
                    pg.analyze(conn, spec.target)  # fresh planner statistics once the bulk load is over
            faults.maybe_crash("post_load")
            ledger.complete_post_load(conn, run_id, spec.name, bool(step.primary_key), analyzed or swapping)
    except Exception as exc:
        error = classify(exc, what)
        if swapping and isinstance(exc, psycopg.errors.LockNotAvailable):
            error = TransientError(f"{what}: other sessions held {spec.target_name} longer than swap_lock_timeout_seconds "
                                   f"({swap_lock_timeout:g} s); the shadow is ready, the swap alone is tried again")
        if isinstance(error, TransientError):
            raise error from exc
        ledger.fail_post_load(conn, run_id, spec.name, str(error))
        log.error("%s", error, **ctx(run_id=run_id, table=spec.name))
        return False
    if swapping:
        log.info("swapped in: the old table is kept as %s; the live table was locked for %.3fs (from asking for "
                 "its lock to the swap's commit)", ".".join(backup), time.monotonic() - began,
                 **ctx(run_id=run_id, table=spec.name))
    if step.primary_key:
        log.info("primary key (%s) built in %.1fs", ", ".join(step.primary_key), time.monotonic() - started,
                 **ctx(run_id=run_id, table=spec.name))
    return True


def verify_finished_tables(config: SourceConfig, run_id: int, deadline: float | None = None) -> tuple[list[Any], int]:
    """settings.verify: content checksums of the completed tables' chunks not verified yet in this run, until
    `deadline`; a table that differs is failed. Returns the results and how many chunks are left."""
    from lib.check.verify import record_differences, unverified_chunks, verify_run

    with pg.connect(config.postgres_connect_args(), autocommit=True) as conn:
        completed = {t["table_name"] for t in ledger.table_rows(conn, run_id) if t["status"] == "completed"}
        todo = unverified_chunks(conn, run_id, completed)
    if not todo:
        return [], 0
    results = verify_run(config, run_id, set(todo), None, config.settings.parallel_threads or 2, only=todo,
                         deadline=deadline)
    record_differences(config, run_id, results)
    with pg.connect(config.postgres_connect_args(), autocommit=True) as conn:
        left = sum(len(chunks) for chunks in unverified_chunks(conn, run_id, completed).values())
    return results, left


def finalize_run(config: SourceConfig, run_id: int, interrupted: bool = False, error: str | None = None) -> str:
    """Persist the run's true status and counters, derived from the table and chunk ledgers."""
    with pg.connect(config.postgres_connect_args(), autocommit=True) as conn:
        counters = ledger.finalize_run_counters(conn, run_id)
        counts = ledger.chunk_counts(conn, run_id)
        unfinished = any(c["pending"] or c["running"] for c in counts.values())
        tables = ledger.table_rows(conn, run_id)
        open_tables = any(t["status"] in ("pending", "running", "post_load") for t in tables)
        if interrupted or unfinished or open_tables:
            final = "running"  # resumable: the next start with this config picks it up
        elif error:
            final = "failed"
        elif counters["failed_tables"]:
            final = "completed_with_errors"
        else:
            final = "completed"
        ledger.set_run_status(conn, run_id, final, error)
    return final


def run(config: SourceConfig) -> RunResult:
    """Local invocation: start or resume, copy with threads, reconcile, finalize — on every exit path.

    Every step is idempotent, so a transient failure (PostgreSQL restarting, a Snowflake session
    expiring) repeats the step after a backoff instead of failing the run.
    """
    policy = config.retry_policy()

    def retried(fn: Callable[[], T], what: str) -> T:
        return call_with_retry(fn, policy, what)

    started = time.monotonic()
    token = uuid.uuid4().hex  # retries of this start resume the run it created, even under no_resume
    wall_start = retried(lambda: _db_now(config), "reading the clock")  # before planning, which may write rows
    start = retried(lambda: start_run(config, token, write_early=True), "starting the run")
    config = start.config or config
    if start.mode == "nothing_to_do":
        tables = retried(lambda: summarize(config, start.run_id, None), "summarizing")
        return RunResult(start.run_id, start.mode, "completed", start.message,
                         retried(lambda: run_seconds(config, start.run_id), "reading the run's duration"), tables=tables)
    interrupted, error = False, None
    final = "running"
    try:
        claimable = retried(lambda: _claimable_chunks(config, start.run_id), "counting the chunks to copy")
        plan = retried(lambda: work_plan(config, start.run_id), "loading the plan") if claimable else None
        if plan is not None and plan.tables:
            threads = thread_count(config, plan, at_most=claimable)
            # with no more chunks than threads, none is left to read ahead: no second connection is opened for it
            plan.read_ahead = claimable > threads and reading_ahead(config, threads, plan.run_id)
            log.info("copying with %d thread(s)%s", threads, ", each reading its next chunk while it writes one"
                     if plan.read_ahead else "", **ctx(run_id=start.run_id))
            with ProgressMonitor(config.postgres_connect_args(), start.run_id):
                work(plan, threads)
        retried(lambda: reconcile_finished_tables(config, start.run_id), "reconciling")
        if config.settings.verify:
            verify_finished_tables(config, start.run_id)
    except KeyboardInterrupt:
        interrupted = True
        raise
    except MigrationError as exc:
        error = str(exc)
        raise
    finally:
        try:
            final = retried(lambda: finalize_run(config, start.run_id, interrupted, error), "finalizing the run")
        except Exception as exc:  # noqa: BLE001 - the original error matters more; log this one
            log.error("could not persist the final run status: %s", exc, **ctx(run_id=start.run_id))
    return RunResult(start.run_id, start.mode, final, start.message, round(time.monotonic() - started, 2),
                     tables=retried(lambda: summarize(config, start.run_id, wall_start), "summarizing"))


def _claimable_chunks(config: SourceConfig, run_id: int) -> int:
    """Chunks of the run left to copy: no more threads (and connections) than that are started."""
    with pg.connect(config.postgres_connect_args(), autocommit=True) as conn:
        return sum(c["pending"] + c["running"] for c in ledger.chunk_counts(conn, run_id).values())


def run_seconds(config: SourceConfig, run_id: int) -> float:
    """How long the run took (to now, while it is not finished), as the ledger says."""
    with pg.connect(config.postgres_connect_args(), autocommit=True) as conn:
        row = conn.execute(f"SELECT extract(epoch FROM coalesce(completed_at, now()) - started_at) "
                           f"FROM {ledger.SCHEMA}.migration_runs WHERE run_id = %s", (run_id,)).fetchone()
    return round(float(row[0]), 2) if row and row[0] is not None else 0.0


def _db_now(config: SourceConfig) -> Any:
    with pg.connect(config.postgres_connect_args(), autocommit=True) as conn:
        row = conn.execute("SELECT now()").fetchone()
        assert row is not None
        return row[0]


def summarize(config: SourceConfig, run_id: int, since: Any) -> list[dict[str, Any]]:
    """Per table: ledger state plus rows/s and MB/s of the chunks copied since `since`."""
    with pg.connect(config.postgres_connect_args(), autocommit=True) as conn:
        tables = ledger.table_rows(conn, run_id)
        speed = {}
        if since is not None:
            for name, rows, nbytes, secs in conn.execute(
                f"SELECT table_name, sum(rows_copied), sum(bytes_copied), "
                "extract(epoch FROM max(completed_at) - min(started_at)) "
                f"FROM {ledger.SCHEMA}.migration_chunk_status WHERE run_id = %s AND status = 'done' "
                "AND completed_at >= %s GROUP BY 1",
                (run_id, since),
            ).fetchall():
                secs = max(float(secs or 0), 0.001)
                speed[name] = (int(rows), round(int(rows) / secs), round(int(nbytes or 0) / secs / 2**20, 1))
        counts = ledger.chunk_counts(conn, run_id)
        later = ledger.later_loads(conn, run_id)
    out = []
    for t in tables:
        name = t["table_name"]
        c = counts.get(name, {})
        rows_now, rows_s, mb_s = speed.get(name, (0, 0, 0.0))
        wm_column = t["watermark_column"]
        out.append({
            "table": name, "target": t["target_table"], "status": t["status"], "strategy": t["strategy"],
            "chunks": sum(c.get(k, 0) for k in ("pending", "running", "done", "failed")),
            "chunks_done": c.get("done", 0), "chunks_failed": c.get("failed", 0), "expected_rows": t["planned_rows"],
            "rows_copied": c.get("rows_copied", 0), "rows_copied_now": rows_now,
            "source_count": t["source_count"], "target_count": t["target_count"],
            "reconcile": t["reconcile_status"], "rows_per_s": rows_s, "mb_per_s": mb_s, "error": t["error"],
            "load_mode": t["load_mode"], "merge_key": t["merge_key"], "rows_inserted": c.get("rows_inserted", 0),
            "rows_updated": c.get("rows_updated", 0),
            "window": {"column": wm_column, "lo": t["watermark_lo"], "hi": t["watermark_hi"]} if wm_column else None,
            "values_changed": c.get("values_changed", 0),
            # a later run (of any config) loaded this target since: this run's counts no longer describe it
            "changed_by": (f"run {later[t['target_table']][0]} (source {later[t['target_table']][1]})"
                           if t["target_table"] in later else None),
        })
    return out
