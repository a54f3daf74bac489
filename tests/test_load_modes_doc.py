"""docs/load_modes.md: every SQL statement runs as written against a real ledger through a whole lifecycle
(initial watermark load, an incremental run, a swap reload interrupted inside its transaction, then
resumed), and answers what the document says it answers."""

from __future__ import annotations

import re
import signal
from pathlib import Path

from tests.helpers import cli

DOC = Path(__file__).resolve().parent.parent / "docs" / "load_modes.md"
SQL_BLOCK = re.compile(r"^```sql\n(.*?)^```", re.DOTALL | re.MULTILINE)
LABEL = re.compile(r"^--\s*(L\d+):")
NUMERIC = {"chunking_columns": ["ID"], "chunking_column_types": ["numeric"]}


def statements() -> dict[str, str]:
    out = {}
    for block in SQL_BLOCK.findall(DOC.read_text()):
        label = LABEL.match(block.splitlines()[0].strip())
        assert label, f"a SQL block must start with a '-- Ln:' label:\n{block}"
        code = "\n".join(line for line in block.splitlines() if not line.lstrip().startswith("--"))
        parts = [s.strip() for s in code.split(";") if s.strip()]
        assert len(parts) == 1, f"one statement per block: {label.group(1)}"
        out[label.group(1)] = parts[0]
    return out


def test_doc_has_every_label_and_names_what_users_need() -> None:
    assert list(statements()) == [f"L{n}" for n in range(1, 11)]
    text = DOC.read_text()
    for needed in ("insert_only_mode", "merge_key", "source_watermark", "target_watermark", "watermark_lag",
                   "load_mode", "keep_backups", "migrate.py rollback", "migrate.py cleanup", "ON COMMIT DROP",
                   "IS DISTINCT FROM", "NULL", "--load-mode", "schema_changes", "freeze", "ACCESS EXCLUSIVE",
                   "ADD COLUMN", "ALTER COLUMN"):
        assert needed in text, needed


def test_every_statement_answers_what_the_doc_says_through_a_lifecycle(env) -> None:
    sql = statements()
    env.sf_execute(
        "CREATE TABLE ORDERS (ID NUMBER(18,0) PRIMARY KEY, STATE VARCHAR, UPDATED_AT TIMESTAMP_NTZ)",
        "INSERT INTO ORDERS SELECT SEQ8(), 'new', DATEADD(minute, SEQ8(), '2024-01-01'::TIMESTAMP_NTZ) "
        "FROM TABLE(GENERATOR(ROWCOUNT => 2000))",
    )
    incremental = env.write_config([{"source": "ORDERS", "source_watermark": "UPDATED_AT", **NUMERIC}],
                                   defaults={"chunk_rows": 500}, filename="incremental.json")
    assert cli(env.env, incremental).returncode == 0
    env.sf_execute("UPDATE ORDERS SET STATE = 'paid', UPDATED_AT = '2025-01-01' WHERE ID < 10")
    assert cli(env.env, incremental).returncode == 0

    l1 = env.pg_rows(sql["L1"])
    # the 10 changed rows, and the row at the last window's end read again (inclusive lower end), merged to nothing
    assert [r[1:6] for r in l1] == [("merge", ["id"], 11, 0, 10)]
    l2 = env.pg_rows(sql["L2"])
    assert [(r[0], r[4]) for r in l2] == [(1, "none"), (2, "ledger")] and l2[1][2] == l2[0][3], l2
    assert [(r[8], r[10]) for r in l2] == [("match", None), ("match", None)], l2
    with env.pg() as conn:
        conn.execute("CREATE VIEW public.paid_orders AS SELECT * FROM public.orders WHERE state = 'paid'")
        assert [r[0] for r in conn.execute(sql["L3"]).fetchall()] == ["view paid_orders"]
        conn.execute("DROP VIEW public.paid_orders")
    assert env.pg_rows(sql["L3"]) == []

    reload = env.write_config([{"source": "ORDERS", "load_mode": "swap", **NUMERIC}],
                              defaults={"chunk_rows": 500}, filename="reload.json")
    killed = cli({**env.env, "MIGRATION_FAULTS": "during_swap@1"}, reload)
    assert killed.returncode == -signal.SIGKILL
    assert [(r[0], r[1], r[4]) for r in env.pg_rows(sql["L4"])] == [("shadow", "public.orders__shadow_3", "loading")]
    assert [r[:2] for r in env.pg_rows(sql["L5"])] == [(f"{env.sf_database}.PUBLIC.ORDERS", "swap")]
    l6 = env.pg_rows(sql["L6"])
    assert [(r[1], r[2], r[3], r[7]) for r in l6] == [("swap", "target", 2000, "match")]

    assert cli(env.env, reload).returncode == 0
    l4 = env.pg_rows(sql["L4"])
    assert [(r[0], r[1], r[4], r[6]) for r in l4] == [("backup", "public.orders__backup_3", "kept", True)]
    assert env.pg_rows(sql["L5"]) == []
    assert env.pg_value("SELECT count(*) FROM public.orders WHERE state = 'paid'") == 10


def test_the_schema_change_statements_show_what_changed_and_what_a_person_must_run(env) -> None:
    sql = statements()
    env.sf_execute(
        "CREATE TABLE ORDERS (ID NUMBER(18,0) PRIMARY KEY, STATE VARCHAR(10), AMOUNT NUMBER(10,2), NOTE VARCHAR(40), "
        "UPDATED_AT TIMESTAMP_NTZ)",
        "INSERT INTO ORDERS SELECT SEQ8(), 'new', SEQ8() / 4, 'n', DATEADD(minute, SEQ8(), '2024-01-01'::TIMESTAMP_NTZ) "
        "FROM TABLE(GENERATOR(ROWCOUNT => 300))")
    incremental = env.write_config([{"source": "ORDERS", "source_watermark": "UPDATED_AT", **NUMERIC}])
    assert cli(env.env, incremental).returncode == 0
    env.sf_execute("ALTER TABLE ORDERS ADD COLUMN CHANNEL VARCHAR(20)", "UPDATE ORDERS SET CHANNEL = 'web'",
                   "ALTER TABLE ORDERS ALTER COLUMN STATE SET DATA TYPE VARCHAR(30)", "ALTER TABLE ORDERS DROP COLUMN NOTE")
    assert cli(env.env, incremental).returncode == 0
    assert env.pg_value("SELECT count(*) FROM public.orders WHERE channel = 'web'") == 300, "every row filled"

    assert [r[:5] + r[6:] for r in env.pg_rows(sql["L7"])] == [
        (2, "channel", "added", None, "varchar(20)", True),
        (2, "note", "dropped", "character varying(40)", None, False),
        (2, "state", "widened", "character varying(10)", "varchar(30)", True)]
    assert env.pg_rows(sql["L8"]) == []

    env.sf_execute("ALTER TABLE ORDERS ALTER COLUMN AMOUNT SET DATA TYPE NUMBER(10,4)")
    assert cli(env.env, incremental).returncode != 0
    refused = env.pg_rows(sql["L8"])
    assert [r[1] for r in refused] == ["amount"] and "not a lossless widening" in refused[0][3], refused
    with env.pg() as conn:  # every amount fits six integer digits: the statement runs as given
        conn.execute(refused[0][2])
    assert cli(env.env, incremental).returncode == 0
    assert env.pg_rows(sql["L8"]) == []


def test_the_deletes_statement_shows_each_pass_and_a_refused_one(env) -> None:
    sql = statements()
    env.sf_execute("CREATE TABLE ORDERS (ID NUMBER(18,0) PRIMARY KEY, STATE VARCHAR)",
                   "INSERT INTO ORDERS SELECT SEQ8(), 'new' FROM TABLE(GENERATOR(ROWCOUNT => 1000))")
    path = env.write_config([{"source": "ORDERS", "insert_only_mode": False, "deletes": "hard", **NUMERIC}],
                            defaults={"chunk_rows": 500})
    assert cli(env.env, path).returncode == 0
    assert env.pg_rows(sql["L9"]) == []  # the first copy started the target: nothing to delete
    env.sf_execute("DELETE FROM ORDERS WHERE ID < 10")
    assert cli(env.env, path).returncode == 0
    passes = env.pg_rows(sql["L9"])
    assert [(r[2], r[3], r[4], r[5], r[6], r[7], r[9]) for r in passes] == [("hard", 1, 1, 10, 0, 1000, None)]
    env.sf_execute("DELETE FROM ORDERS WHERE ID < 500")
    assert cli(env.env, path).returncode != 0
    refused = env.pg_rows(sql["L9"])[0]
    assert refused[5] == 0 and "would remove 490 of its 990 rows" in refused[9]
    assert env.pg_value("SELECT count(*) FROM public.orders") == 990


def test_the_pattern_statement_shows_what_each_run_matched(env) -> None:
    sql = statements()
    for name in ("A_ONE", "A_TWO", "B_ONE"):
        env.sf_execute(f"CREATE TABLE {name} AS SELECT SEQ8()::NUMBER(18,0) AS ID FROM TABLE(GENERATOR(ROWCOUNT => 10))")
    path = env.write_config([{"source": "PUBLIC.A_*"}])
    assert cli(env.env, path).returncode == 0
    env.sf_execute("CREATE TABLE A_THREE AS SELECT 1::NUMBER(18,0) AS ID")
    assert cli(env.env, path).returncode == 0
    assert [(r[0], r[1], r[2], r[3]) for r in env.pg_rows(sql["L10"])] == [
        (2, "completed", ["PUBLIC.A_*"], 1), (1, "completed", ["PUBLIC.A_*"], 2)]
