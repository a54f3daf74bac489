"""How long a swap holds the live table: a 5,000,000-row table with a primary key and a second index.

    python -m bench.swap_bench            # SWAP_BENCH_ROWS=500000 for a smoke run

The shadow is prepared as a run prepares it (lib/target/swap.py: indexes, keys, grants, ANALYZE, without the live
table's lock), then swapped in by one transaction; the live table's lock is held from LOCK TABLE to COMMIT.
For comparison, the same swap with the index builds inside the locked transaction (how it was done before).
Results: bench/results/swap.json.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import psycopg
from psycopg import sql

from bench.results_file import keep
from lib.ledger import schema as ledger_schema
from lib.target import swap
from scripts.local_stack import LocalStack

LIVE = ("public", "items")


def _tables(conn: psycopg.Connection, rows: int, run_id: int) -> tuple[str, str]:
    conn.execute("DROP TABLE IF EXISTS public.items, public.items__shadow_1, public.items__shadow_2, "
                 "public.items__backup_1, public.items__backup_2 CASCADE")
    conn.execute("CREATE TABLE public.items (id bigint PRIMARY KEY, name text, price numeric(12,2), "
                 "updated_at timestamptz)")
    conn.execute("CREATE INDEX items_name_idx ON public.items (name)")
    conn.execute("INSERT INTO public.items SELECT g, 'old ' || g, g % 100, now() FROM generate_series(1, 1000) g")
    shadow = swap.create_shadow(conn, LIVE, run_id, "DB.PUBLIC.ITEMS")
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, 'item ' || g, g %% 1000 / 10.0, now() - g * interval '1 s' "
                         "FROM generate_series(1, %s) g").format(sql.Identifier(*shadow)), (rows,))
    return shadow


def main() -> None:
    rows = int(os.environ.get("SWAP_BENCH_ROWS", "5000000"))
    result: dict[str, float | int] = {"rows": rows}
    with tempfile.TemporaryDirectory() as tmp:
        stack = LocalStack(Path(tmp))
        stack.start_postgres()
        try:
            stack.create_database("swap_bench")
            with psycopg.connect(**stack.pg_args("swap_bench"), autocommit=True) as conn:
                ledger_schema.apply_migrations(conn)
                shadow = _tables(conn, rows, 1)
                began = time.monotonic()
                with conn.transaction():
                    swap.prepare(conn, LIVE, shadow, 1)
                result["prepare_seconds"] = round(time.monotonic() - began, 2)
                began = time.monotonic()
                with conn.transaction():
                    swap.swap_in(conn, LIVE, shadow, 1, "DB.PUBLIC.ITEMS")
                result["locked_seconds"] = round(time.monotonic() - began, 3)
                # before: the builds ran inside the transaction that held the live table's lock
                shadow = _tables(conn, rows, 2)
                began = time.monotonic()
                with conn.transaction():
                    conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(sql.Identifier(*LIVE)))
                    swap.prepare(conn, LIVE, shadow, 2)
                    swap.swap_in(conn, LIVE, shadow, 2, "DB.PUBLIC.ITEMS")
                result["locked_seconds_with_builds_inside"] = round(time.monotonic() - began, 2)
        finally:
            stack.stop_postgres(mode="immediate")
    keep("swap", result)


if __name__ == "__main__":
    main()
