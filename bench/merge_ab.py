"""What exact comparisons and key checks cost a merge and a catch-up, measured A/B in one run.

    python -m bench.merge_ab            # MERGE_AB_ROWS=1000000 for a smoke run

A 5,000,000-row keyed table of the bench's 12 column types (server-side), then 1,000,000 staged rows (half
new keys, half existing keys with a changed AMOUNT, like make bench (e)) applied through the engine's
insert_from_stage three ways, alternately, three rounds each: a merge comparing values as stored (now), a
merge comparing with each column's own equality (before), a catch-up with and without the stage's key
check (done in Arrow as the batches pass, lib/target/loaders.py). Medians go to bench/results/merge_ab.json.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
from psycopg import sql

from bench.results_file import keep
from lib.target import postgres as pg
from lib.typemap import map_column
from scripts.local_stack import LocalStack

COLUMNS = [map_column("ID", "NUMBER", 18, 0), map_column("QUANTITY", "NUMBER", 9, 0),
           map_column("AMOUNT", "NUMBER", 12, 2), map_column("RATIO", "FLOAT"), map_column("DESCRIPTION", "TEXT"),
           map_column("CODE", "TEXT", char_length=20), map_column("ACTIVE", "BOOLEAN"), map_column("DAY", "DATE"),
           map_column("CREATED_AT", "TIMESTAMP_NTZ"), map_column("UPDATED_AT", "TIMESTAMP_TZ"),
           map_column("PAYLOAD", "VARIANT"), map_column("NOTE", "TEXT")]
ROWS_SQL = """SELECT n + 1, (n * 7919) %% 1000000, ((n * 31) %% 100000000) / 100.0 + %s, n / 7.0,
    repeat('lorem ipsum ', ((n * 13) %% 11)::int) || n, 'C-' || lpad((n %% 100000)::text, 6, '0'), n %% 3 <> 0,
    DATE '2015-01-01' + (n %% 3650)::int, TIMESTAMP '2020-01-01' + n * interval '7 s',
    TIMESTAMPTZ '2021-06-01 12:00+00' + n * interval '11 s',
    jsonb_build_object('n', n, 'tag', 't' || (n %% 50), 'ok', n %% 2 = 0), CASE WHEN n %% 10 = 0 THEN 'note ' || n END
FROM generate_series(%s, %s) AS n"""


def _old_comparable(value: sql.Composable, column: object) -> sql.Composable:
    base = column.pg_type.split("(")[0].strip()  # type: ignore[attr-defined]
    if base == "json":
        return sql.SQL("{}::jsonb").format(value)
    return value


def main() -> None:
    rows = int(os.environ.get("MERGE_AB_ROWS", "5000000"))
    merged = rows // 5
    with tempfile.TemporaryDirectory() as tmp:
        stack = LocalStack(Path(tmp))
        stack.start_postgres()
        try:
            stack.create_database("merge_ab")
            with psycopg.connect(**stack.pg_args("merge_ab"), autocommit=True) as conn:
                pg.ensure_table(conn, ("public", "t"), COLUMNS)
                conn.execute(sql.SQL("INSERT INTO public.t " + ROWS_SQL), (0, 0, rows - 1))
                conn.execute("ALTER TABLE public.t ADD PRIMARY KEY (id)")
                conn.execute("VACUUM ANALYZE public.t")
                timings: dict[str, list[float]] = {"merge, values as stored": [], "merge, each column's equality": [],
                                                   "catch-up with the stage's key check": [],
                                                   "catch-up without it": []}
                real = pg._comparable
                for _ in range(3):
                    for label in timings:
                        pg._comparable = _old_comparable if "equality" in label else real
                        with conn.transaction(force_rollback=True):
                            stage = pg.create_stage(conn, ("public", "t"), COLUMNS)
                            conn.execute(sql.SQL("INSERT INTO {} " + ROWS_SQL).format(stage),
                                         (1, rows - merged // 2, rows + merged // 2 - 1))
                            began = time.perf_counter()
                            if "key check" in label:  # what the loader does for a table read live (loaders._KeySeen)
                                keys = pa.chunked_array([pa.array(range(rows - merged // 2 + 1, rows + merged // 2 + 1),
                                                                  pa.int64())])
                                assert len(pc.unique(keys.drop_null())) == len(keys)
                            pg.insert_from_stage(conn, ("public", "t"), COLUMNS, stage, ("id",),
                                                 update=label.startswith("merge"), skip_equal=True)
                            timings[label].append(time.perf_counter() - began)
                pg._comparable = real
        finally:
            stack.stop_postgres(mode="immediate")
    result = {"table_rows": rows, "merged_rows": merged, "seconds": {k: round(statistics.median(v), 3)
                                                                    for k, v in timings.items()}}
    s = result["seconds"]
    result["ratios"] = {"merge: as stored / own equality": round(s["merge, values as stored"] /
                                                                 s["merge, each column's equality"], 3),
                        "catch-up: with / without the key check": round(s["catch-up with the stage's key check"] /
                                                                        s["catch-up without it"], 3)}
    keep("merge_ab", result)


if __name__ == "__main__":
    main()
