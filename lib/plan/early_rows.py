"""A small window's rows, read by the query that found its high end (lib/plan/probe.py), written by the transaction
that stores the table's plan: the plan, the rows and the chunk's done mark commit together or not at all. No claim,
lease, liveness lock or worker thread is needed, since no other process can see the chunk before that commit; a
run that finds little or nothing new then starts no worker for the table.

Should the write fail, it is rolled back alone (a savepoint) and the chunk stays pending: a worker reads it again and
meets, and reports, what the write met, as for any chunk. A lost connection fails the whole planning transaction,
which the run retries like any transient planning error. A local run and a Step Functions Plan step write them
here; a caller that only plans (start_run without write_early, `migrate.py plan`) leaves the chunk to the workers."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pyarrow as pa

from lib import faults, ledger
from lib.config import SourceConfig, TableSpec
from lib.errors import classify
from lib.log import ctx, get_logger
from lib.models import Bounds
from lib.target import postgres as pg
from lib.target.load_modes import TableLoad
from lib.target.loaders import Written, loader_for
from lib.target.wire import Wire
from lib.typemap import Column

log = get_logger()


def write_with_plan(conn: psycopg.Connection[Any], config: SourceConfig, run_id: int, spec: TableSpec,
                    columns: list[Column], load: TableLoad, rows: pa.Table, counted: int | None = None) -> Written | None:
    """Inside the planning transaction, after store_plan: write the table's one chunk from `rows` and mark it done.
    None (the chunk left pending, nothing of it written) when the write fails.

    `counted`: the source's count of the rows, when that count is the table's whole reconciliation (a window at its
    lower end, whose count is never taken again) and its post-load step has nothing to do but ANALYZE: the table is
    then reconciled and completed with its plan, if the rows written are that many."""
    started = time.monotonic()
    last_row: list[float] = []
    wire = Wire(columns, nul_bytes=config.nul_bytes(spec))
    try:
        with conn.transaction():
            # the planning session waits without limit for another starter; this write waits as a worker's would. A
            # deferred constraint is checked as each statement ends: it fails this write, not the whole plan
            conn.execute(f"SET LOCAL lock_timeout = {config.settings.lock_timeout_seconds * 1000}; "
                         "SET CONSTRAINTS ALL IMMEDIATE")
            written = loader_for(load).write(conn, wire, _batches(rows, config.settings.batch_size, last_row),
                                             Bounds("all"))
            wrote = time.monotonic()
            drained = last_row[0] if last_row else wrote
            phases = {"read_wait": 0.0, "copy": round(drained - started, 4), "after_copy": round(wrote - drained, 4),
                      "ledger": 0.0}
            completes = counted is not None and written.rows == counted
            analyzed = completes and pg.worth_analyzing(conn, load.destination, written.rows)
            if analyzed:
                pg.analyze(conn, load.destination)
            if not ledger.mark_done_with_plan(conn, run_id, spec.name, written.rows, written.bytes, written.inserted,
                                              written.updated, wire.notes(), sum(wire.nul_values_changed.values()),
                                              phases, wrote - started, (written.rows, analyzed) if completes else None):
                raise RuntimeError(f"run {run_id} no longer runs, or its chunk of {spec.name} is not pending")
            faults.maybe_crash("before_commit")
            if completes:
                log.info("reconciled with its plan: the %d row(s) of the window at its lower end, as counted",
                         written.rows, **ctx(run_id=run_id, table=spec.name))
    except Exception as exc:
        if conn.closed or conn.broken:
            raise
        log.warning("the window's rows read while planning could not be written (%s): its chunk is left to a worker, "
                    "which reads it again", classify(exc, f"writing {spec.name}"), **ctx(run_id=run_id, table=spec.name))
        return None
    return written


def _batches(rows: pa.Table, batch_size: int, last_row: list[float]) -> Iterator[pa.RecordBatch]:
    """The rows as a chunk's read gives them, each batch dropped once the next is asked for; then the time the last
    one was taken, in `last_row`."""
    yield from faults.at_chunk_points(_popped(rows.to_batches(max_chunksize=batch_size)))
    last_row.append(time.monotonic())


def _popped(batches: list[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """The batches in order, each dropped from the list as it is handed out."""
    batches.reverse()
    while batches:
        yield batches.pop()
