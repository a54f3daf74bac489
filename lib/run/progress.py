"""Live progress of a local run, read from the ledger (so it shows every worker, in any process).

On a terminal: one rich progress bar per active table (rows copied of expected, rows/s, ETA) and
an overall bar. Elsewhere (a pipe, a file, Lambda): a plain `progress ...` log line per table at
a fixed interval, easy to grep and parse.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

from lib.ledger.schema import SCHEMA
from lib.log import ctx, get_logger
from lib.target import postgres as pg


@dataclass
class TableProgress:
    table: str
    expected: int
    copied: int
    chunks_done: int
    chunks: int


def read_progress(conn: Any, run_id: int) -> list[TableProgress]:
    rows = conn.execute(
        f"SELECT table_name, coalesce(sum(expected_rows), 0), coalesce(sum(rows_copied) FILTER (WHERE status = 'done'), 0), "
        f"count(*) FILTER (WHERE status IN ('done', 'failed')), count(*) FROM {SCHEMA}.migration_chunk_status "
        "WHERE run_id = %s GROUP BY 1 ORDER BY 1", (run_id,)).fetchall()
    return [TableProgress(r[0], int(r[1]), int(r[2]), int(r[3]), int(r[4])) for r in rows]


class ProgressMonitor:
    def __init__(self, connect_args: dict[str, Any], run_id: int, interval: float | None = None,
                 console: Console | None = None) -> None:
        self._args = connect_args
        self._run_id = run_id
        self._stop = threading.Event()
        interactive = sys.stderr.isatty() and not os.environ.get("AWS_LAMBDA_FUNCTION_NAME")
        self._console = console or (Console(stderr=True) if interactive else None)
        default = 0.5 if self._console else 30.0
        self._interval = interval or float(os.environ.get("MIGRATION_PROGRESS_SECONDS", default))
        self._thread = threading.Thread(target=self._run, name="progress", daemon=True)

    def __enter__(self) -> ProgressMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        try:
            with pg.connect(self._args, autocommit=True) as conn:
                if self._console:
                    self._bars(conn)
                else:
                    self._lines(conn)
        except Exception as exc:  # noqa: BLE001 - progress display must never break a migration
            get_logger().debug("progress display stopped: %s", exc)

    def _lines(self, conn: Any) -> None:
        log, last, started = get_logger(), {}, time.monotonic()
        while not self._stop.wait(self._interval):
            for t in read_progress(conn, self._run_id):
                rate = (t.copied - last.get(t.table, t.copied)) / self._interval if t.table in last else 0.0
                last[t.table] = t.copied
                log.info("progress rows=%d expected=%d chunks=%d/%d rows_per_s=%.0f elapsed_s=%.0f", t.copied, t.expected,
                         t.chunks_done, t.chunks, rate, time.monotonic() - started, **ctx(run_id=self._run_id, table=t.table))

    def _bars(self, conn: Any) -> None:
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[rate]}"), TimeRemainingColumn())
        with Progress(*columns, console=self._console, transient=False) as bars:
            tasks: dict[str, TaskID] = {}
            overall = bars.add_task("[bold]all tables", total=1, rate="")
            previous: dict[str, tuple[float, int]] = {}
            while True:
                render(bars, tasks, overall, read_progress(conn, self._run_id), previous)
                if self._stop.wait(self._interval):
                    render(bars, tasks, overall, read_progress(conn, self._run_id), previous)
                    return


def render(bars: Progress, tasks: dict[str, TaskID], overall: TaskID, tables: list[TableProgress],
           previous: dict[str, tuple[float, int]]) -> None:
    """Update one bar per table and the overall bar; rows/s from the last two readings."""
    now = time.monotonic()
    total_rate = 0.0
    for t in tables:
        seen_at, seen_rows = previous.get(t.table, (now, t.copied))
        rate = (t.copied - seen_rows) / (now - seen_at) if now > seen_at else 0.0
        previous[t.table] = (now, t.copied)
        total_rate += rate
        if t.table not in tasks:
            tasks[t.table] = bars.add_task(t.table.split(".")[-1], total=max(t.expected, 1), rate="")
        bars.update(tasks[t.table], completed=t.copied, total=max(t.expected, t.copied, 1),
                    rate=f"{rate:>10,.0f} rows/s  {t.chunks_done}/{t.chunks} chunks")
    expected = sum(max(t.expected, t.copied) for t in tables)
    bars.update(overall, completed=sum(t.copied for t in tables), total=max(expected, 1), rate=f"{total_rate:>10,.0f} rows/s")
