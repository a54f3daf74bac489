"""Planning a run's tables, each once: describe it, check its options against its columns, fix its
watermark window, cut its chunks, prepare its target (create, truncate, shadow, or check for a key)
and store all of it in the ledger in one transaction. A stored plan is never recomputed."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import psycopg

from lib import load_modes, status
from lib import postgres_target as pg
from lib.budget import ReadShape, fit_chunk_rows, fit_connections, requested_threads
from lib.config import Settings, SourceConfig, TableSpec, pg_identifier_problem
from lib.errors import FatalError, TransientError, classify
from lib.log import ctx, get_logger
from lib.models import TablePlan
from lib.planner import plan_table
from lib.snowflake_source import SnowflakeSource
from lib.typemap import Column, columns_from_description, estimated_row_bytes
from lib.watermark import Window, kind_of, ledger_hi, lowered, null_note, scope_filter, source_max, target_max

log = get_logger()


def refresh_target_types(conn: psycopg.Connection[Any], config: SourceConfig, run_id: int) -> None:
    """On resume, take existing targets' current column types: an operator may have widened a
    column that a failed chunk did not fit (the plan's chunks and bounds never change)."""
    stored = status.table_columns(conn, run_id)
    for spec in config.tables:
        described = stored.get(spec.name)
        if not described or not any("target_type" in d for d in described):
            continue
        current = pg.types_by_source_column(conn, spec.target, columns_from_description(described))
        refreshed = [{**d, "target_type": current.get(d["name"], d["target_type"])} for d in described]
        if refreshed != described:
            status.update_table_columns(conn, run_id, spec.name, refreshed)
            log.info("target column types changed since planning: the new types are used", **ctx(run_id=run_id, table=spec.name))


def plan_missing_tables(conn: psycopg.Connection[Any], config: SourceConfig, run_id: int,
                        source: SnowflakeSource) -> None:
    """Plan each table that has no stored plan yet, reading through `source` (at the run's snapshot, if it
    has one). A stored plan is never recomputed."""
    planned = status.planned_tables(conn, run_id)
    todo = [t for t in config.tables if t.name not in planned]
    if not todo:
        return
    source.snapshot_at = status.run_snapshot(conn, run_id)
    for spec in todo:
        try:
            _plan_one(conn, source, config, run_id, spec)
        except Exception as exc:
            error = classify(exc, f"planning {spec.name}")
            if isinstance(error, TransientError):
                raise error from exc
            log.error("table failed at planning: %s", error, **ctx(run_id=run_id, table=spec.name))
            status.record_table_failure(conn, run_id, spec.name, spec.target_name, str(error))


def _plan_one(conn: psycopg.Connection[Any], source: SnowflakeSource, config: SourceConfig, run_id: int,
              spec: TableSpec) -> None:
    described = source.describe(spec.source)
    columns = columns_from_description(described)
    snapshot_notes = _check_retention(source, spec, config) if source.snapshot_at else []
    for name in pg.target_column_names(columns):
        if problem := pg_identifier_problem(name):
            raise FatalError(f"target column {problem}")
    target_types = pg.target_column_types(conn, spec.target) if pg.table_exists(conn, spec.target) else None
    problems = load_modes.schema_problems(spec, columns, target_types)
    if problems:
        raise FatalError(f"{spec.name} cannot be planned: {'; '.join(problems)}")
    window = _window(conn, source, spec, columns, run_id) if spec.source_watermark else None
    if window is not None and window.empty:
        plan = TablePlan("window", [], f"nothing above the last {window.column} ({window.lo}): no rows to read")
    else:
        scoped = scoped_spec(spec, window)
        fit = read_fit(source, config, scoped, columns)
        plan = plan_table(source, scoped, columns, fit.chunk_rows)
        plan.source_results, plan.row_bytes = fit.results, fit.row_bytes
        plan.notes.extend([fit.note] if fit.note else [])
    plan.notes.extend(snapshot_notes)
    if window is not None:
        plan.notes.append(f"window {window.column} > {window.lo} (from the {window.lo_from}) and <= {window.hi}"
                          if window.lo is not None else f"first window: {window.column} <= {window.hi}, and NULLs")
        if window.lo is not None and (note := null_note(source, spec.source, window.column, spec.source_filter)):
            plan.notes.append(note)
    with conn.transaction():
        status.lock_target(conn, spec.target_name)
        owner = status.target_owner(conn, spec.target_name, run_id)
        if owner is not None:
            raise FatalError(
                f"target table {spec.target_name} is being loaded by run {owner.run_id} (source {owner.source_name}, "
                f"table {owner.table_name}, started {owner.started_at:%Y-%m-%d %H:%M %Z}, run {owner.run_status}, "
                f"table {owner.table_status}); two runs must never load one table. Resume that run with its own "
                f"config, or give it up with: migrate.py abandon --source {owner.source_name} --run-id {owner.run_id}"
            )
        load, existing_types, key = load_modes.prepare(conn, spec, columns, run_id,
                                                       lambda: source.primary_key(spec.source), plan.notes, window)
        if existing_types is not None:
            described = [{**d, "target_type": existing_types[d["name"]]} for d in described]
            for column in columns_from_description(described):
                if column.via_text:
                    plan.notes.append(f"column {column.name} ({column.pg_type}) has no binary Arrow encoding: "
                                      "it alone is sent as text and cast by PostgreSQL; the other columns stay binary")
        if key:
            plan.notes.append(f"primary key ({', '.join(key)}) is built after the load")
        status.store_plan(conn, run_id, spec.name, spec.target_name, plan, described, load.ledger_fields())
        if key:
            status.set_primary_key_plan(conn, run_id, spec.name, key)
    log.info(
        "planned %s: %s load, %s strategy, %d chunks, %d rows expected, %d planning quer%s in %.2fs (%s)",
        spec.name, load.mode, plan.strategy, len(plan.chunks), plan.expected_rows, plan.queries,
        "y" if plan.queries == 1 else "ies", plan.seconds, plan.reason, **ctx(run_id=run_id, table=spec.name),
    )
    for note in plan.notes:
        log.info("plan note: %s", note, **ctx(run_id=run_id, table=spec.name))


@dataclass(frozen=True)
class ReadFit:
    """How a table's chunks will be read and the chunk_rows that fits the memory budget with them."""

    results: str  # "whole" or "streamed"
    row_bytes: int
    chunk_rows: int
    note: str | None  # why chunk_rows was lowered

    def shape(self, settings: Settings) -> ReadShape:
        return ReadShape.for_settings(self.results, self.row_bytes, self.chunk_rows, settings)


def read_fit(source: SnowflakeSource, config: SourceConfig, spec: TableSpec, columns: list[Column]) -> ReadFit:
    """The source's result mode, the table's Arrow bytes per row measured on a sample of real rows (the column
    types' estimate when there are none; rows wider than the sample lower the threads while copying), and
    chunk_rows, lowered when a chunk arrives as one whole result and the threads would not fit the budget."""
    settings = config.settings
    results = source.results_mode(settings.source_results)
    row_bytes = source.sample_row_bytes(spec.source, columns, spec.source_filter) or estimated_row_bytes(columns)
    chunk_rows, why = config.chunk_rows(spec), None
    if results == "whole":
        _, threads, _ = fit_connections(1, requested_threads(settings.parallel_threads), settings.max_target_connections)
        chunk_rows, why = fit_chunk_rows(chunk_rows, settings.batch_size, row_bytes, threads, settings.memory_budget_mb)
        if why:
            log.warning("%s", why, **ctx(table=spec.name))
    return ReadFit(results, row_bytes, chunk_rows, why)


def _check_retention(source: SnowflakeSource, spec: TableSpec, config: SourceConfig) -> list[str]:
    """A point-in-time run needs the table's history for as long as the run may last (resume_max_age)."""
    days = source.retention_days(spec.source)
    hours = config.settings.resume_max_age
    if days == 0:
        raise FatalError(f"{spec.name} has no Time Travel (DATA_RETENTION_TIME_IN_DAYS = 0), so it cannot be read at "
                         f"the run's snapshot {source.snapshot_at}: raise its retention, or set snapshot to false")
    if days is None:
        note = f"snapshot {source.snapshot_at}: the table's Time Travel retention is unknown (SHOW TABLES did not say)"
    elif days * 24 < hours:
        note = (f"snapshot {source.snapshot_at}: Time Travel keeps {days} day(s) ({days * 24} h) of {spec.name}, but the "
                f"run may be resumed for {hours:g} h (resume_max_age): chunks read after {days * 24} h would fail. Raise "
                "DATA_RETENTION_TIME_IN_DAYS (up to 90 on Enterprise) or CLONE the table AT the snapshot first")
    else:
        return [f"snapshot {source.snapshot_at}: read AT(TIMESTAMP); Time Travel keeps {days} day(s) of {spec.name}"]
    log.warning("%s", note, **ctx(table=spec.name))
    return [note]


def _window(conn: psycopg.Connection[Any], source: SnowflakeSource, spec: TableSpec, columns: list[Column],
            run_id: int) -> Window:
    """This run's watermark window: lo from the ledger, else from the target; hi from the source, now."""
    assert spec.source_watermark is not None
    column = spec.source_watermark
    kind = kind_of({c.name: c for c in columns}[column])
    assert kind is not None
    lo, lo_from = ledger_hi(conn, spec.name, spec.target_name, column, run_id), "ledger"
    if lo is None and pg.table_exists(conn, spec.target):
        lo, lo_from = target_max(conn, spec.target, spec.target_watermark or pg.target_column_name(column), kind), "target"
    if lo is None:
        lo_from = "none"
    elif spec.watermark_lag:
        lo = lowered(kind, lo, spec.watermark_lag)
    hi = source_max(source, spec.source, column, kind, spec.source_filter)
    return Window(column, kind, lo, hi, lo_from)


def scoped_spec(spec: TableSpec, window: Window | None) -> TableSpec:
    """The spec whose source_filter is the rows this run reads: the config's filter and the stored window."""
    return replace(spec, source_filter=scope_filter(spec.source_filter, window)) if window else spec
