"""Resume: killed mid-table and resumed, the target holds exactly the source rows; the resume
window, --no-resume and truncate_onstart behave as documented."""

from __future__ import annotations

import signal
import time

from lib import ledger as status
from lib.run.orchestrator import run
from tests.helpers import cli, cli_popen, fail_planning_once

BIG_ROWS = 400_000


def _load_big(env) -> None:
    env.sf_execute(
        "CREATE TABLE BIG AS SELECT (SEQ8() * 3 + 1)::NUMBER(18,0) AS ID, "
        "'row ' || SEQ8() AS LABEL, UNIFORM(1, 1000, RANDOM()) * 1.5 AS SCORE "
        f"FROM TABLE(GENERATOR(ROWCOUNT => {BIG_ROWS}))"
    )


def _big_table(**extra) -> list[dict]:
    return [{"source": "BIG", "chunking_columns": ["ID"], "chunking_column_types": ["numeric"], **extra}]


def _chunk_states(env) -> dict[str, int]:
    try:
        rows = env.pg_rows(f"SELECT status, count(*) FROM {status.SCHEMA}.migration_chunk_status GROUP BY 1")
    except Exception:  # noqa: BLE001 - the ledger may not exist yet
        return {}
    return dict(rows)


def test_sigkill_mid_table_then_resume_copies_every_row_exactly_once(env) -> None:
    _load_big(env)
    path = env.write_config(_big_table(), defaults={"chunk_rows": 8000, "batch_size": 4000, "parallel_threads": 2})
    proc = cli_popen(env.env, path)
    deadline = time.monotonic() + 120
    while _chunk_states(env).get("done", 0) < 8:
        assert proc.poll() is None, f"finished before it could be killed: {proc.stdout.read()}"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = _chunk_states(env)
    assert before.get("done", 0) < sum(before.values()), before  # really killed mid-table
    copied_before = env.pg_value("SELECT count(*) FROM public.big")
    assert 0 < copied_before < BIG_ROWS

    result = cli(env.env, path)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "resuming run 1" in result.stdout
    assert env.pg_value("SELECT count(*) FROM public.big") == BIG_ROWS
    assert env.pg_value("SELECT count(DISTINCT id) FROM public.big") == BIG_ROWS
    source_sum = env.sf_rows("SELECT SUM(ID) FROM BIG")[0][0]
    assert env.pg_value("SELECT sum(id) FROM public.big") == source_sum
    assert env.pg_rows(f"SELECT status, total_rows_copied FROM {status.SCHEMA}.migration_runs") == [("completed", BIG_ROWS)]
    assert _chunk_states(env) == {"done": sum(before.values())}


def test_second_run_resumes_with_nothing_to_do_and_no_resume_starts_fresh(env) -> None:
    env.sf_execute("CREATE TABLE SMALL AS SELECT SEQ8()::NUMBER(18,0) AS ID FROM TABLE(GENERATOR(ROWCOUNT => 500))")
    tables = [{"source": "SMALL", "truncate_onstart": True}]
    assert run(env.config(tables)).status == "completed"

    again = run(env.config(tables))
    assert again.mode == "nothing_to_do" and "nothing left to do" in again.message
    assert env.pg_value("SELECT count(*) FROM public.small") == 500

    fresh = run(env.config(tables, no_resume=True))
    assert fresh.mode == "fresh" and fresh.run_id == 2 and fresh.status == "completed"
    assert env.pg_value("SELECT count(*) FROM public.small") == 500  # truncated once, copied again


def test_no_resume_on_a_table_this_config_copied_refuses_a_stale_catch_up_and_says_how_to_copy_again(env) -> None:
    """Keyed (the engine built its primary key) or keyless, a table the config copied is not silently caught up
    under --no-resume; the way the message gives reloads it, changed rows included."""
    env.sf_execute("CREATE TABLE KEYED (ID NUMBER(18,0) PRIMARY KEY, V VARCHAR)",
                   "INSERT INTO KEYED SELECT SEQ8(), 'v' || SEQ8() FROM TABLE(GENERATOR(ROWCOUNT => 300))",
                   "CREATE TABLE LOOSE AS SELECT 'v' || SEQ8() AS V FROM TABLE(GENERATOR(ROWCOUNT => 300))")
    tables = [{"source": "KEYED"}, {"source": "LOOSE"}]
    assert run(env.config(tables)).status == "completed"
    env.sf_execute("UPDATE KEYED SET V = 'changed' WHERE ID < 10", "UPDATE LOOSE SET V = 'changed' WHERE V = 'v1'")

    fresh = run(env.config(tables, no_resume=True))

    assert fresh.status == "completed_with_errors"
    errors = [t["error"] for t in fresh.tables]
    assert all("holds the rows run 1 of this config copied" in e and "--load-mode swap" in e for e in errors), errors
    assert env.pg_value("SELECT count(*) FROM public.keyed WHERE v = 'changed'") == 0  # nothing was written

    reload = run(env.config(tables, no_resume=True, load_mode="swap"))

    assert reload.status == "completed", reload.tables
    assert sorted(env.pg_rows("SELECT id, v FROM public.keyed")) == sorted(
        (int(i), v) for i, v in env.sf_rows("SELECT ID, V FROM KEYED"))
    assert sorted(env.pg_rows("SELECT v FROM public.loose")) == sorted(env.sf_rows("SELECT V FROM LOOSE"))


def test_run_older_than_resume_window_is_not_resumed_and_the_log_says_why(env, caplog) -> None:
    env.sf_execute("CREATE TABLE W AS SELECT SEQ8()::NUMBER(18,0) AS ID FROM TABLE(GENERATOR(ROWCOUNT => 100))")
    tables = [{"source": "W", "truncate_onstart": True}]
    config = env.config(tables)
    first = run(config)
    with env.pg() as conn:  # pretend the run stalled 200 hours ago
        conn.execute(f"UPDATE {status.SCHEMA}.migration_runs SET status = 'running', started_at = now() - interval '200 hours'")

    second = run(env.config(tables))
    assert second.mode == "fresh" and second.run_id != first.run_id
    assert "beyond resume_max_age=168" in caplog.text
    assert env.pg_rows(f"SELECT run_id, status FROM {status.SCHEMA}.migration_runs ORDER BY run_id") == [
        (first.run_id, "abandoned"), (second.run_id, "completed")]

    with env.pg() as conn:
        conn.execute(f"UPDATE {status.SCHEMA}.migration_runs SET status = 'running', started_at = now() - interval '200 hours'"
                     " WHERE run_id = %s", (second.run_id,))
    third = run(env.config(tables, resume_max_age=8760))
    assert third.mode == "resumed" and third.run_id == second.run_id

    with env.pg() as conn:  # a completed run stays completed however old: nothing to redo by accident
        conn.execute(f"UPDATE {status.SCHEMA}.migration_runs SET started_at = now() - interval '900 hours' "
                     "WHERE run_id = %s", (third.run_id,))
    assert run(env.config(tables)).mode == "nothing_to_do"


def test_truncate_onstart_empties_the_target_when_planned_never_on_resume(env) -> None:
    env.sf_execute("CREATE TABLE T AS SELECT SEQ8()::NUMBER(18,0) AS ID FROM TABLE(GENERATOR(ROWCOUNT => 1000))")
    with env.pg() as conn:
        conn.execute("CREATE TABLE public.t (id bigint)")
        conn.execute("INSERT INTO public.t SELECT -g FROM generate_series(1, 50) g")
    tables = [{"source": "T", "truncate_onstart": True, "chunking_columns": ["ID"], "chunking_column_types": ["numeric"]}]
    config = env.config(tables, chunk_rows=100)
    from lib.run.orchestrator import start_run

    start_run(config)  # plans and truncates; nothing copied yet
    assert env.pg_value("SELECT count(*) FROM public.t") == 0
    with env.pg() as conn:  # a row that arrives between plan and resume must survive the resume
        conn.execute("INSERT INTO public.t VALUES (-999)")
    result = run(config)
    assert result.mode == "resumed"
    assert env.pg_value("SELECT count(*) FROM public.t WHERE id = -999") == 1
    assert env.pg_value("SELECT count(*) FROM public.t WHERE id >= 0") == 1000


def test_non_empty_target_without_a_key_or_truncate_fails_that_table_only(env) -> None:
    """A catch-up needs a key to recognise rows that already exist; without one nothing is appended."""
    env.sf_execute("CREATE TABLE A AS SELECT SEQ8()::NUMBER(18,0) AS ID FROM TABLE(GENERATOR(ROWCOUNT => 10))",
                   "CREATE TABLE B AS SELECT SEQ8()::NUMBER(18,0) AS ID FROM TABLE(GENERATOR(ROWCOUNT => 10))")
    with env.pg() as conn:
        conn.execute("CREATE TABLE public.a (id bigint)")
        conn.execute("INSERT INTO public.a VALUES (1)")
    result = run(env.config([{"source": "A"}, {"source": "B"}]))
    by_table = {t["table"].split(".")[-1]: t for t in result.tables}
    assert result.status == "completed_with_errors"
    assert by_table["B"]["status"] == "completed"
    assert "target public.a holds rows and has no primary key or unique index" in by_table["A"]["error"]
    assert "Add merge_key" in by_table["A"]["error"]
    assert env.pg_value("SELECT count(*) FROM public.a") == 1


def test_a_transient_error_planning_the_second_table_under_no_resume_keeps_the_new_run(env, monkeypatch) -> None:
    """The start is retried after the error: the retry must resume the run it created, not abandon it."""
    for name in ("R1", "R2"):
        env.sf_execute(f"CREATE TABLE {name} AS SELECT SEQ8()::NUMBER(18,0) AS ID FROM TABLE(GENERATOR(ROWCOUNT => 500))")
    tables = [{"source": name, "truncate_onstart": True} for name in ("R1", "R2")]
    assert run(env.config(tables, retry_base_seconds=0.1)).status == "completed"
    failed = fail_planning_once(monkeypatch, "R2")
    result = run(env.config(tables, no_resume=True, retry_base_seconds=0.1))

    assert failed and result.run_id == 2 and result.status == "completed"
    assert env.pg_rows(f"SELECT run_id, status FROM {status.SCHEMA}.migration_runs ORDER BY 1") == [
        (1, "completed"), (2, "completed")]
    for name in ("r1", "r2"):
        assert env.pg_value(f"SELECT count(*) FROM public.{name}") == 500
