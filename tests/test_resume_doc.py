"""docs/resume.md: every ```sql block runs as-is against a real ledger, the diagnostic queries show
what they claim to show, and the repairs leave a run that resumes to an exact copy."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from lib import ledger as status
from lib.ledger import schema as ledger_schema
from lib.run.orchestrator import run, start_run

DOC = Path(__file__).resolve().parent.parent / "docs" / "resume.md"
SQL_BLOCK = re.compile(r"^```sql\n(.*?)^```", re.DOTALL | re.MULTILINE)
LABEL = re.compile(r"^--\s*([QR]\d+[a-z]?):")
STEPS = (
    "1. Start and schema migrations", "2. Resume or plan", "3. Planning a table", "4. Claiming a chunk",
    "5. Reading from Snowflake", "6. COPY into PostgreSQL", "7. Commit of rows + done mark",
    "8. Recording a failure", "9. Reconciliation", "9b. Post-load step", "10. Finalizing the run",
)
ORDERS_ROWS = 2000


def sql_blocks() -> list[str]:
    return [m.group(1) for m in SQL_BLOCK.finditer(DOC.read_text())]


def _label(block: str) -> str:
    match = LABEL.match(block)
    assert match, f"every SQL block starts with a '-- Qn:' or '-- Rn:' label:\n{block}"
    return match.group(1)


def _execute(conn: Any, block: str) -> list[list[tuple[Any, ...]]]:
    """Run a block as psql -c would, returning the rows of each statement that returns rows."""
    results = []
    with conn.cursor() as cur:
        cur.execute(block)
        while True:
            if cur.description is not None:
                results.append(cur.fetchall())
            if not cur.nextset():
                break
    return results


def test_doc_covers_every_step_and_its_sql_is_labelled_without_placeholders() -> None:
    text = DOC.read_text()
    for step in STEPS:
        assert f"**{step}" in text, step
    blocks = sql_blocks()
    assert len(blocks) >= 10
    labels = [_label(b) for b in blocks]
    assert len(labels) == len(set(labels)), labels
    for block in blocks:
        code = "\n".join(line.split("--")[0] for line in block.splitlines())
        assert not re.search(r"<[a-z_ ]+>", code, re.IGNORECASE), f"placeholder in:\n{block}"
    assert len(text.splitlines()) <= 275  # 265 before the post-load step and target ownership were added


def test_every_sql_block_runs_against_a_real_ledger_and_repairs_resume_to_an_exact_copy(env) -> None:
    env.sf_execute(
        "CREATE TABLE ORDERS AS SELECT (SEQ8() * 3 + 1)::NUMBER(18,0) AS ID, 'order ' || SEQ8() AS LABEL "
        f"FROM TABLE(GENERATOR(ROWCOUNT => {ORDERS_ROWS}))",
        "CREATE TABLE NARROW AS SELECT SEQ8()::NUMBER(18,0) AS ID, "
        "IFF(SEQ8() = 700, 40000, MOD(SEQ8(), 1000))::NUMBER(9,0) AS QTY FROM TABLE(GENERATOR(ROWCOUNT => 1000))",
    )
    with env.pg() as conn:  # one value of NARROW does not fit: one chunk fails, fatally
        conn.execute("CREATE TABLE public.narrow (id bigint, qty smallint)")
    numeric = {"chunking_columns": ["ID"], "chunking_column_types": ["numeric"]}
    config = env.config([{"source": "ORDERS", **numeric}, {"source": "NARROW", **numeric}], chunk_rows=500)

    run_id = start_run(config).run_id
    owner = env.pg()  # a live worker that holds one ORDERS chunk and never finishes it
    held = status.claim_chunk(owner, run_id, "held-by-test", lease_seconds=3600, max_attempts=3)
    assert held is not None and held.table_name.endswith(".ORDERS")
    first = run(config)
    assert (first.mode, first.status) == ("resumed", "running")
    narrow_rows = env.pg_value("SELECT count(*) FROM public.narrow")
    assert 0 < narrow_rows < 1000

    locker = env.pg()  # a starter holding the start lock of this config
    locker.execute("SELECT pg_advisory_lock(hashtextextended(%s, 7))", (config.fingerprint(),))
    results: dict[str, list[list[tuple[Any, ...]]]] = {}
    with env.pg() as conn:
        for block in sql_blocks():
            label = _label(block)
            try:
                results[label] = _execute(conn, block)
            except Exception as exc:
                raise AssertionError(f"SQL block {label} failed: {exc}\n{block}") from exc

    assert [r[0] for r in results["Q1"][1]] == [v for v, _, _ in ledger_schema.migrations()]
    assert (run_id, locker.info.backend_pid, True) in [r[:3] for r in results["Q2"][0]]
    running = {r[0]: r for r in results["Q4"][0]}
    assert held.chunk_id in running
    _, _, _, worker, fence, _, _, _, lease_expired, owner_pid, *_ = running[held.chunk_id]
    assert (worker, fence, lease_expired, owner_pid) == ("held-by-test", held.fence, False, owner.info.backend_pid)
    assert [r[0].endswith(".NARROW") for r in results["Q5"][1]] == [True]
    assert "value does not fit the target column type" in results["Q5"][1][0][4]
    assert sorted(results["Q6"][1]) == [("public.narrow", True), ("public.orders", True)]
    assert results["R2"][0] == [], "R2 must not end a live owner whose lease is valid"
    assert owner.execute("SELECT 1").fetchone() == (1,)
    # R3b emptied public.orders and reopened all its chunks, the held one included, with a new fence
    assert env.pg_value("SELECT count(*) FROM public.orders") == 0
    assert env.pg_value(f"SELECT fence FROM {status.SCHEMA}.migration_chunk_status WHERE chunk_id = %s",
                        (held.chunk_id,)) == held.fence + 1

    locker.close()
    owner.close()
    second = run(config)

    assert (second.mode, second.run_id) == ("resumed", run_id)
    assert second.status == "completed_with_errors"  # NARROW's bad value fails again, fatally
    by_table = {t["table"].split(".")[-1]: t for t in second.tables}
    assert (by_table["ORDERS"]["status"], by_table["ORDERS"]["reconcile"]) == ("completed", "match")
    assert env.pg_value("SELECT count(*) FROM public.orders") == ORDERS_ROWS
    assert env.pg_value("SELECT count(DISTINCT id) FROM public.orders") == ORDERS_ROWS
    assert env.pg_value("SELECT count(*) FROM public.narrow") == narrow_rows  # nothing copied twice
