"""A worker thread: claim a chunk, stream it from Snowflake into PostgreSQL, mark it done in the
same transaction under the fence, repeat until no chunk is left, a stop is asked, or time runs out.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import psycopg
import pyarrow as pa

from lib import faults, ledger
from lib.config import SourceConfig, TableSpec
from lib.errors import FenceLostError, MigrationError, StageNextTime, TransientError, classify, with_context
from lib.ledger.lease import LeaseKeeper, LeaseLostError, Progress
from lib.log import ctx, get_logger
from lib.models import ClaimedChunk
from lib.plan.budget import ReadShape, fit_threads
from lib.retry import call_with_retry
from lib.source.prefetch import Prefetcher
from lib.source.snowflake import SnowflakeSource
from lib.target import postgres as pg
from lib.target.load_modes import TableLoad
from lib.target.loaders import Written, loader_for
from lib.target.wire import Wire
from lib.typemap import Column


@dataclass
class WorkerStats:
    chunks_done: int = 0
    chunks_failed: int = 0
    rows: int = 0
    bytes: int = 0
    errors: list[str] = field(default_factory=list)


@dataclass
class WorkPlan:
    """What every worker of a run needs: the config, the run, each table's spec and columns."""

    config: SourceConfig
    run_id: int
    tables: dict[str, tuple[TableSpec, list[Column], TableLoad]]  # spec scoped to its window, columns, load mode
    stop: threading.Event = field(default_factory=threading.Event)
    deadline: float | None = None  # time.monotonic() after which no new chunk is claimed
    snapshots: dict[tuple[str, ...], str] = field(default_factory=dict)  # source table → the point in time it is read at
    threads: int = 1  # workers allowed to claim; lowered when real result parts or batches outgrow the plan's
    shapes: dict[str, ReadShape] = field(default_factory=dict)  # per table: what a thread holds (lib/plan/budget.py)
    # per copy or swap table: the source rows its target holds (load_modes.held_scope), which a repair copies again
    repair_filters: dict[str, str | None] = field(default_factory=dict)
    read_ahead: bool = False  # each thread claims and starts reading its next chunk while it writes one
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    claims: int = 0  # chunks this process claimed

    def may_claim(self, worker_index: int = 0) -> bool:
        """Another chunk may be claimed: no stop asked, the thread is within the allowed threads, and time is left
        before the deadline. An invocation whose setup ate its time budget (a busy machine, a cold start) still
        copies one chunk on its first thread, so that every Step Functions loop makes progress."""
        if self.stop.is_set() or worker_index >= self.threads:
            return False
        return self.deadline is None or time.monotonic() < self.deadline or (worker_index == 0 and not self.claims)

    def observe(self, table: str, part_bytes: int = 0, batch_bytes: int = 0) -> None:
        """A real result part or batch of `table`: when it is bigger than the plan assumed and the threads no
        longer fit the memory budget, fewer threads claim chunks (those in flight finish theirs)."""
        with self._lock:
            shape = self.shapes.get(table)
            if shape is None or (part_bytes <= shape.part_bytes and batch_bytes <= shape.batch_bytes):
                return
            self.shapes[table] = replace(shape, part_bytes=max(shape.part_bytes, part_bytes),
                                         batch_bytes=max(shape.batch_bytes, batch_bytes))
            settings = self.config.settings
            allowed, why = fit_threads(self.threads, list(self.shapes.values()), settings.memory_budget_mb)
            if allowed < self.threads:
                get_logger().warning("measured %s: %s", table, why, **ctx(run_id=self.run_id, table=table))
                self.threads = allowed


class _Lane:
    """A PostgreSQL connection and a Snowflake session. A chunk's claim, liveness lock, read and transaction
    all use one lane; a thread that reads ahead has two, and the next chunk takes the lane the last one left."""

    def __init__(self, plan: WorkPlan) -> None:
        self.plan = plan
        self.conn: psycopg.Connection[Any] | None = None
        self.source: SnowflakeSource | None = None

    def pg(self) -> psycopg.Connection[Any]:
        if self.conn is None or self.conn.closed:
            self.conn = pg.connect(self.plan.config.postgres_connect_args(), autocommit=True)
            ledger.hold_run(self.conn, self.plan.run_id)
        return self.conn

    def snowflake(self) -> SnowflakeSource:
        if self.source is None:
            self.source = SnowflakeSource(self.plan.config.snowflake_connect_args(), self.plan.config.retry_policy(),
                                          self.plan.snapshots)
        return self.source

    def reset_pg(self) -> None:
        # A fresh connection also drops the liveness lock of a chunk claimed on this one.
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.close()
            self.conn = None

    def reset_source(self, wait: bool = True) -> None:
        if self.source is not None:
            self.source.close(wait=wait)
            self.source = None

    def close(self) -> None:
        self.reset_pg()
        self.reset_source()


@dataclass
class _Started:
    """A claimed chunk whose read has begun: its lane, its lease keeper (running) and its batches."""

    chunk: ClaimedChunk
    lane: _Lane
    keeper: LeaseKeeper
    batches: Prefetcher[pa.RecordBatch]


class Worker:
    def __init__(self, plan: WorkPlan, index: int = 0, name: str | None = None) -> None:
        self.plan = plan
        self.index = index
        self.name = name or f"worker-{uuid.uuid4().hex[:12]}"
        self.stats = WorkerStats()
        self.log = get_logger()
        self._lanes = (_Lane(plan), _Lane(plan))  # the loop claims on the first; a chunk read ahead takes the other
        self._ahead: _Started | None = None  # the next chunk, claimed and being read while the last one is written
        self._progress = Progress()  # ticked by every batch of this thread's chunks: the thread is moving
        self._outage_since: float | None = None
        self._outage_attempt = 0

    def run(self) -> WorkerStats:
        """Claim and copy chunks until none is left, a stop is asked, or time runs out.

        A lost PostgreSQL connection (failover, restart) is ridden out: the worker reconnects with
        backoff for up to `max_outage_seconds`; a chunk in flight is retried by whoever claims it.
        """
        settings = self.plan.config.settings
        try:
            while True:
                started, self._ahead = self._ahead, None
                if started is not None:
                    if not self.plan.may_claim(self.index):
                        self._release(started)
                        break
                    if self._still_held(started):
                        self._process(started.chunk, started.lane, started)
                    continue
                if not self.plan.may_claim(self.index):
                    break
                lane = self._lanes[0]
                try:
                    chunk = ledger.claim_chunk(lane.pg(), self.plan.run_id, self.name, settings.lease_seconds,
                                               settings.max_attempts)
                    if chunk is not None:
                        self.plan.claims += 1
                    if chunk is None:
                        wait = ledger.seconds_until_retry(lane.pg(), self.plan.run_id, settings.max_attempts)
                        if wait is None:
                            break
                        time.sleep(min(wait, 1.0) + 0.01)
                        continue
                    self._outage_since = None
                except Exception as exc:  # noqa: BLE001 - classified in _ride_out
                    self._ride_out(exc, lane)
                    continue
                faults.maybe_crash("after_claim")
                self._process(chunk, lane)
        except MigrationError as exc:
            self.log.error("worker %s stopped: %s", self.name, exc, **ctx(run_id=self.plan.run_id))
            self.stats.errors.append(str(exc))
        finally:
            if self._ahead is not None:
                self._release(self._ahead)
                self._ahead = None
            for lane in self._lanes:
                lane.close()
        return self.stats

    def _ride_out(self, exc: Exception, lane: _Lane) -> None:
        """A ledger call failed: reconnect after a backoff if transient and the outage is young; else raise."""
        error = classify(exc, "talking to the PostgreSQL ledger")
        lane.reset_pg()
        if not isinstance(error, TransientError):
            raise error from exc
        now = time.monotonic()
        self._outage_since = self._outage_since or now
        if now - self._outage_since > self.plan.config.settings.max_outage_seconds:
            raise TransientError(f"PostgreSQL unreachable for more than {self.plan.config.settings.max_outage_seconds}s: "
                                 f"{error}") from exc
        self._outage_attempt = self._outage_attempt + 1 if self._outage_since != now else 1
        wait = self.plan.config.retry_policy().delay(min(self._outage_attempt, 8))
        self.log.warning("%s; reconnecting in %.1fs", error, wait, **ctx(run_id=self.plan.run_id))
        time.sleep(wait)

    def _process(self, chunk: ClaimedChunk, lane: _Lane, started: _Started | None = None) -> None:
        where = f"{chunk.table_name} chunk {chunk.chunk_no} ({chunk.bounds.describe()})"
        fields = ctx(run_id=chunk.run_id, table=chunk.table_name, chunk=chunk.chunk_no)
        try:
            written = self._copy(chunk, lane, started)
        except FenceLostError as exc:
            self.log.warning("%s", exc, **fields)
            lane.reset_pg()
            return
        except Exception as exc:  # noqa: BLE001 - every failure is classified and recorded
            error = with_context(classify(exc, where), where)
            transient = isinstance(error, TransientError)
            retry_in = self.plan.config.retry_policy().delay(chunk.attempts) if transient else None
            # Record before letting go of the connection: closing it drops the liveness lock, and
            # another worker would reclaim the chunk in between.
            outcome = self._record_failure(chunk, lane, str(error), retry_in, isinstance(error, StageNextTime))
            lane.reset_pg()
            if transient:
                lane.reset_source()
            self.stats.errors.append(str(error))
            if outcome == "failed":
                self.stats.chunks_failed += 1
            self.log.error("chunk failed (%s, now %s): %s", "transient" if transient else "fatal", outcome, error, **fields)
            return
        self.stats.chunks_done += 1
        self.stats.rows += written.rows
        self.stats.bytes += written.bytes
        if written.rows != chunk.expected_rows:
            self.log.warning("read %d rows, %d expected at plan time", written.rows, chunk.expected_rows, **fields)
        self.log.debug("chunk done: %d rows read, %d inserted, %d updated", written.rows, written.inserted,
                       written.updated, **fields)

    def _start(self, chunk: ClaimedChunk, lane: _Lane) -> _Started:
        """Begin a claimed chunk: its lease keeper, and its read, in the background, of rows to come."""
        spec, columns, _ = self.plan.tables[chunk.table_name]
        settings = self.plan.config.settings
        conn, source = lane.pg(), lane.snowflake()

        def give_up(reason: str) -> None:  # from the keeper's thread: free this worker from a stuck statement
            with contextlib.suppress(Exception):
                conn.cancel_safe(timeout=5)
            source.cancel()

        keeper = LeaseKeeper(self.plan.config.postgres_connect_args(), chunk, settings.lease_seconds, self._progress,
                             give_up)
        scope = self.plan.repair_filters.get(chunk.table_name, spec.source_filter) if chunk.repair else spec.source_filter
        read = source.read(spec.source, columns, chunk.bounds, scope, settings.batch_size,
                           on_part=lambda part: self.plan.observe(chunk.table_name, part_bytes=part.nbytes))
        keeper.__enter__()
        try:
            batches = Prefetcher(_ticking(read, self._progress), abort=keeper.lost,
                                 aborted=lambda: LeaseLostError(f"chunk given up: {keeper.lost_reason}"))
        except BaseException:
            keeper.__exit__(None, None, None)
            raise
        return _Started(chunk, lane, keeper, batches)

    def _copy(self, chunk: ClaimedChunk, lane: _Lane, started: _Started | None = None) -> Written:
        """Copy a claimed chunk (`started`: its read already begun) in one transaction that marks it done."""
        started = started or self._start(chunk, lane)
        keeper, batches = started.keeper, started.batches
        spec, columns, load = self.plan.tables[chunk.table_name]
        conn = lane.pg()
        phases = _Phases()
        try:
            with conn.transaction():
                moving = _then(_ticking(self._measured(chunk.table_name, faults.at_chunk_points(
                    _waited(batches, phases))), self._progress), lambda: phases.drained(lambda: self._read_ahead(lane)))
                wire = Wire(columns, key=chunk.bounds.column, nul_bytes=self.plan.config.nul_bytes(spec))
                written = loader_for(load, chunk.repair, chunk.staged).write(conn, wire, moving, chunk.bounds)
                phases.wrote()
                ledger.mark_done(conn, chunk, written.rows, written.bytes, written.inserted, written.updated,
                                 wire.notes(), sum(wire.nul_values_changed.values()), phases.seconds())
                faults.maybe_crash("before_commit")
        finally:
            keeper.__exit__(None, None, None)
            if not batches.close():
                self.log.warning("a Snowflake read of chunk %s is still stuck: leaving it to its timeout",
                                 chunk.chunk_no, **ctx(run_id=chunk.run_id, table=chunk.table_name))
                lane.reset_source(wait=False)
        faults.maybe_crash("after_commit")
        ledger.release_liveness_lock(conn, chunk)
        return written

    def _read_ahead(self, busy: _Lane) -> None:
        """The chunk on `busy` has read its last row and goes on writing: claim the next one on the other lane and
        start reading it now, so that Snowflake answers while PostgreSQL writes. Nothing here may fail that chunk:
        a claim that fails is left to be claimed again."""
        if not self.plan.read_ahead or self._ahead is not None or not self.plan.may_claim(self.index):
            return
        lane = self._lanes[1 - self._lanes.index(busy)]
        settings = self.plan.config.settings
        try:
            chunk = ledger.claim_chunk(lane.pg(), self.plan.run_id, self.name, settings.lease_seconds,
                                       settings.max_attempts)
        except Exception as exc:  # noqa: BLE001 - the loop claims again after this chunk
            self.log.warning("reading ahead: could not claim the next chunk (%s); claiming it after this one",
                             classify(exc, "claiming a chunk"), **ctx(run_id=self.plan.run_id))
            lane.reset_pg()  # a claim that committed loses its liveness lock with the connection: reclaimable
            return
        if chunk is None:
            return
        self.plan.claims += 1
        try:
            faults.maybe_crash("after_claim")
            self._ahead = self._start(chunk, lane)
        except Exception as exc:  # noqa: BLE001 - given back; the loop claims it, or another thread does
            self.log.warning("reading ahead: could not start chunk %s (%s); giving it back", chunk.chunk_no,
                             classify(exc, "starting a chunk"), **ctx(run_id=chunk.run_id, table=chunk.table_name))
            self._unclaim(chunk, lane)
        except BaseException:
            self._unclaim(chunk, lane)
            raise

    def _still_held(self, started: _Started) -> bool:
        """Whether a chunk read ahead is still this thread's to copy. Its claim may have lapsed while the last chunk
        was written, through no fault of its own: its lease ran out (the thread made no progress for a whole lease,
        a slow commit), or PostgreSQL restarted and took its liveness lock with the connection. Then it is given
        back, its attempt not counted, and claimed again like any other."""
        if not started.keeper.lost.is_set():
            try:
                if ledger.status_under_fence(started.lane.pg(), started.chunk) == "running":
                    return True
            except Exception:  # noqa: BLE001 - a dead connection: the claim is given back on a fresh one
                started.lane.reset_pg()
        self.log.info("chunk %s, read ahead, is no longer held (%s): giving it back", started.chunk.chunk_no,
                      started.keeper.lost_reason or "its claim lapsed",
                      **ctx(run_id=started.chunk.run_id, table=started.chunk.table_name))
        self._release(started)
        return False

    def _release(self, started: _Started) -> None:
        """Give back a chunk read ahead that this thread will not copy (a stop, the deadline, fewer threads)."""
        started.batches.close()
        started.keeper.__exit__(None, None, None)
        self._unclaim(started.chunk, started.lane)

    def _unclaim(self, chunk: ClaimedChunk, lane: _Lane) -> None:
        try:
            ledger.unclaim_chunk(lane.pg(), chunk)
            ledger.release_liveness_lock(lane.pg(), chunk)
        except Exception as exc:  # noqa: BLE001 - without its liveness lock the chunk is reclaimed anyway
            self.log.warning("could not give back chunk %s read ahead (%s): it is reclaimed once this connection "
                             "closes", chunk.chunk_no, classify(exc, "giving back a chunk"),
                             **ctx(run_id=chunk.run_id, table=chunk.table_name))
            lane.reset_pg()

    def _record_failure(self, chunk: ClaimedChunk, lane: _Lane, error: str, retry_in: float | None,
                        stage_next: bool) -> str:
        def record() -> str:
            return ledger.mark_failed(lane.pg(), chunk, error, retry_in, self.plan.config.settings.max_attempts,
                                      stage_next)

        try:
            return call_with_retry(record, self.plan.config.retry_policy(), f"recording the failure of chunk {chunk.chunk_id}",
                                   on_retry=lane.reset_pg)
        except MigrationError as exc:
            # The chunk stays 'running'; its liveness lock died with our connection, so it is reclaimed.
            self.log.error("could not record the failure of chunk %s: %s", chunk.chunk_id, exc)
            return "unrecorded"

    def _measured(self, table: str, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            self.plan.observe(table, batch_bytes=batch.nbytes)
            yield batch
            del batch


# The generators below drop each batch as soon as the consumer asks for the next one: a loop variable
# would otherwise keep it alive while the next is read, one more batch per thread than the budget counts.
def _ticking(batches: Iterator[pa.RecordBatch], progress: Progress) -> Iterator[pa.RecordBatch]:
    for batch in batches:
        progress.tick()
        yield batch
        del batch
    progress.tick()


class _Phases:
    """Where a chunk's time goes, as its thread sees it (migration_chunk_status.phase_seconds): waiting for the
    source's next batch, writing batches as they come, after the last one (key check, upsert, COPY's end), and
    the ledger's done mark. Reading the next chunk ahead is left out: it overlaps the rest."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.read_wait = 0.0
        self.last_row: float | None = None
        self.ahead = 0.0  # claiming the next chunk and starting its read, which is no phase of this one
        self.written: float | None = None

    def drained(self, then: Callable[[], None]) -> None:
        self.last_row = time.monotonic()
        then()
        self.ahead = time.monotonic() - self.last_row

    def wrote(self) -> None:
        self.written = time.monotonic()

    def seconds(self) -> dict[str, float]:
        now = time.monotonic()
        written = self.written or now
        last_row = self.last_row or written
        copy = max(last_row - self.started - self.read_wait, 0.0)
        return {"read_wait": round(self.read_wait, 4), "copy": round(copy, 4),
                "after_copy": round(max(written - last_row - self.ahead, 0.0), 4), "ledger": round(now - written, 4)}


def _waited(batches: Iterator[pa.RecordBatch], phases: _Phases) -> Iterator[pa.RecordBatch]:
    """The batches, the time spent waiting for each added to `phases.read_wait`."""
    waiting = time.monotonic()
    for batch in batches:
        phases.read_wait += time.monotonic() - waiting
        yield batch
        del batch
        waiting = time.monotonic()
    phases.read_wait += time.monotonic() - waiting


def _then(batches: Iterator[pa.RecordBatch], after: Callable[[], None]) -> Iterator[pa.RecordBatch]:
    """The batches, then `after()` once the last one was taken (not if the consumer stops early)."""
    for batch in batches:
        yield batch
        del batch
    after()


