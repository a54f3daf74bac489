"""docs/operations.md: every SQL statement runs as written against a real ledger, the diagnostics return what the
runbook says they return, and its repair for a value that does not fit (O5) lets the failed chunk through."""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path
from typing import Any

from lib import ledger as status
from lib.run.orchestrator import run, start_run
from tests.helpers import cli

DOCS = Path(__file__).resolve().parent.parent / "docs"
DOC = DOCS / "operations.md"
SQL_BLOCK = re.compile(r"^```sql\n(.*?)^```", re.DOTALL | re.MULTILINE)
LABEL = re.compile(r"^--\s*(O\d+):")
S = status.SCHEMA

NUMERIC = {"chunking_columns": ["ID"], "chunking_column_types": ["numeric"]}
# CUSTOMERS first: its first chunk is the lowest chunk_id, the one a test worker claims and holds.
TABLES = [{"source": "CUSTOMERS", **NUMERIC}, {"source": "ORDERS", **NUMERIC}, {"source": "ORDER_LINES", **NUMERIC}]
ROWS = {"CUSTOMERS": 2000, "ORDERS": 3000, "ORDER_LINES": 1000}


def statements() -> list[tuple[str, str]]:
    """(label, statement) in document order. A block is cut at its '-- On:' lines; the other comment lines are
    dropped before each part is split into statements on ';'."""
    out: list[tuple[str, str]] = []
    for block in SQL_BLOCK.findall(DOC.read_text()):
        parts: list[tuple[str, list[str]]] = []
        for line in block.splitlines():
            label = LABEL.match(line.strip())
            if label:
                parts.append((label.group(1), []))
            elif not line.lstrip().startswith("--"):
                assert parts, f"a SQL block must start with a '-- On:' label:\n{block}"
                parts[-1][1].append(line)
        for label, lines in parts:
            out.extend((label, s.strip()) for s in "\n".join(lines).split(";") if s.strip())
    return out


def _short(table_name: str) -> str:
    return table_name.split(".")[-1]


def _source_tables(env) -> None:
    env.sf_execute(
        f"CREATE TABLE CUSTOMERS AS SELECT SEQ8()::NUMBER(18,0) AS ID, 'customer ' || SEQ8() AS NAME "
        f"FROM TABLE(GENERATOR(ROWCOUNT => {ROWS['CUSTOMERS']}))",
        f"CREATE TABLE ORDERS AS SELECT SEQ8()::NUMBER(18,0) AS ID FROM TABLE(GENERATOR(ROWCOUNT => {ROWS['ORDERS']}))",
        "CREATE TABLE ORDER_LINES AS SELECT SEQ8()::NUMBER(18,0) AS ID, IFF(SEQ8() = 10, 99999, MOD(SEQ8(), 7) + 1)::NUMBER(9,0) "
        f"AS QTY FROM TABLE(GENERATOR(ROWCOUNT => {ROWS['ORDER_LINES']}))",
    )
    with env.pg() as conn:  # created before the run, one column too narrow for 99999: one chunk fails, fatally
        conn.execute("CREATE TABLE public.order_lines (id bigint, qty smallint)")


def test_doc_is_short_labelled_linked_and_free_of_placeholders() -> None:
    text = DOC.read_text()
    assert len(text.splitlines()) <= 225
    labels = list(dict.fromkeys(label for label, _ in statements()))
    assert labels == [f"O{n}" for n in range(1, 15)], labels
    for label, statement in statements():
        assert not re.search(r"<[a-z_ ]+>|\bNAME\b|\.\.\.|…", statement), f"placeholder in {label}:\n{statement}"
    for link in re.findall(r"\]\(([a-z_]+\.md)\)", text):
        assert (DOCS / link).exists(), link
    for needed in ("resume.md", "step_functions.md", "migrate.py status", "--json", "migrate.py reconcile",
                   "migrate.py cleanup", "--older-than-days", "--resume-max-age", "--no-resume", "truncate_onstart",
                   "pg_locks", "CloudWatch"):
        assert needed in text, needed
    sql = " ".join(s for _, s in statements())
    for view in ("run_summary", "table_progress", "failed_chunks", "stalled_leases", "runs_near_window_end",
                 "reconciliation", "throughput_per_minute"):
        assert f"migration_status.{view}" in sql, view


def test_every_statement_runs_on_a_real_ledger_and_the_widening_repair_completes_the_run(env) -> None:
    _source_tables(env)
    config = env.config(TABLES, chunk_rows=500)
    run_id = start_run(config).run_id
    owner = env.pg()  # a worker that holds one CUSTOMERS chunk and never finishes it
    held = status.claim_chunk(owner, run_id, "held-by-test", lease_seconds=3600, max_attempts=3)
    assert held is not None and _short(held.table_name) == "CUSTOMERS"
    first = run(config)
    assert (first.mode, first.status) == ("resumed", "running")
    with env.pg() as conn:  # the holder froze (lease expired), and the run is 170 h old: 2 h past its window
        conn.execute(f"UPDATE {S}.migration_chunk_status SET lease_expires_at = now() - interval '5 minutes' "
                     "WHERE chunk_id = %s", (held.chunk_id,))
        conn.execute(f"UPDATE {S}.migration_runs SET started_at = now() - interval '170 hours' WHERE run_id = %s", (run_id,))

    results: dict[str, list[list[tuple[Any, ...]] | None]] = {}
    with env.pg() as conn:
        for label, statement in statements():
            try:
                cur = conn.execute(statement)
                rows = cur.fetchall() if cur.description is not None else None
            except Exception as exc:
                raise AssertionError(f"{label} failed: {exc}\n{statement}") from exc
            results.setdefault(label, []).append(rows)

    # O3: the failed chunk, its error, and the table it failed
    failed_chunks, failed_tables = results["O3"]
    assert len(failed_chunks) == 1
    table, chunk_no, predicate, attempts, _, error = failed_chunks[0]
    assert (_short(table), attempts) == ("ORDER_LINES", 1)
    assert "value does not fit the target column type" in error and predicate in error
    assert [_short(t[0]) for t in failed_tables] == ["ORDER_LINES"]
    assert "1 chunk(s) failed" in failed_tables[0][4]
    lost = env.pg_value(f"SELECT expected_rows FROM {S}.migration_chunk_status WHERE run_id = %s AND status = 'failed'", (run_id,))
    assert lost > 0

    # O1, O2: the run and its tables
    copied = sum(ROWS.values()) - lost - held.expected_rows
    (summary,) = results["O1"][0]
    assert summary[:3] == (run_id, "test", "running")
    assert summary[5] == 1 and summary[4] == summary[6] - 2  # all chunks done but the failed and the held one
    assert summary[7:] == (copied, sum(ROWS.values()), 1, 1, None)
    progress = {_short(r[0]): (r[1], r[5]) for r in results["O2"][0]}
    assert progress == {"CUSTOMERS": ("running", 0), "ORDERS": ("completed", 0), "ORDER_LINES": ("failed", 1)}

    # O4 (run before O5): the too narrow column, as the ledger and the target had it
    columns = {r[1]: r[2:] for r in results["O4"][0]}
    assert columns == {"ID": ("NUMBER", "18", "0", "bigint", "bigint"), "QTY": ("NUMBER", "9", "0", "smallint", "smallint")}

    # O5: the target column is wider; the ledger catches up when the run is resumed (below)
    assert results["O5"] == [None]
    assert env.pg_value("SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
                        "WHERE attrelid = 'public.order_lines'::regclass AND attname = 'qty'") == "integer"

    # O6, O7, O8: reconciliation, the chunk that explains the difference, no duplicates
    rows = results["O6"][0]
    assert rows[-1][8] == "match" and rows[0][8] != "match"
    reconciliation = {_short(r[0]): (r[2], r[5], r[6], r[7], r[8]) for r in rows}
    assert reconciliation == {
        "ORDERS": ("completed", 3000, 3000, 0, "match"),
        "ORDER_LINES": ("failed", 1000, 1000 - lost, -lost, "mismatch"),
        "CUSTOMERS": ("running", None, None, None, "pending"),
    }
    assert [(_short(r[0]), r[1], r[3], r[4], r[5]) for r in results["O7"][0]] == [("ORDER_LINES", chunk_no, "failed", lost, None)]
    assert results["O8"] == [[]]

    # O9, O10: the frozen holder: an expired lease, and the session that still holds the chunk
    assert [(_short(r[1]), r[2], r[3]) for r in results["O9"][0]] == [("CUSTOMERS", held.chunk_no, "held-by-test")]
    (holder,) = results["O10"][0]
    assert (_short(holder[0]), holder[1], holder[2], holder[5], holder[6]) == (
        "CUSTOMERS", held.chunk_no, "held-by-test", True, owner.info.backend_pid)
    assert results["O11"][0] == []  # no engine session is left once run() returned

    # O12: past the window by 2 h, and the run's age
    near, ages = results["O12"]
    assert [(r[0], r[2], r[4], r[5]) for r in near] == [(run_id, "running", Decimal(168), Decimal("-2.0"))]
    assert [(r[0], r[3]) for r in ages] == [(run_id, Decimal("170.0"))]

    # O13, O14: every copied row is in a recent minute; what is left is the failed and the held chunk
    assert sum(r[2] for r in results["O13"][0]) == copied
    ((rows_left, rate, time_left),) = results["O14"][0]
    assert rows_left == lost + held.expected_rows and rate > 0 and time_left is not None

    # As section 6 says: a larger window resumes the run 170 h after its start; after O5 the chunk goes through
    owner.close()
    final = run(env.config(TABLES, chunk_rows=500, resume_max_age=400))
    assert (final.mode, final.run_id, final.status) == ("resumed", run_id, "completed")
    assert env.pg_rows("SELECT count(*), count(DISTINCT id), max(qty) FROM public.order_lines") == [(1000, 1000, 99999)]
    assert env.pg_rows("SELECT count(*), count(DISTINCT id) FROM public.customers") == [(2000, 2000)]
    assert env.pg_value("SELECT count(*) FROM public.orders") == 3000
    # ... and the views now use the window of that latest start
    assert env.pg_value(f"SELECT resume_max_age_hours FROM {S}.run_summary WHERE run_id = %s", (run_id,)) == 400


def test_widening_the_target_alone_lets_the_failed_chunk_through_on_resume(env) -> None:
    """Section 3: after ALTER TABLE, starting the same command again picks up the new column type."""
    _source_tables(env)
    config = env.config(TABLES[1:], chunk_rows=500)
    assert run(config).status == "completed_with_errors"
    with env.pg() as conn:
        conn.execute("ALTER TABLE public.order_lines ALTER COLUMN qty TYPE integer")
    again = run(config)
    assert (again.mode, again.status) == ("resumed", "completed")
    assert env.pg_value("SELECT count(*) FROM public.order_lines") == 1000


def test_reconcile_command_reopens_a_completed_run_that_no_longer_matches(env) -> None:
    """Section 4: a mismatch found by `migrate.py reconcile` makes the run completed_with_errors."""
    env.sf_execute("CREATE TABLE ORDERS AS SELECT SEQ8()::NUMBER(18,0) AS ID FROM TABLE(GENERATOR(ROWCOUNT => 600))")
    path = env.write_config([{"source": "ORDERS"}])
    assert cli(env.env, path).returncode == 0
    with env.pg() as conn:
        conn.execute("DELETE FROM public.orders WHERE id < 10")
    assert cli(env.env, path, "reconcile").returncode == 1
    assert env.pg_rows(f"SELECT status, difference FROM {S}.reconciliation") == [("failed", -10)]
    assert env.pg_value(f"SELECT status FROM {S}.migration_runs") == "completed_with_errors"
    again = cli(env.env, path)
    assert again.returncode == 1 and "resuming run 1" in again.stdout
