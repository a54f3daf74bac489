"""The cost of finding and applying deletes (`deletes hard`), as a ratio to the copy of the same table.

    python -m bench.deletes_bench        # DELETES_BENCH_ROWS=500000 for a smoke run

A private stack holds a ROWS-row table with a primary key (the incremental bench's table, bench/incremental_bench.py),
which the engine copies as a watermark table merged on ID with `deletes: hard`: that first run is the reference.
Then 0.1% of the rows are deleted in Snowflake twice over, and the next run (an empty window, then the deletes pass)
is measured each time, in a fresh process:

  clustered  the deleted rows are consecutive keys: one key range differs, only its keys are read;
  spread     every thousandth key: every range differs, every key is read from both sides (the worst case).

Each reports the run's seconds and the pass's own (migration_status.delete_passes), the ranges that differed, and
checks that the target equals the source afterwards. Results: bench/results/deletes.json. Nothing is asserted
about timing.
"""

from __future__ import annotations

import os
from typing import Any

import psycopg

from bench.incremental_bench import DATABASE, PG_DB, SCHEMA, TABLE, bench_stack, engine_run
from bench.results_file import keep

DELETIONS = {
    "clustered": "ID > {rows} / 2 AND ID <= {rows} / 2 + {rows} / 1000",
    "spread": "MOD(ID, 1000) = 7",
}


def main() -> None:
    rows = int(os.environ.get("DELETES_BENCH_ROWS", "5000000"))
    result: dict[str, Any] = {"rows": rows}
    with bench_stack(rows, deletes="hard") as (stack, env, config, _):
        first = engine_run(config, env)
        result["copy_seconds"] = first["wall"]
        print(f"  copy: {first['wall']:.1f} s", flush=True)
        with psycopg.connect(**stack.pg_args(PG_DB), autocommit=True) as conn:
            for name, where in DELETIONS.items():
                with stack.snowflake_connect(DATABASE, SCHEMA) as sf, sf.cursor() as cur:
                    cur.execute(f"DELETE FROM {TABLE} WHERE {where.format(rows=rows)}")
                    deleted = cur.rowcount
                report = engine_run(config, env)
                ranges, differing, removed, seconds = conn.execute(
                    "SELECT key_ranges, differing_ranges, deleted, seconds FROM migration_status.delete_passes "
                    "ORDER BY at DESC LIMIT 1").fetchone()
                with stack.snowflake_connect(DATABASE, SCHEMA) as sf, sf.cursor() as cur:
                    cur.execute(f"SELECT COUNT(*) FROM {TABLE}")
                    source_rows = cur.fetchone()[0]
                target_rows = conn.execute("SELECT count(*) FROM public.items").fetchone()[0]
                if removed != deleted or target_rows != source_rows:
                    raise RuntimeError(f"{name}: deleted {deleted} in Snowflake, the pass {removed}; "
                                       f"source {source_rows} rows, target {target_rows}")
                result[name] = {"deleted": deleted, "run_seconds": report["wall"], "pass_seconds": float(seconds),
                                "key_ranges": ranges, "differing_ranges": differing,
                                "run_vs_copy": round(report["wall"] / first["wall"], 3),
                                "pass_vs_copy": round(float(seconds) / first["wall"], 3)}
                print(f"  {name}: {result[name]}", flush=True)
    keep("deletes", result)


if __name__ == "__main__":
    main()
