"""Throughput benchmark: Snowflake stand-in → PostgreSQL, end to end and each path alone, against the limit.

    python -m bench.throughput [--rows N] [--out PATH]    (rows default: $BENCH_ROWS or 5,000,000)

One run builds a private LocalStack (fakesnow + embedded PostgreSQL) in a temporary directory,
generates one 12-column mixed-type table server-side (GENERATOR; no row travels to the client),
then measures, each phase timed alone:

  (a) limit     server-side `COPY t FROM 'file' (FORMAT BINARY)`: the same rows, encoded once by the
                engine's own pgpq encoder into a file the PostgreSQL server reads itself;
  (b) e2e       lib.orchestrator.run (plan + copy + reconcile), chunking on ID, chunk_rows 250k,
                batch_size 50k, parallel_threads 1, 2 and the Settings default, each into a fresh database;
  (c) write     Arrow batches already in memory → postgres_target.copy_batches, one transaction per
                250k-row chunk, with 1 and 2 connections (threads);
  (d) read      SnowflakeSource.read over all 250k-row ID ranges, batches consumed and dropped, 1 thread.

Bytes are the Arrow in-memory bytes (RecordBatch.nbytes) of the rows as the Snowflake connector
hands them over, measured once in (d); MiB/s everywhere divides that same number by the seconds.
Peak RSS is VmHWM, reset before each phase (/proc/PID/clear_refs): this process, and the fakesnow
server, which is restarted before every phase that reads from it (it keeps every result in memory).
Nothing is asserted about timing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import psutil
import psycopg
import pyarrow as pa

from lib import postgres_target as pg
from lib.config import Settings, load_config
from lib.log import get_logger
from lib.models import Bounds
from lib.orchestrator import run as run_engine
from lib.snowflake_source import SnowflakeSource
from lib.typemap import Column, columns_from_description
from scripts.local_stack import LocalStack

DATABASE, SCHEMA, TABLE = "BENCH", "PUBLIC", "SRC"
SOURCE = (DATABASE, SCHEMA, TABLE)
TARGET = ("public", "src")
DEFAULT_ROWS = 5_000_000
CHUNK_ROWS = 250_000
BATCH_SIZE = 50_000
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
    fakesnow_rss_mb: float | None = None  # peak RSS of the fakesnow server during the phase
    cpu_bench: float = 0.0  # CPU seconds (user + system) of this process during the phase
    cpu_fakesnow: float = 0.0  # ... of the fakesnow server
    cpu_postgres: float = 0.0  # ... of every PostgreSQL process (backends, walwriter, checkpointer)
    note: str = ""


# --- process memory ---------------------------------------------------------------------------
def reset_peak(pid: int) -> None:
    """Reset VmHWM to the current RSS (Linux ≥ 4.0)."""
    with contextlib.suppress(OSError), open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")


def peak_rss_mb(pid: int) -> float | None:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    return None


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


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
    def restart_snowflake(self) -> None:
        """A fresh fakesnow server (same on-disk database): frees the results it keeps in memory."""
        self.stack.stop_snowflake()
        self.sf_pid = int(self.stack.start_snowflake(persist=True, tied=True)["pid"])

    def sf_args(self) -> dict[str, Any]:
        env = self.stack.snowflake_env()
        return {"account": env["SNOWFLAKE_ACCOUNT"], "user": env["SNOWFLAKE_USER"], "password": env["SNOWFLAKE_PASSWORD"],
                "host": env["SNOWFLAKE_HOST"], "port": int(env["SNOWFLAKE_PORT"]), "protocol": "http",
                "database": DATABASE, "schema": SCHEMA, "network_timeout": 600}

    def pg_conn(self, db: str = "postgres") -> psycopg.Connection[Any]:
        return pg.connect(self.stack.pg_args(db), autocommit=True)

    def chunk_bounds(self) -> list[Bounds]:
        return [Bounds("range", "ID", "numeric", str(lo), str(lo + CHUNK_ROWS)) for lo in range(1, self.rows + 1, CHUNK_ROWS)]

    def postmaster_pid(self) -> int:
        return int((self.stack.pgdata / "postmaster.pid").read_text().split()[0])

    def cpu(self) -> tuple[float, float, float]:
        return own_cpu(), tree_cpu(self.sf_pid) if self.sf_pid else 0.0, tree_cpu(self.postmaster_pid())

    def measure(self, phase: str, body: Callable[[], int], fakesnow: bool = False, note: str = "") -> Result:
        """Time `body` (which returns the rows it moved) with peak RSS and CPU seconds per process."""
        pa.default_memory_pool().release_unused()
        if fakesnow:
            self.restart_snowflake()
        reset_peak(os.getpid())
        cpu_before = self.cpu()
        started = time.monotonic()
        rows = body()
        seconds = time.monotonic() - started
        cpu = [round(after - before, 1) for after, before in zip(self.cpu(), cpu_before, strict=True)]
        rows_per_s = rows / seconds
        result = Result(
            phase, round(seconds, 2), rows, round(rows_per_s), round(self.nbytes / seconds / 2**20, 1), None,
            peak_rss_mb(os.getpid()), peak_rss_mb(self.sf_pid) if fakesnow else None, *cpu, note=note,
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
    def read_path(self) -> int:
        rows = nbytes = 0
        for chunk in self.read_chunks():
            rows += sum(b.num_rows for b in chunk)
            nbytes += sum(b.nbytes for b in chunk)
        self.nbytes = nbytes
        return rows

    # (a)
    def write_copy_file(self, chunks: Chunks) -> Path:
        """The rows as one binary COPY file, encoded like copy_batches does, readable by the server's user."""
        folder = self.dir / "copy"
        folder.mkdir(mode=0o755)
        path = folder / "src.bin"
        schema = pg.wire_schema(self.columns)
        encoder = pg._encoder(schema, self.columns)
        with open(path, "wb") as f:
            f.write(encoder.write_header())
            for chunk in chunks:
                for batch in chunk:
                    f.write(encoder.write_batch(pg.to_wire(batch, self.columns, schema)))
            f.write(encoder.finish())
        for p in (self.dir, folder):
            p.chmod(0o755)
        path.chmod(0o644)
        return path

    def prepare_target(self, db: str) -> None:
        """Empty target table (the engine's DDL) and a checkpoint, so no earlier phase's writes are flushed in this one."""
        with self.pg_conn(db) as conn:
            if pg.table_exists(conn, TARGET):
                pg.truncate(conn, TARGET)
            else:
                pg.ensure_table(conn, TARGET, self.columns)
            conn.execute("CHECKPOINT")

    def server_copy(self, db: str, path: Path) -> int:
        with self.pg_conn(db) as conn:
            cur = conn.execute(f"COPY public.src FROM '{path}' (FORMAT BINARY)")
            return cur.rowcount

    # (c)
    def write_path(self, db: str, chunks: Chunks, connections: int) -> int:
        copied = [0] * connections
        errors: list[BaseException] = []

        def worker(index: int) -> None:
            try:
                with self.pg_conn(db) as conn:
                    for chunk in chunks[index::connections]:
                        with conn.transaction():
                            copied[index] += pg.copy_batches(conn, TARGET, self.columns, chunk)[0]
            except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(connections)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return sum(copied)

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

    def end_to_end(self, config_path: Path, threads: int | None) -> None:
        label = "default" if threads is None else str(threads)
        db = f"bench_e2e_{label}"
        self.stack.create_database(db, drop=True)
        overrides = {} if threads is None else {"parallel_threads": threads}
        table: dict[str, Any] = {}

        def body() -> int:
            os.environ.update(self.stack.env(db))  # the config's ${...}: this fakesnow port, this database
            outcome = run_engine(load_config("bench", overrides, config_path))
            table.update(outcome.tables[0])
            if outcome.status != "completed":
                raise RuntimeError(f"engine run ended {outcome.status}: {table}")
            return int(table["rows_copied"])

        result = self.measure(f"(b) e2e threads={label}", body, fakesnow=True)
        threads_used = threads or Settings().parallel_threads
        result.note = (f"{threads_used} thread(s), plan+reconcile included; engine-reported copy window "
                       f"{table['rows_per_s']:,} rows/s")
        with self.pg_conn() as conn:
            conn.execute(f'DROP DATABASE "{db}" WITH (FORCE)')

    def run(self) -> dict[str, Any]:
        print(f"generating {self.rows:,} rows in the fakesnow stand-in ...", flush=True)
        setup_seconds = self.setup()
        print(f"generated in {setup_seconds:.1f} s", flush=True)

        self.measure("(d) read path, 1 thread", self.read_path, fakesnow=True, note="SnowflakeSource.read, batches dropped")
        print(f"  Arrow bytes of all rows: {self.nbytes:,} ({self.nbytes / self.rows:.0f} per row)", flush=True)

        self.restart_snowflake()
        chunks: Chunks = list(self.read_chunks())
        self.stack.stop_snowflake()
        self.sf_pid = 0
        copy_file = self.write_copy_file(chunks)
        file_bytes = copy_file.stat().st_size

        db = "bench_write"
        self.stack.create_database(db, drop=True)
        self.prepare_target(db)
        limit = self.measure("(a) limit: server COPY file", lambda: self.server_copy(db, copy_file),
                             note=f"binary file {file_bytes / 2**20:,.0f} MiB, same pgpq encoding")
        copy_file.unlink()
        for connections in (1, 2):
            self.prepare_target(db)
            self.measure(f"(c) write path, {connections} conn", lambda n=connections: self.write_path(db, chunks, n),
                         note="in-memory batches → copy_batches, 1 txn per chunk")
            if self.target_rows(db) != self.rows:
                raise RuntimeError("write path lost rows")
        chunks.clear()  # frees the in-memory rows before the end-to-end runs
        with self.pg_conn() as conn:
            conn.execute(f'DROP DATABASE "{db}" WITH (FORCE)')
            server_version = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]

        config_path = self.write_config()
        for threads in (1, 2, None):
            self.end_to_end(config_path, threads)
        self.stack.stop_snowflake()
        for result in self.results:
            result.vs_limit = round(result.rows_per_s / limit.rows_per_s, 3)

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
            },
            "results": [asdict(r) for r in self.results],
        }


def print_table(report: dict[str, Any]) -> None:
    header = ("phase", "seconds", "rows/s", "MiB/s", "vs (a)", "RSS MiB", "fakesnow RSS", "CPU s bench/fs/pg", "note")
    lines = [header] + [
        (r["phase"], f"{r['seconds']:.1f}", f"{r['rows_per_s']:,.0f}", f"{r['mib_per_s']:.1f}",
         "-" if r["vs_limit"] is None else f"{r['vs_limit']:.2f}x", "-" if r["rss_mb"] is None else f"{r['rss_mb']:,.0f}",
         "-" if r["fakesnow_rss_mb"] is None else f"{r['fakesnow_rss_mb']:,.0f}",
         f"{r['cpu_bench']:.1f}/{r['cpu_fakesnow']:.1f}/{r['cpu_postgres']:.1f}", r["note"])
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
          f"chunks of {CHUNK_ROWS:,} rows, batches of {BATCH_SIZE:,}; RSS = peak VmHWM per phase; "
          "CPU s = user+system seconds of this process / the fakesnow server / all PostgreSQL processes")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=int(os.environ.get("BENCH_ROWS", DEFAULT_ROWS)))
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    options = parser.parse_args()
    os.environ.setdefault("MIGRATION_LOG_LEVEL", "WARNING")
    get_logger()  # applies the level to the engine's logger, created at import
    directory = Path(tempfile.mkdtemp(prefix="throughput-bench-"))
    bench = Bench(directory, options.rows)
    try:
        report = bench.run()
    finally:
        bench.stack.stop_snowflake()
        bench.stack.stop_postgres(mode="immediate")
        shutil.rmtree(directory, ignore_errors=True)
    print()
    print_table(report)
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwritten to {options.out}")


if __name__ == "__main__":
    main()
