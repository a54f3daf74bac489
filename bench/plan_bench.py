"""Planning benchmark: queries and seconds per chunking strategy on a large table in the fakesnow stand-in.

    python -m bench.plan_bench [--rows N] [--chunk-rows N] [--out PATH]    (rows default: $PLAN_BENCH_ROWS or 10,000,000)

One run starts a private fakesnow server in a temporary directory, generates the tables there with
GENERATOR (no rows ever travel to the client), then plans them with lib.planner.plan_table:
- numeric: BIG.ID, sparse IDs with one dense region (chunking_columns from the config);
- date:    BIG.TS, ~200 days with one heavy day that gets split by hour;
- hash:    BIG_NOKEY (VARCHAR and NUMBER(12,2) only, no chunking columns: strategy chosen by the planner);
- naive-per-day: the approach the project replaced, one COUNT(*) per distinct day of BIG.TS.

`queries` counts SnowflakeCursor.execute calls and `wire` counts query-request HTTP posts, both
while the strategy runs; `plan.queries` is what TablePlan reports. Rows per chunk are over the
non-empty chunks; `empty` counts the others (e.g. the NULL-key chunk of a nullable column).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

from snowflake.connector.cursor import SnowflakeCursor
from snowflake.connector.network import SnowflakeRestful

from lib.config import TableSpec
from lib.models import DayCount, TablePlan
from lib.plan.chunking import plan_dates
from lib.plan.strategy import plan_table
from lib.source.snowflake import SnowflakeSource
from lib.typemap import columns_from_description
from scripts.local_stack import LocalStack

DATABASE, SCHEMA = "BENCH", "PUBLIC"
DEFAULT_ROWS = 10_000_000
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "plan_bench.json"
HEAVY_DAY = "2024-06-15"


@dataclass
class Result:
    strategy: str
    queries: int  # SnowflakeCursor.execute calls
    wire: int  # query-request HTTP posts
    plan_queries: int | None  # TablePlan.queries (None: not a TablePlan)
    seconds: float
    chunks: int
    empty: int
    rows: int
    min_rows: int
    median_rows: float
    max_rows: int
    plan_seconds: float | None = None
    statements: list[str] = field(default_factory=list)


@contextmanager
def counting() -> Iterator[tuple[list[str], list[str]]]:
    """Record every SQL statement executed and every query-request posted while the block runs."""
    executed: list[str] = []
    posted: list[str] = []
    original_execute, original_request = SnowflakeCursor.execute, SnowflakeRestful.request

    def execute(self: SnowflakeCursor, command: str, *args: Any, **kwargs: Any) -> Any:
        executed.append(" ".join(command.split()))
        return original_execute(self, command, *args, **kwargs)

    def request(self: SnowflakeRestful, url: str, *args: Any, **kwargs: Any) -> Any:
        if "/queries/v1/query-request" in url:
            posted.append(url)
        return original_request(self, url, *args, **kwargs)

    SnowflakeCursor.execute = execute  # type: ignore[method-assign,assignment]
    SnowflakeRestful.request = request  # type: ignore[method-assign]
    try:
        yield executed, posted
    finally:
        SnowflakeCursor.execute = original_execute  # type: ignore[method-assign]
        SnowflakeRestful.request = original_request  # type: ignore[method-assign]


def create_tables(source: SnowflakeSource, rows: int) -> None:
    """BIG (ID, TS, NAME) and BIG_NOKEY (NAME, AMOUNT), generated server-side."""
    d0, d1 = rows * 2 // 5, rows * 3 // 5  # seq numbers [d0, d1) get dense consecutive IDs
    dense_base = d0 * 1000 + 1
    after_base = dense_base + (d1 - d0) + 1000
    generated = f"(SELECT SEQ8() AS n FROM TABLE(GENERATOR(ROWCOUNT => {rows})))"
    name = "('customer ' || MOD(n * 104729, 1000003))::VARCHAR"
    # MOD(n, 9) and MOD(n, 200) are independent (9 and 200 are coprime): every day gets its share,
    # and one row in nine lands on the heavy day.
    big = f"""
        CREATE OR REPLACE TABLE BIG AS
        SELECT (CASE WHEN n < {d0} THEN 1 + n * 1000
                     WHEN n < {d1} THEN {dense_base} + (n - {d0})
                     ELSE {after_base} + (n - {d1}) * 1000 END)::NUMBER(18,0) AS ID,
               (CASE WHEN MOD(n, 9) = 0 THEN DATEADD(second, MOD(n * 7, 86400), '{HEAVY_DAY}'::TIMESTAMP_NTZ)
                     ELSE DATEADD(second, MOD(n * 7919, 86400), DATEADD(day, MOD(n, 200), '2024-01-01'::TIMESTAMP_NTZ))
                END)::TIMESTAMP_NTZ AS TS,
               {name} AS NAME
        FROM {generated}"""
    nokey = f"""
        CREATE OR REPLACE TABLE BIG_NOKEY AS
        SELECT {name} AS NAME, (MOD(n * 31, 10000000) / 100.0)::NUMBER(12,2) AS AMOUNT
        FROM {generated}"""
    with source.connection().cursor() as cur:
        for sql in (big, nokey):
            cur.execute(sql)


def chunk_result(strategy: str, plan: TablePlan, seconds: float, executed: list[str], posted: list[str],
                 plan_queries: int | None) -> Result:
    sizes = [c.expected_rows for c in plan.chunks if c.expected_rows > 0] or [0]
    return Result(
        strategy, len(executed), len(posted), plan_queries, round(seconds, 3), len(plan.chunks),
        sum(1 for c in plan.chunks if c.expected_rows == 0), plan.expected_rows,
        min(sizes), statistics.median(sizes), max(sizes),
        plan_seconds=plan.seconds if plan_queries is not None else None, statements=executed,
    )


def bench_plan(args: dict[str, Any], strategy: str, spec: TableSpec, chunk_rows: int) -> Result:
    source = SnowflakeSource(args)
    try:
        columns = columns_from_description(source.describe(spec.source))  # connects; not counted
        with counting() as (executed, posted):
            started = time.monotonic()
            plan = plan_table(source, spec, columns, chunk_rows)
            seconds = time.monotonic() - started
    finally:
        source.close()
    if plan.strategy != strategy:
        print(f"warning: expected strategy {strategy}, the planner chose {plan.strategy}", file=sys.stderr)
    return chunk_result(plan.strategy, plan, seconds, executed, posted, plan.queries)


def bench_naive(args: dict[str, Any], table: str, column: str, chunk_rows: int) -> Result:
    """The replaced approach: list the days, then one COUNT(*) per day; days packed like the date strategy."""
    source = SnowflakeSource(args)
    try:
        conn = source.connection()
        with counting() as (executed, posted), conn.cursor() as cur:
            started = time.monotonic()
            cur.execute(f"SELECT DISTINCT DATE({column}) FROM {table} WHERE {column} IS NOT NULL ORDER BY 1")
            days: list[date] = [r[0] for r in cur.fetchall()]
            counts = []
            for day in days:
                cur.execute(f"SELECT COUNT(*) FROM {table} WHERE DATE({column}) = %s", (day,))
                counts.append(DayCount(day, int(cur.fetchone()[0])))  # type: ignore[index]
            plan = plan_dates(column, counts, chunk_rows, False, "naive: one COUNT(*) per day")
            seconds = time.monotonic() - started
    finally:
        source.close()
    return chunk_result("naive-per-day", plan, seconds, executed, posted, None)


def peak_rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def print_table(results: list[Result]) -> None:
    header = ("strategy", "queries", "wire", "plan.queries", "seconds", "chunks", "empty", "rows",
              "min rows", "median rows", "max rows")
    lines = [header] + [
        (r.strategy, str(r.queries), str(r.wire), "-" if r.plan_queries is None else str(r.plan_queries),
         f"{r.seconds:.3f}", str(r.chunks), str(r.empty), f"{r.rows:,}", f"{r.min_rows:,}",
         f"{r.median_rows:,.0f}", f"{r.max_rows:,}")
        for r in results
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for n, line in enumerate(lines):
        print("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths, strict=True))))
        if n == 0:
            print("  ".join("-" * w for w in widths))


def run(rows: int, chunk_rows: int, out: Path) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="plan-bench-") as tmp:
        stack = LocalStack(Path(tmp))
        state = stack.start_snowflake(persist=False, tied=True)
        try:
            env = stack.snowflake_env()
            with stack.snowflake_connect() as conn, conn.cursor() as cur:
                cur.execute(f"CREATE DATABASE IF NOT EXISTS {DATABASE}")
                cur.execute(f"CREATE SCHEMA IF NOT EXISTS {DATABASE}.{SCHEMA}")
            args = {"account": env["SNOWFLAKE_ACCOUNT"], "user": env["SNOWFLAKE_USER"], "password": env["SNOWFLAKE_PASSWORD"],
                    "host": env["SNOWFLAKE_HOST"], "port": int(env["SNOWFLAKE_PORT"]), "protocol": "http",
                    "database": DATABASE, "schema": SCHEMA, "network_timeout": 600}

            print(f"generating {rows:,} rows in BIG and BIG_NOKEY ...", flush=True)
            started = time.monotonic()
            setup = SnowflakeSource(args)
            try:
                create_tables(setup, rows)
            finally:
                setup.close()
            generate_seconds = round(time.monotonic() - started, 3)
            print(f"generated in {generate_seconds:.1f} s; planning with chunk_rows={chunk_rows:,}", flush=True)

            big, nokey = (DATABASE, SCHEMA, "BIG"), (DATABASE, SCHEMA, "BIG_NOKEY")
            cases: list[tuple[str, Callable[[], Result]]] = [
                ("numeric", lambda: bench_plan(args, "numeric", TableSpec(big, ("public", "big"), ("ID",), ("numeric",)), chunk_rows)),
                ("date", lambda: bench_plan(args, "date", TableSpec(big, ("public", "big"), ("TS",), ("date",)), chunk_rows)),
                ("hash", lambda: bench_plan(args, "hash", TableSpec(nokey, ("public", "big_nokey")), chunk_rows)),
                ("naive-per-day", lambda: bench_naive(args, "BIG", "TS", chunk_rows)),
            ]
            results = []
            for label, case in cases:
                print(f"  {label} ...", flush=True)
                results.append(case())
            fakesnow_rss = peak_rss_mb(int(state["pid"]))
        finally:
            stack.stop_snowflake()

    print()
    print_table(results)
    report = {
        "rows": rows,
        "chunk_rows": chunk_rows,
        "generate_seconds": generate_seconds,
        "machine": {
            "cpu_count": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "fakesnow": version("fakesnow"), "duckdb": version("duckdb"),
            "snowflake_connector": version("snowflake-connector-python"),
            "fakesnow_peak_rss_mb": fakesnow_rss,
        },
        "results": [asdict(r) for r in results],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"\nwritten to {out}")
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=int(os.environ.get("PLAN_BENCH_ROWS", DEFAULT_ROWS)))
    parser.add_argument("--chunk-rows", type=int, default=250_000)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    options = parser.parse_args()
    run(options.rows, options.chunk_rows, options.out)


if __name__ == "__main__":
    main()
