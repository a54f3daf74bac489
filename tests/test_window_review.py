"""A hostile review of the incremental fast path: rows that arrive around the window's one read, a key made of
every column, a closed stdout. Each failed on the first version of that path."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from lib import ledger as status
from lib.run.orchestrator import run
from tests.helpers import at_fault_point_once

NUMERIC = {"chunking_columns": ["ID"], "chunking_column_types": ["numeric"]}
WINDOW = [{"source": "ITEMS", "source_watermark": "UPDATED_AT", **NUMERIC}]


def _source(env, rows: int = 1000) -> None:
    env.sf_execute("CREATE TABLE ITEMS (ID NUMBER(18,0) PRIMARY KEY, NAME VARCHAR, UPDATED_AT TIMESTAMP_NTZ)",
                   f"INSERT INTO ITEMS SELECT SEQ8(), 'item ' || SEQ8(), DATEADD(second, SEQ8(), "
                   f"'2024-01-01'::TIMESTAMP_NTZ) FROM TABLE(GENERATOR(ROWCOUNT => {rows}))")


def _same(env) -> None:
    source = {int(r[0]): (r[1], str(r[2])) for r in env.sf_rows("SELECT ID, NAME, UPDATED_AT FROM ITEMS")}
    target = {int(r[0]): (r[1], str(r[2])) for r in env.pg_rows("SELECT id, name, updated_at FROM public.items")}
    assert set(source) - set(target) == set(), "source rows missing from the target"
    assert target == source


def _reconciled(env, run_id: int) -> str:
    return env.pg_value(f"SELECT reconcile_status FROM {status.SCHEMA}.migration_table_status WHERE run_id = %s",
                        (run_id,))


# ---------------------------------------------------------------------------------------------------------------
# F1 (2e5a606, reconcile.counted_with_its_high_end): a row that arrives below hi AFTER the one chunk read the window
# but BEFORE reconcile used to be caught by the reconcile count (source N+1 vs read N -> source_changed, next window
# starts at this window's lo again, lib/target/windows.py). Now reconcile takes the planning count, says `match`,
# the next window starts at hi, and the row is never read.
# ---------------------------------------------------------------------------------------------------------------
def test_review_f1_a_row_arriving_below_hi_after_the_one_chunk_read_is_not_lost(env, monkeypatch) -> None:
    _source(env)
    assert run(env.config(WINDOW)).status == "completed"  # default settings: run snapshot, table read live
    env.sf_execute("INSERT INTO ITEMS VALUES (5000, 'new', '2025-01-01')")
    # after the window's one chunk committed, before the table is reconciled: a row inside [lo, hi]
    late = at_fault_point_once(monkeypatch, "after_commit",
                               lambda: env.sf_execute("INSERT INTO ITEMS VALUES (5001, 'late', '2024-06-01')"))

    second = run(env.config(WINDOW))
    assert late and second.status == "completed", second.tables
    third = run(env.config(WINDOW))
    assert third.status == "completed", third.tables

    assert env.pg_value("SELECT count(*) FROM public.items WHERE id = 5001") == 1, (
        f"row 5001 lost; run 2 reconciled {_reconciled(env, second.run_id)!r}, run 3 window {third.tables[0]['window']}")
    _same(env)


# ---------------------------------------------------------------------------------------------------------------
# F2 (2e5a606 x 0a288be): snapshot false, local run. The one chunk writes the rows the planning probe read, so
# rows_copied == watermark_rows always, and reconcile never counts. A row that arrives inside the window between
# planning and the chunk (exactly the 'busy' case of test_windows.py, which runs with a snapshot and so never
# takes the early-read path) is missed and the window is reconciled `match`; the next window starts above it.
# ---------------------------------------------------------------------------------------------------------------
def test_review_f2_snapshot_false_a_row_arriving_after_planning_is_counted_and_not_lost(env, monkeypatch) -> None:
    _source(env)
    assert run(env.config(WINDOW, snapshot=False)).status == "completed"
    env.sf_execute("INSERT INTO ITEMS VALUES (5000, 'new', '2025-01-01')")
    assert run(env.config(WINDOW, snapshot=False)).status == "completed"
    # a row arrives at the window's lower end after planning counted and read the window, before its rows are written
    late = at_fault_point_once(monkeypatch, "during_read",
                               lambda: env.sf_execute("INSERT INTO ITEMS VALUES (5001, 'late', '2025-01-01')"))
    env.sf_execute("INSERT INTO ITEMS VALUES (5002, 'newer', '2025-01-02')")

    busy = run(env.config(WINDOW, snapshot=False))
    assert late and busy.status == "completed", busy.tables
    after = run(env.config(WINDOW, snapshot=False))
    assert after.status == "completed", after.tables

    assert env.pg_value("SELECT count(*) FROM public.items WHERE id = 5001") == 1, (
        f"row 5001 lost; run {busy.run_id} reconciled {busy.tables[0]['reconcile']!r} with "
        f"rows_copied {busy.tables[0]['rows_copied']} and source_count {busy.tables[0]['source_count']}; "
        f"next window {after.tables[0]['window']}")
    _same(env)


# ---------------------------------------------------------------------------------------------------------------
# F3 (2e5a606, planning key check skipped for a one-chunk live window): a merge whose key is every column of the
# table upserts with ON CONFLICT DO NOTHING (no column to update), so PostgreSQL never raises the cardinality
# violation the stage check relies on for merges (KeyedLoader._check_stage only looks for NULLs when `update`).
# A repeated key used to fail the table at planning ("the source repeats keys"); now one of the two source rows
# is silently dropped and the window is reconciled `match` (2 rows read, 2 counted, 1 written).
# ---------------------------------------------------------------------------------------------------------------
def test_review_f3_a_merge_keyed_on_every_column_refuses_repeated_keys_in_a_small_live_window(env) -> None:
    env.sf_execute("CREATE TABLE LINKS (ID NUMBER(18,0), UPDATED_AT TIMESTAMP_NTZ)",
                   "INSERT INTO LINKS SELECT SEQ8(), DATEADD(second, SEQ8(), '2024-01-01'::TIMESTAMP_NTZ) "
                   "FROM TABLE(GENERATOR(ROWCOUNT => 1000))")
    with env.pg() as conn:
        conn.execute("CREATE TABLE public.links (id bigint, updated_at timestamp, UNIQUE (id, updated_at))")
    table = [{"source": "LINKS", "source_watermark": "UPDATED_AT", "merge_key": ["ID", "UPDATED_AT"], **NUMERIC}]
    assert run(env.config(table, snapshot=False)).status == "completed"

    env.sf_execute("INSERT INTO LINKS VALUES (5000, '2025-01-01'), (5000, '2025-01-01')")
    result = run(env.config(table, snapshot=False))

    source_rows = env.sf_rows("SELECT COUNT(*) FROM LINKS")[0][0]
    target_rows = env.pg_value("SELECT count(*) FROM public.links")
    # either the table fails naming the repeated key (as before 2e5a606) or the target holds every source row
    assert result.status == "completed_with_errors" or target_rows == source_rows, (
        result.status, result.tables, source_rows, target_rows)


# ---------------------------------------------------------------------------------------------------------------
# F4 (1cddaaa, exit_without_teardown): with stdout closed (`migrate.py ... >&-`, a service manager that closes fd 1),
# Python sets sys.stdout to None; print() then writes nothing and the command used to exit with its own code.
# sys.stdout.flush() now raises AttributeError (not OSError): a traceback, and exit status 1 instead of the code.
# ---------------------------------------------------------------------------------------------------------------
def test_review_f4_the_exit_code_survives_a_closed_stdout(tmp_path) -> None:
    root = Path(__file__).resolve().parents[1]
    missing = tmp_path / "no-such-config.json"
    done = subprocess.run([sys.executable, str(root / "migrate.py"), "status", "--config", str(missing)],
                          cwd=tmp_path, capture_output=False, stderr=subprocess.PIPE, text=True, timeout=120,
                          preexec_fn=lambda: os.close(1))
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])  # EXIT_CONFIG
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
