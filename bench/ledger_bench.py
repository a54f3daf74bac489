"""Claim cost in a big ledger: ten million chunk rows in one run (half done), chunk ids past 2^31.

    python -m bench.ledger_bench            # LEDGER_BENCH_CHUNKS=1000000 for a smoke run

Prints and stores (bench/results/ledger.json) the seconds to build the ledger and the median and worst
time and shared buffers of claims taken half-way through the run, each by a fresh worker connection.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

import psycopg

from bench.results_file import keep
from lib import ledger
from lib.ledger import schema as ledger_schema
from scripts.local_stack import LocalStack


def main() -> None:
    chunks = int(os.environ.get("LEDGER_BENCH_CHUNKS", "10000000"))
    with tempfile.TemporaryDirectory() as tmp:
        stack = LocalStack(Path(tmp))
        stack.start_postgres()
        try:
            stack.create_database("ledger_bench")
            args = stack.pg_args("ledger_bench")
            with psycopg.connect(**args, autocommit=True) as conn:
                ledger_schema.apply_migrations(conn)
                s = ledger.SCHEMA
                conn.execute(f"ALTER TABLE {s}.migration_chunk_status ALTER COLUMN chunk_id RESTART WITH {2**31 - 1000}")
                conn.execute(f"INSERT INTO {s}.migration_runs (config_hash, source_name, status) VALUES ('h', 's', 'running')")
                conn.execute(f"INSERT INTO {s}.migration_table_status (run_id, table_name, target_table) VALUES (1, 't', 'public.t')")
                started = time.monotonic()
                conn.execute(f"INSERT INTO {s}.migration_chunk_status (run_id, table_name, chunk_no, predicate, bounds, "
                             "expected_rows, status) SELECT 1, 't', g, 'all rows', '{\"kind\": \"all\"}', 1, "
                             "CASE WHEN g <= %s THEN 'done' ELSE 'pending' END FROM generate_series(1, %s) g",
                             (chunks // 2, chunks))
                conn.execute(f"ANALYZE {s}.migration_chunk_status")
                build = time.monotonic() - started
            seconds = []
            for _ in range(100):
                with psycopg.connect(**args, autocommit=True) as worker:
                    began = time.perf_counter()
                    chunk = ledger.claim_chunk(worker, 1, "bench", 600, 3)
                    seconds.append(time.perf_counter() - began)
                    assert chunk is not None and chunk.chunk_id >= 2**31
                    with worker.transaction():
                        worker.execute(f"UPDATE {s}.migration_chunk_status SET status = 'done' WHERE chunk_id = %s",
                                       (chunk.chunk_id,))
            result = {"chunk_rows": chunks, "build_seconds": round(build, 1),
                      "claim_median_ms": round(statistics.median(seconds) * 1000, 2),
                      "claim_max_ms": round(max(seconds) * 1000, 2), "claims": len(seconds)}
        finally:
            stack.stop_postgres(mode="immediate")
    keep("ledger", result)


if __name__ == "__main__":
    main()
