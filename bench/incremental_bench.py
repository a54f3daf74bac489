"""Incremental runs against their floor (issue 24): a watermark window after a change, and a run that finds nothing.

    python -m bench.incremental_bench        # INCR_BENCH_ROWS=200000 for a smoke run

A private stack (fakesnow + embedded PostgreSQL) holds a ROWS-row table with a primary key. The engine copies it
(the first window), then the source changes: a tenth of the rows get a new AMOUNT and STATUS and a later
UPDATED_AT, and a tenth more rows arrive. Measured, each engine run in a fresh process as `migrate.py` runs it:

  window   the run that reads the window (`source_watermark UPDATED_AT`, merge on ID);
  floor    PostgreSQL alone: the same changed rows (exported by the server, in binary, from the engine's result)
           COPY'd server-side from that file into a TEMP stage and upserted with INSERT … ON CONFLICT (id) DO
           UPDATE of every column, in one transaction, into the target as it was before the window;
  no-op    the next run, with nothing new;
  distant  the window through a relay that holds each Snowflake statement INCR_BENCH_LATENCY seconds (0.5),
           with read_ahead on and off;
  import   a fresh interpreter that imports the engine (migrate.py and lib.run.orchestrator) and exits the way
           migrate.py does (without the interpreter's teardown), the no-op's floor; with the teardown, for the record.

The window and the floor are measured three times each, alternately, every time on the database (target and
ledger) as it was before the window, recreated from a template; the no-op three times; medians are reported.

Each engine run's seconds are split by the ledger's timestamps: before the first chunk starts (interpreter,
import, login, planning), the chunks (first start to last end), and after (reconcile, post-load, finalize, exit).
The floor's copy of the target must equal the engine's target afterwards, row for row. Results:
bench/results/incremental.json. Nothing is asserted about timing.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg

from bench.results_file import keep
from lib import ledger
from scripts.local_stack import LocalStack
from scripts.snowflake_relay import SnowflakeProxy

ROOT = Path(__file__).resolve().parents[1]
DATABASE, SCHEMA, TABLE = "INCR", "PUBLIC", "ITEMS"
PG_DB = "incr_bench"
COLUMNS = ("id", "amount", "status", "description", "qty", "day", "created_at", "updated_at")

DDL = f"""
CREATE OR REPLACE TABLE {DATABASE}.{SCHEMA}.{TABLE} (
    ID NUMBER(18,0) PRIMARY KEY, AMOUNT NUMBER(12,2), STATUS VARCHAR(20), DESCRIPTION VARCHAR, QTY NUMBER(9,0),
    DAY DATE, CREATED_AT TIMESTAMP_NTZ, UPDATED_AT TIMESTAMP_NTZ
)"""
ROWS_SQL = """
INSERT INTO {table}
SELECT (n + {first})::NUMBER(18,0), (MOD(n * 31, 10000000) / 100.0)::NUMBER(12,2), 'new'::VARCHAR(20),
       (REPEAT('lorem ipsum ', MOD(n * 13, 7)::INT) || n)::VARCHAR, MOD(n * 7919, 100000)::NUMBER(9,0),
       DATEADD(day, MOD(n, 3650), '2015-01-01'::DATE)::DATE,
       DATEADD(second, n, '2020-01-01 00:00:00'::TIMESTAMP_NTZ)::TIMESTAMP_NTZ,
       DATEADD(millisecond, n, '{updated}'::TIMESTAMP_NTZ)::TIMESTAMP_NTZ
FROM (SELECT SEQ8() AS n FROM TABLE(GENERATOR(ROWCOUNT => {rows})))
"""
CHANGED_AT = "2025-06-01 00:00:00"


def engine_run(config: Path, env: dict[str, str], *args: str) -> dict[str, Any]:
    """One run as a user starts it, `migrate.py --json` in a fresh process (with `args`); its wall seconds include
    the interpreter and the imports."""
    started = time.monotonic()
    done = subprocess.run([sys.executable, "migrate.py", "--config", str(config), "--source", "bench", "--json", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = round(time.monotonic() - started, 2)
    if done.returncode != 0:
        raise RuntimeError(f"migrate.py exited {done.returncode}: {done.stdout[-2000:]} {done.stderr[-2000:]}")
    return {**json.loads(done.stdout), "wall": seconds}


def split(conn: psycopg.Connection[Any], run_id: int, wall_start: float, wall_end: float) -> dict[str, float]:
    """The run's seconds before its first chunk, in its chunks, and after its last (PostgreSQL's clock)."""
    first, last = conn.execute(
        f"SELECT extract(epoch FROM min(started_at)), extract(epoch FROM max(completed_at)) "
        f"FROM {ledger.SCHEMA}.migration_chunk_status WHERE run_id = %s AND status = 'done'", (run_id,)).fetchone()
    if first is None:
        return {"before_chunks": round(wall_end - wall_start, 2), "chunks": 0.0, "after_chunks": 0.0}
    return {"before_chunks": round(float(first) - wall_start, 2), "chunks": round(float(last) - float(first), 2),
            "after_chunks": round(wall_end - float(last), 2)}


def phases(conn: psycopg.Connection[Any], run_id: int) -> dict[str, float]:
    """Where the run's time went: cutting its chunks (seconds and Snowflake queries of the chunking strategy, as
    planning timed them; the window's probe and the login are in `split`'s before_chunks), then the chunks'
    phases summed over its threads (thread-seconds: waiting for Snowflake's rows, writing them into the
    stage or table as they came, after the last row (key check, upsert), the ledger's done mark)."""
    planned = conn.execute(f"SELECT coalesce(sum(plan_seconds), 0), coalesce(sum(plan_queries), 0) "
                           f"FROM {ledger.SCHEMA}.migration_table_status WHERE run_id = %s", (run_id,)).fetchone()
    summed = conn.execute(
        "SELECT coalesce(sum((phase_seconds->>'read_wait')::float), 0), coalesce(sum((phase_seconds->>'copy')::float), 0), "
        "coalesce(sum((phase_seconds->>'after_copy')::float), 0), coalesce(sum((phase_seconds->>'ledger')::float), 0) "
        f"FROM {ledger.SCHEMA}.migration_chunk_status WHERE run_id = %s AND status = 'done'", (run_id,)).fetchone()
    return {"chunk_planning": round(float(planned[0]), 2), "chunk_planning_queries": int(planned[1]),
            "snowflake_read_wait": round(summed[0], 2), "copy": round(summed[1], 2),
            "upsert_and_checks": round(summed[2], 2), "ledger": round(summed[3], 2)}


def chunk_rows(conn: psycopg.Connection[Any], run_id: int) -> list[dict[str, Any]]:
    rows = conn.execute(
        f"SELECT chunk_no, rows_copied, round(extract(epoch FROM completed_at - started_at)::numeric, 2) "
        f"FROM {ledger.SCHEMA}.migration_chunk_status WHERE run_id = %s ORDER BY chunk_no", (run_id,)).fetchall()
    return [{"chunk": r[0], "rows": r[1], "seconds": float(r[2] or 0)} for r in rows]


def measured_run(name: str, config: Path, env: dict[str, str], conn: psycopg.Connection[Any], *args: str) -> dict[str, Any]:
    now = float(conn.execute("SELECT extract(epoch FROM clock_timestamp())").fetchone()[0])
    report = engine_run(config, env, *args)
    end = float(conn.execute("SELECT extract(epoch FROM clock_timestamp())").fetchone()[0])
    out = {"seconds": report["wall"], "status": report["status"], "split": split(conn, report["run_id"], now, end),
           "phases": phases(conn, report["run_id"]), "chunks": chunk_rows(conn, report["run_id"]),
           "tables": [{k: t.get(k) for k in ("rows_copied", "rows_inserted", "reconcile", "status")} for t in report["tables"]]}
    print(f"  {name}: {out['seconds']:.2f} s {out['split']} {out['phases']}", flush=True)
    return out


def export_changed(conn: psycopg.Connection[Any], directory: Path) -> tuple[Path, int]:
    """The rows the window changed, from the engine's result, to a binary file the server reads for the floor."""
    folder = directory / "copy"
    folder.mkdir(mode=0o777, exist_ok=True)
    for p in (directory, folder):
        p.chmod(0o777 if p == folder else 0o755)  # written and read by the server's own system user
    path = folder / "changed.bin"
    changed = conn.execute(f"COPY (SELECT {', '.join(COLUMNS)} FROM public.items WHERE updated_at >= '{CHANGED_AT}') "
                           f"TO '{path}' (FORMAT BINARY)").rowcount
    return path, changed


def floor(conn: psycopg.Connection[Any], path: Path) -> float:
    """Server-side COPY of the changed rows into a TEMP stage and the upsert of every column, one transaction."""
    updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in COLUMNS if c != "id")
    started = time.monotonic()
    with conn.transaction():
        conn.execute("CREATE TEMP TABLE stage (LIKE public.items) ON COMMIT DROP")
        conn.execute(f"COPY stage FROM '{path}' (FORMAT BINARY)")
        conn.execute(f"INSERT INTO public.items SELECT * FROM stage ON CONFLICT (id) DO UPDATE SET {updates}")
    return round(time.monotonic() - started, 2)


def distant_windows(stack: LocalStack, config: Path, env: dict[str, str]) -> dict[str, Any]:
    """The window again, through a relay that holds every Snowflake statement LATENCY seconds before the stand-in
    answers it (a warehouse compiling, queueing and starting a query), with read_ahead on and off, three times each,
    alternately, on the database as it was before the window; medians. Reading ahead hides a chunk's wait behind
    the last chunk's write."""
    relay = SnowflakeProxy(f"http://127.0.0.1:{env['SNOWFLAKE_PORT']}")
    relay.delay = lambda sql: LATENCY
    serving = threading.Thread(target=relay.serve_forever, daemon=True)
    serving.start()
    far = {**env, "SNOWFLAKE_PORT": str(relay.port)}
    seconds: dict[str, list[float]] = {"read_ahead": [], "without": []}
    try:
        for _ in range(3):
            for name, value in (("read_ahead", "true"), ("without", "false")):
                with reset(stack) as conn:
                    run = measured_run(f"window {LATENCY} s away, {name}", config, far, conn, "--read-ahead", value)
                    if run["status"] != "completed":
                        raise RuntimeError(f"the distant window did not complete: {run}")
                    seconds[name].append(run["seconds"])
    finally:
        relay.shutdown()
        relay.server_close()
    medians = {name: median(values) for name, values in seconds.items()}
    return {"latency_seconds": LATENCY, "seconds": medians, "all_seconds": seconds,
            "saved_seconds": round(medians["without"] - medians["read_ahead"], 2)}


LATENCY = float(os.environ.get("INCR_BENCH_LATENCY", "0.5"))
IMPORT = "import migrate, lib.run.orchestrator"


def import_seconds(env: dict[str, str], exit_code: str, times: int = 5) -> float:
    """A fresh interpreter importing the engine and running `exit_code`, median of `times`."""
    seconds = []
    for _ in range(times):
        started = time.monotonic()
        subprocess.run([sys.executable, "-c", f"{IMPORT}; {exit_code}"], cwd=ROOT, env=env, check=True)
        seconds.append(time.monotonic() - started)
    return median(seconds)


def median(values: list[float]) -> float:
    return round(sorted(values)[len(values) // 2], 2)


def reset(stack: LocalStack) -> psycopg.Connection[Any]:
    """The bench database (target and ledger) as it was before the window, its pages written: a new connection."""
    with psycopg.connect(**stack.pg_args("postgres"), autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {PG_DB} WITH (FORCE)")
        admin.execute(f"CREATE DATABASE {PG_DB} TEMPLATE {PG_DB}_before STRATEGY FILE_COPY")
    conn = psycopg.connect(**stack.pg_args(PG_DB), autocommit=True)
    conn.execute("CHECKPOINT")
    return conn


def digest(conn: psycopg.Connection[Any]) -> str:
    row = conn.execute("SELECT count(*) || ':' || md5(string_agg(md5(t::text), '' ORDER BY id)) FROM public.items t").fetchone()
    return str(row[0])


def main() -> None:
    rows = int(os.environ.get("INCR_BENCH_ROWS", "2000000"))
    changed = rows // 10
    result: dict[str, Any] = {"rows": rows, "updated_rows": changed, "new_rows": changed}
    with bench_stack(rows) as (stack, env, config, directory):
        first = engine_run(config, env)
        result["first_copy_seconds"] = first["wall"]
        with stack.snowflake_connect(DATABASE, SCHEMA) as sf, sf.cursor() as cur:
            cur.execute(f"UPDATE {DATABASE}.{SCHEMA}.{TABLE} SET AMOUNT = AMOUNT + 1, STATUS = 'changed', "
                        f"UPDATED_AT = DATEADD(millisecond, ID, '{CHANGED_AT}'::TIMESTAMP_NTZ) WHERE MOD(ID, 10) = 0")
            cur.execute(ROWS_SQL.format(table=f"{DATABASE}.{SCHEMA}.{TABLE}", first=rows + 1, rows=changed,
                                        updated=CHANGED_AT))
        with psycopg.connect(**stack.pg_args(PG_DB), autocommit=True) as conn:
            conn.execute("ANALYZE public.items")
        with psycopg.connect(**stack.pg_args("postgres"), autocommit=True) as admin:
            admin.execute(f"CREATE DATABASE {PG_DB}_before TEMPLATE {PG_DB} STRATEGY FILE_COPY")
        windows, floors, path = [], [], None
        for trial in range(3):  # the floor first but in the first trial, which exports its rows: the engine's last
            if trial:
                with reset(stack) as conn:
                    floors.append(floor(conn, path))
                    floor_digest = digest(conn)
            with reset(stack) as conn:
                windows.append(measured_run("window", config, env, conn))
                engine_digest = digest(conn)
                if trial == 0:
                    path, result["floor_rows"] = export_changed(conn, directory)
            if not trial:
                with reset(stack) as conn:
                    floors.append(floor(conn, path))
                    floor_digest = digest(conn)
            if floor_digest != engine_digest:
                raise RuntimeError(f"the engine's target and the floor's differ: {engine_digest} {floor_digest}")
            print(f"  floor: {floors[-1]:.2f} s", flush=True)
        result["window"] = {**sorted(windows, key=lambda r: r["seconds"])[1], "all_seconds": [r["seconds"] for r in windows]}
        result["floor_seconds"], result["floor_all_seconds"] = median(floors), floors
        with psycopg.connect(**stack.pg_args(PG_DB), autocommit=True) as conn:
            no_ops = sorted((measured_run("no-op", config, env, conn) for _ in range(3)), key=lambda r: r["seconds"])
        result["no_op"] = {**no_ops[1], "all_seconds": [r["seconds"] for r in no_ops]}
        result["distant"] = distant_windows(stack, config, env)
        result["import_seconds"] = import_seconds(env, "import migrate; migrate.exit_without_teardown(0)")
        result["import_with_teardown_seconds"] = import_seconds(env, "pass")
    result["window_vs_floor"] = round(result["window"]["seconds"] / result["floor_seconds"], 2)
    result["no_op_vs_import"] = round(result["no_op"]["seconds"] / result["import_seconds"], 2)
    keep("incremental", result)


@contextlib.contextmanager
def bench_stack(rows: int, **options: Any) -> Iterator[tuple[LocalStack, dict[str, str], Path, Path]]:
    """A private stack holding the source table of `rows` rows, and the config of its table (with `options`):
    (the stack, the environment of an engine run, the config's path, the temporary directory)."""
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        stack = LocalStack(directory / "stack")
        stack.start_postgres()
        stack.start_snowflake(persist=True, tied=True)
        try:
            stack.create_database(PG_DB)
            build_source(stack, rows)
            config = directory / "config.json"
            config.write_text(json.dumps(bench_config(**options)))
            yield stack, {**os.environ, **stack.env(PG_DB)}, config, directory
        finally:
            stack.stop_snowflake()
            stack.stop_postgres(mode="immediate")


def build_source(stack: LocalStack, rows: int) -> None:
    """The source table: `rows` rows with a primary key, generated inside the stand-in."""
    with stack.snowflake_connect() as sf, sf.cursor() as cur:
        cur.execute(f"CREATE DATABASE IF NOT EXISTS {DATABASE}")
        cur.execute(f"CREATE SCHEMA IF NOT EXISTS {DATABASE}.{SCHEMA}")
        cur.execute(DDL)
        cur.execute(ROWS_SQL.format(table=f"{DATABASE}.{SCHEMA}.{TABLE}", first=1, rows=rows,
                                    updated="2024-01-01 00:00:00"))


def bench_config(**options: Any) -> dict[str, Any]:
    """The bench's config.json: the table as a watermark table merged on ID, with `options` added."""
    refs = {k: f"${{{k}}}" for k in ("SNOWFLAKE_ACCOUNT", "SNOWFLAKE_USER", "SNOWFLAKE_PASSWORD", "SNOWFLAKE_HOST",
                                     "SNOWFLAKE_PORT", "PGHOST", "PGPORT", "PGUSER", "PGPASSWORD", "PGDATABASE")}
    return {"defaults": {"parallel_threads": 2, "snapshot": False}, "sources": {"bench": {
        "snowflake": {"account": refs["SNOWFLAKE_ACCOUNT"], "user": refs["SNOWFLAKE_USER"],
                      "password": refs["SNOWFLAKE_PASSWORD"], "host": refs["SNOWFLAKE_HOST"],
                      "port": refs["SNOWFLAKE_PORT"], "protocol": "http", "database": DATABASE, "schema": SCHEMA,
                      "network_timeout": 600},
        "postgres": {"host": refs["PGHOST"], "port": refs["PGPORT"], "user": refs["PGUSER"],
                     "password": refs["PGPASSWORD"], "dbname": refs["PGDATABASE"]},
        "tables": [{"source": TABLE, "target": "public.items", "source_watermark": "UPDATED_AT", "merge_key": ["ID"],
                    "chunking_columns": ["ID"], "chunking_column_types": ["numeric"], **options}],
    }}}


if __name__ == "__main__":
    main()
