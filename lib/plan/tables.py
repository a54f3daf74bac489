"""Planning a run's tables, each once: describe it, check its options against its columns, fix its
watermark window, cut its chunks, prepare its target (create, truncate, shadow, or check for a key)
and store all of it in the ledger in one transaction. A stored plan is never recomputed."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from typing import Any

import psycopg

from lib import faults, ledger
from lib.config import Settings, SourceConfig, TableSpec, pg_identifier_problem
from lib.errors import FatalError, StillRunning, TransientError, classify
from lib.log import ctx, get_logger
from lib.models import TablePlan, key_examples
from lib.plan import evolution
from lib.plan.budget import ReadShape, fit_chunk_rows, fit_connections, requested_threads
from lib.plan.chunking import plan_single
from lib.plan.early_rows import write_with_plan
from lib.plan.probe import probe_window
from lib.plan.strategy import plan_table
from lib.plan.windows import plan_window
from lib.source.snowflake import SnowflakeSource
from lib.target import load_modes
from lib.target import postgres as pg
from lib.target.evolution import added_sources, types_after
from lib.target.windows import LastLoad, Window, load_history, load_scope, scope_filter
from lib.typemap import Column, columns_from_description, estimated_row_bytes, numeric_key_scale

log = get_logger()


def refresh_target_types(conn: psycopg.Connection[Any], config: SourceConfig, run_id: int) -> None:
    """On resume, take existing targets' current column types: an operator may have widened a
    column that a failed chunk did not fit (the plan's chunks and bounds never change)."""
    stored = ledger.table_columns(conn, run_id)
    for spec in config.tables:
        described = stored.get(spec.name)
        if not described or not any("target_type" in d for d in described):
            continue
        current = pg.types_by_source_column(conn, spec.target, columns_from_description(described))
        refreshed = [{**d, "target_type": current.get(d["name"], d["target_type"])} for d in described]
        if refreshed != described:
            ledger.update_table_columns(conn, run_id, spec.name, refreshed)
            log.info("target column types changed since planning: the new types are used", **ctx(run_id=run_id, table=spec.name))


def plan_missing_tables(conn: psycopg.Connection[Any], config: SourceConfig, run_id: int,
                        source: SnowflakeSource, deadline: float | None = None,
                        post_load_seconds: float | None = None, write_early: bool = False) -> int:
    """Plan each table that has no stored plan yet, reading through `source` (at the run's snapshot, if it
    has one), until `deadline` (time.monotonic()). A stored plan is never recomputed. Returns how many tables
    are left to plan: those the deadline left, and those whose stats query still runs in Snowflake (a Step
    Functions Plan step asks again later, lib/source/deferred.py). `write_early`: a small window's rows read while
    planning are written with its plan (lib/plan/early_rows.py)."""
    planned = ledger.planned_tables(conn, run_id)
    todo = [t for t in config.tables if t.name not in planned]
    if not todo:
        return 0
    snapshot = ledger.run_snapshot(conn, run_id)
    left = attempted = 0
    for spec in todo:
        if deadline is not None and time.monotonic() >= deadline and attempted:  # each call plans one at least
            left += 1
            continue
        attempted += 1
        try:
            _plan_one(conn, source, config, run_id, spec, snapshot, post_load_seconds=post_load_seconds, write_early=write_early)
        except StillRunning as pending:
            log.info("planning %s waits for Snowflake query %s", spec.name, pending.query_id,
                     **ctx(run_id=run_id, table=spec.name))
            left += 1
        except Exception as exc:
            error = classify(exc, f"planning {spec.name}")
            if isinstance(error, TransientError):
                raise error from exc
            log.error("table failed at planning: %s", error, **ctx(run_id=run_id, table=spec.name))
            ledger.record_table_failure(conn, run_id, spec.name, spec.target_name, str(error))
    return left


@dataclass(frozen=True)
class PlannedTable:
    """What planning decided for a table (`migrate.py plan` prints it; a run stores it)."""

    plan: TablePlan
    load: load_modes.TableLoad
    read_at: str | None
    columns: list[Column]


def preview(conn: psycopg.Connection[Any], source: SnowflakeSource, config: SourceConfig,
            spec: TableSpec) -> PlannedTable:
    """Plan a table exactly as a run would (the same reads, checks, load mode, key and window), but change
    nothing: no table is created, truncated or shadowed, nothing is stored. Raises what the run would meet."""
    snapshot = source.now() if config.settings.snapshot is not False else None
    return _plan_one(conn, source, config, 0, spec, snapshot, dry_run=True)


def _plan_one(conn: psycopg.Connection[Any], source: SnowflakeSource, config: SourceConfig, run_id: int,
              spec: TableSpec, snapshot: str | None, dry_run: bool = False,
              post_load_seconds: float | None = None, write_early: bool = False) -> PlannedTable:
    scope = load_scope(config.snowflake_connect_args().get("account"), spec.source, spec.source_filter,
                       spec.source_watermark, spec.target_name)
    # the ledger's word on the target's earlier loads, read once for the probe, the window and schema evolution
    history = load_history(conn, scope, run_id)
    prior, last = history.described, history.last if spec.source_watermark else None
    target_types = pg.target_column_types(conn, spec.target)  # None: no such table
    if last is not None and last.hi is not None and not last.why:
        last = _target_lost(conn, spec, target_types, last)
    # a watermark table read live whose last window completed: its columns, window and (`write_early`, a small
    # window) rows in one query; without a snapshot only, whose time and retention would be queries of their own
    probe = probe_window(source, spec, prior, last, one_chunk_rows(config, spec) if write_early and not dry_run else 0) \
        if last is not None and snapshot is None else None
    described = probe.described if probe and probe.described is not None else source.describe(spec.source)
    columns = columns_from_description(described)
    read_at, read_notes = reads_at(source, spec, config, snapshot)
    if read_at is None:
        source.snapshots.pop(spec.source, None)
    else:
        source.snapshots[spec.source] = read_at
    for name in pg.target_column_names(columns):
        if problem := pg_identifier_problem(name):
            raise FatalError(f"target column {problem}")
    problems = load_modes.schema_problems(spec, columns, target_types)
    if problems:
        raise FatalError(f"{spec.name} cannot be planned: {'; '.join(problems)}")
    changes = evolution.changes_for(conn, spec, columns, run_id, dry_run, target_types, history.planned_columns)
    planned_window = plan_window(conn, source, spec, columns, run_id, last, probe) if last is not None else None
    window = planned_window.window if planned_window else None
    window_notes = planned_window.notes if planned_window else []
    nulls_note = planned_window.nulls_note if planned_window else None
    if window is not None:
        window = evolution.filling_window(window, changes, columns, [c["name"] for c in prior] if prior else None,
                                          window_notes)
    # a small incremental window (a run that finds little or nothing new) that fits one of its chunks: one chunk,
    # sized by the query that read hi, with no stats query and no sample (not a window that fills an added column
    # from the beginning: that one holds the whole scope, which the count did not cover)
    small = planned_window.rows if planned_window and window is planned_window.window else None
    one_chunk = small is not None and window is not None and window.lo is not None and small <= one_chunk_rows(config, spec)
    if window is not None and window.empty:
        plan = TablePlan("window", [], f"nothing at or above the last {window.column} ({window.lo}): no rows to read")
        one_chunk = False
    elif one_chunk:
        assert planned_window is not None and planned_window.rows is not None
        plan = plan_single(planned_window.rows, f"an incremental window of {planned_window.rows} row(s), at most "
                                                f"{SMALL_WINDOW_ROWS}: one chunk, counted with its high end")
        plan.source_results = source.results_mode(config.settings.source_results)
        plan.row_bytes = estimated_row_bytes(columns)
    else:
        scoped = scoped_spec(spec, window)
        fit = read_fit(source, config, scoped, columns,
                       probe.row_bytes if probe and planned_window and planned_window.probed else None)
        plan = plan_table(source, scoped, columns, window_chunk_rows(fit.chunk_rows, spec, window))
        plan.source_results, plan.row_bytes = fit.results, fit.row_bytes
        plan.notes.extend([fit.note] if fit.note else [])
    plan.notes.extend(read_notes)
    if read_at is None and plan.mutable and len(plan.chunks) > 1:
        note = (f"not one snapshot: {plan.mutable}, and the table is read live, so a row changed between the reads of "
                "two chunks would be copied twice or not at all. Read it at a snapshot (snapshot true, or a Time Travel "
                "retention that covers resume_max_age) or set chunking_columns to a column that never changes")
        log.warning("%s", note, **ctx(run_id=run_id, table=spec.name))
        plan.notes.append(note)
    plan.notes.extend(window_notes)
    if window is not None:
        whole = "first window" if window.lo_from == "none" else f"whole window ({window.lo_from})"
        plan.notes.append(f"window {window.column} >= {window.lo} (from the {window.lo_from}) and <= {window.hi}"
                          if window.lo is not None else f"{whole}: {window.column} <= {window.hi}, and NULLs")
        if nulls_note:
            plan.notes.append(nulls_note)
    early_rows = probe.early if (one_chunk and probe and planned_window and planned_window.probed and read_at is None
                                 and probe.early is not None and probe.early.num_rows == plan.expected_rows) else None
    if early_rows is not None:
        plan.notes.append(f"the window's {early_rows.num_rows} row(s) were read by the query that found its high end "
                          "and are written with the plan")
    with conn.transaction(force_rollback=dry_run):
        ledger.lock_target(conn, spec.target_name)
        owner = ledger.target_owner(conn, spec.target_name, run_id)
        if owner is not None:
            raise FatalError(
                f"target table {spec.target_name} is being loaded by run {owner.run_id} (source {owner.source_name}, "
                f"table {owner.table_name}, started {owner.started_at:%Y-%m-%d %H:%M %Z}, run {owner.run_status}, "
                f"table {owner.table_status}); two runs must never load one table. Resume that run with its own "
                f"config, or give it up with: migrate.py abandon --source {owner.source_name} --run-id {owner.run_id}"
            )
        # The DDL's ACCESS EXCLUSIVE lock lasts until the plan commits: taken after the Snowflake key check,
        # except for a swap, whose shadow is created like the live table and must get the new columns.
        early = spec.load_mode == "swap"
        if early:
            evolution.apply_changes(conn, spec, run_id, changes, dry_run, plan.notes)
        present = columns if early and not dry_run else [c for c in columns if c.name not in added_sources(changes)]
        load, existing_types, key = load_modes.prepare(conn, spec, present, run_id,
                                                       lambda: source.primary_key(spec.source), plan.notes, window,
                                                       config.no_resume, dry_run,
                                                       None if post_load_seconds is None
                                                       else (plan.expected_rows, post_load_seconds))
        if load.staged and one_chunk and read_at is None:
            # the one chunk's stage is checked for NULL and repeated keys (lib/target/loaders.py), and it holds every
            # row in scope: a query here would read the same rows once more
            plan.notes.append(f"key ({', '.join(load.key)}): the window is one chunk read live, whose stage is "
                              "checked for NULL and repeated keys")
        elif load.staged:
            _check_source_key(source, scoped_spec(spec, window), columns, load.key, read_at, plan.notes, target_types)
        if not early:
            evolution.apply_changes(conn, spec, run_id, changes, dry_run, plan.notes)
        if existing_types is not None and changes:
            existing_types = (types_after(existing_types, changes) if dry_run
                              else pg.types_by_source_column(conn, spec.target, columns))
        if existing_types is not None:
            described = [{**d, "target_type": existing_types[d["name"]]} for d in described]
            for column in columns_from_description(described):
                if column.via_text:
                    plan.notes.append(f"column {column.name} ({column.pg_type}) has no binary Arrow encoding: "
                                      "it alone is sent as text and cast by PostgreSQL; the other columns stay binary")
        if key:
            plan.notes.append(f"primary key ({', '.join(key)}) is built after the load")
        planned = PlannedTable(plan, replace(load, read_at=read_at), read_at, columns_from_description(described))
        if dry_run:
            return planned
        ledger.store_plan(conn, run_id, spec.name, spec.target_name, plan, described,
                          {**load.ledger_fields(), "load_scope": json.dumps(scope), "read_at": read_at})
        if key:
            ledger.set_primary_key_plan(conn, run_id, spec.name, key)
        # a window whose planning count is its whole reconciliation, with no deletes pass and no key to build, has
        # nothing left for later: the table completes with its plan
        counted = window.rows if (window is not None and planned.load.counted_when_planned(read_at is not None)
                                  and not key and spec.deletes == "ignore") else None
        written = early_rows is not None and write_with_plan(conn, config, run_id, spec, planned.columns, planned.load,
                                                             early_rows, counted) is not None
        if early_rows is not None and not written:
            ledger.add_plan_note(conn, run_id, spec.name, "the rows could not be written with the plan: its chunk "
                                                          "reads them again")
    if written:
        faults.maybe_crash("after_commit")
    log.info(
        "planned %s: %s load, %s strategy, %d chunks, %d rows expected, %d planning quer%s in %.2fs (%s)",
        spec.name, load.mode, plan.strategy, len(plan.chunks), plan.expected_rows, plan.queries,
        "y" if plan.queries == 1 else "ies", plan.seconds, plan.reason, **ctx(run_id=run_id, table=spec.name),
    )
    for note in plan.notes:
        log.info("plan note: %s", note, **ctx(run_id=run_id, table=spec.name))
    return planned


def _target_lost(conn: psycopg.Connection[Any], spec: TableSpec, target_types: dict[str, str] | None,
                 last: LastLoad) -> LastLoad:
    """The ledger's last window, unless the target lost what it loaded: dropped or renamed (gone), or emptied. A window
    from the ledger's end would then bring back only the rows changed since, and its counts, which cover the window
    alone, would match; the whole scope is read instead (a merge: harmless also when the target is empty because
    every source row was deleted)."""
    lost = ("does not exist" if target_types is None
            else "holds no rows" if not pg.has_rows(conn, spec.target) else None)
    if lost is None:
        return last
    return LastLoad(None, False, f"target {spec.target_name} {lost}, yet an earlier window of this scope loaded it "
                                 "(it was dropped, renamed or emptied since), so this window reads the whole scope")


def _check_source_key(source: SnowflakeSource, spec: TableSpec, columns: list[Column], key: tuple[str, ...],
                      read_at: str | None, notes: list[str], target_types: dict[str, str] | None = None) -> None:
    """The key of a catch-up or merge must name one source row: no NULL in it (ON CONFLICT never matches NULL,
    so those rows would be inserted again by every run) and no key held by two rows (Snowflake does not enforce
    keys: a catch-up would keep one of them, a merge cannot apply both). Checked on the rows in scope, at the
    table's read point; a table read live is checked again in each chunk's stage (lib/target/loaders.py)."""
    names = {pg.target_column_name(c.name): c for c in columns}
    source_key = [names[k].name for k in key]
    as_numbers = {names[k].name: scale for k in key
                  if (scale := numeric_key_scale(names[k], (target_types or {}).get(k))) is not None}
    found = source.key_problems(spec.source, source_key, spec.source_filter, as_numbers)
    shown = ", ".join(source_key)
    problems = []
    if found.null_rows:
        problems.append(f"{found.null_rows} row(s) in scope have a NULL in the key ({shown}): ON CONFLICT never matches "
                        "NULL, so every run would insert them again. Give them a key, leave them out with source_filter, "
                        "or set merge_key to columns that hold no NULL")
    if found.repeated_rows:
        examples = key_examples(found.examples)
        problems.append(f"the source repeats keys: {found.repeated_rows} row(s) in scope have a key ({shown}) that another "
                        f"row has too (e.g. {examples}). Snowflake does not enforce keys; a catch-up would keep one row of "
                        "each and a merge cannot apply both. Deduplicate the source, leave the repeats out with "
                        "source_filter, or set merge_key to columns that name one row")
    if problems:
        raise FatalError(f"{spec.name}: {' | '.join(problems)}")
    notes.append(f"key ({shown}): no NULL and no repeated key in the rows in scope"
                 + (" at the read point" if read_at else " when planned; each chunk's stage is checked again"))


@dataclass(frozen=True)
class ReadFit:
    """How a table's chunks will be read and the chunk_rows that fits the memory budget with them."""

    results: str  # "whole" or "streamed"
    row_bytes: int
    chunk_rows: int
    note: str | None  # why chunk_rows was lowered

    def shape(self, settings: Settings) -> ReadShape:
        return ReadShape.for_settings(self.results, self.row_bytes, self.chunk_rows, settings)


def read_fit(source: SnowflakeSource, config: SourceConfig, spec: TableSpec, columns: list[Column],
             sampled: int | None = None) -> ReadFit:
    """The source's result mode, the table's Arrow bytes per row measured on a sample of real rows (`sampled`: as
    a query that read some already measured; the column types' estimate when there are none; rows wider than the
    sample lower the threads while copying), and chunk_rows, lowered when a chunk arrives as one whole result and
    the threads would not fit the budget."""
    settings = config.settings
    results = source.results_mode(settings.source_results)
    row_bytes = (sampled or source.sample_row_bytes(spec.source, columns, spec.source_filter)
                 or estimated_row_bytes(columns))
    chunk_rows, why = config.chunk_rows(spec), None
    if results == "whole":
        _, threads, _ = fit_connections(1, requested_threads(settings.parallel_threads), settings.max_target_connections)
        chunk_rows, why = fit_chunk_rows(chunk_rows, settings.batch_size, row_bytes, threads, settings.memory_budget_mb)
        if why:
            log.warning("%s", why, **ctx(table=spec.name))
    return ReadFit(results, row_bytes, chunk_rows, why)


def reads_at(source: SnowflakeSource, spec: TableSpec, config: SourceConfig,
             snapshot: str | None) -> tuple[str | None, list[str]]:
    """The point in time the table is read at (None: live), and the plan notes that say which and why.

    `snapshot` auto reads at the run's snapshot where the table's Time Travel retention covers the whole
    resume window (a resumed run's reads then always find the history), `true` reads every table at it."""
    setting = config.settings.snapshot
    if snapshot is None or setting is False:
        return None, ["reads: live (snapshot false): every chunk reads the table as it is when the chunk is read"]
    days = source.retention_days(spec.source)
    hours = config.settings.resume_max_age
    if setting == "auto":
        if days is not None and days * 24 >= hours:
            return snapshot, [f"reads: AT(TIMESTAMP => {snapshot}), one point in time; Time Travel keeps {days} day(s) "
                              f"of {spec.name}, which covers the resume window ({hours:g} h)"]
        kept = "unknown (SHOW TABLES did not say)" if days is None else f"{days} day(s) ({days * 24} h)"
        return None, [f"reads: live, not one snapshot: Time Travel keeps {kept} of {spec.name}, less than the resume "
                      f"window ({hours:g} h), so a resumed run could not read the run's snapshot. Raise "
                      "DATA_RETENTION_TIME_IN_DAYS, lower resume_max_age, or set snapshot true"]
    if days == 0:
        raise FatalError(f"{spec.name} has no Time Travel (DATA_RETENTION_TIME_IN_DAYS = 0), so it cannot be read at "
                         f"the run's snapshot {snapshot}: raise its retention, or set snapshot to auto or false")
    if days is None:
        note = f"reads: AT(TIMESTAMP => {snapshot}); the table's Time Travel retention is unknown (SHOW TABLES did not say)"
    elif days * 24 < hours:
        note = (f"reads: AT(TIMESTAMP => {snapshot}); Time Travel keeps {days} day(s) ({days * 24} h) of {spec.name}, but "
                f"the run may be resumed for {hours:g} h (resume_max_age): chunks read after {days * 24} h would fail. "
                "Raise DATA_RETENTION_TIME_IN_DAYS (up to 90 on Enterprise) or CLONE the table AT the snapshot first")
    else:
        return snapshot, [f"reads: AT(TIMESTAMP => {snapshot}), one point in time; Time Travel keeps {days} day(s) "
                          f"of {spec.name}"]
    log.warning("%s", note, **ctx(table=spec.name))
    return snapshot, [note]


# An incremental window's chunks are this much smaller than a copy's: a window is small next to the table, and
# merging a changed row costs several times copying a new one, so a few large chunks leave threads idle while
# one merges (measured: 250,000 rows in one chunk, 3.98 s, beside 150,000 in the other, 1.36 s)
WINDOW_CHUNK_DIVISOR = 4
SMALL_WINDOW_ROWS = 10_000  # an incremental window this small (and within one chunk) is one chunk, without a stats query
WINDOW_CHUNK_MIN_ROWS = 10_000


def one_chunk_rows(config: SourceConfig, spec: TableSpec) -> int:
    """The most rows an incremental window (after the first) may hold to be planned as one chunk."""
    return min(SMALL_WINDOW_ROWS, _incremental_chunk_rows(config.chunk_rows(spec), spec))


def window_chunk_rows(chunk_rows: int, spec: TableSpec, window: Window | None) -> int:
    """chunk_rows for this table's plan: an incremental window's (after the first) is a quarter of it, unless the
    table sets its own."""
    return chunk_rows if window is None or window.lo is None else _incremental_chunk_rows(chunk_rows, spec)


def _incremental_chunk_rows(chunk_rows: int, spec: TableSpec) -> int:
    if spec.chunk_rows is not None:
        return chunk_rows
    return max(min(chunk_rows, WINDOW_CHUNK_MIN_ROWS), chunk_rows // WINDOW_CHUNK_DIVISOR)


def scoped_spec(spec: TableSpec, window: Window | None) -> TableSpec:
    """The spec whose source_filter is the rows this run reads: the config's filter and the stored window."""
    return replace(spec, source_filter=scope_filter(spec.source_filter, window)) if window else spec
