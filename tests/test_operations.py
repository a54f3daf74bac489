"""Dashboard views and on-demand reconciliation, against real runs."""

from __future__ import annotations

from lib import ledger as status
from lib.run.orchestrator import run, start_run
from tests.helpers import cli


def _two_tables(env) -> None:
    env.sf_execute(
        "CREATE TABLE GOOD AS SELECT SEQ8()::NUMBER(18,0) AS ID FROM TABLE(GENERATOR(ROWCOUNT => 3000))",
        "CREATE TABLE BAD AS SELECT SEQ8()::NUMBER(18,0) AS ID, IFF(SEQ8() = 10, 99999, 1)::NUMBER(9,0) AS Q "
        "FROM TABLE(GENERATOR(ROWCOUNT => 1000))",
    )
    with env.pg() as conn:
        conn.execute("CREATE TABLE public.bad (id bigint, q smallint)")


TABLES = [{"source": "GOOD", "chunking_columns": ["ID"], "chunking_column_types": ["numeric"]},
          {"source": "BAD", "chunking_columns": ["ID"], "chunking_column_types": ["numeric"]}]


def test_dashboard_views_tell_the_story_of_a_run(env) -> None:
    _two_tables(env)
    result = run(env.config(TABLES, chunk_rows=500))
    assert result.status == "completed_with_errors"
    s = status.SCHEMA

    summary = env.pg_rows(f"SELECT status, chunks_failed, expected_rows, rows_copied, completed_tables, failed_tables "
                          f"FROM {s}.run_summary")
    assert summary == [("completed_with_errors", 1, 4000, 3500, 1, 1)]
    failed = env.pg_rows(f"SELECT table_name, predicate, attempts FROM {s}.failed_chunks")
    assert len(failed) == 1 and failed[0][0].endswith(".BAD") and failed[0][2] == 1
    reconciliation = dict(env.pg_rows(f"SELECT split_part(table_name, '.', 3), difference FROM {s}.reconciliation"))
    assert reconciliation == {"GOOD": 0, "BAD": -500}
    assert env.pg_value(f"SELECT sum(rows_copied) FROM {s}.throughput_per_minute") == 3500
    assert env.pg_rows(f"SELECT * FROM {s}.stalled_leases") == []
    assert env.pg_rows(f"SELECT * FROM {s}.runs_near_window_end") == []

    with env.pg() as conn:  # the same run, 150 hours old and still unfinished: 18 hours of window left
        conn.execute(f"UPDATE {s}.migration_runs SET status = 'running', started_at = now() - interval '150 hours'")
    assert env.pg_rows(f"SELECT hours_left FROM {s}.runs_near_window_end")[0][0] == 18.0


def test_stalled_leases_show_chunks_whose_owner_stopped_renewing(env) -> None:
    _two_tables(env)
    config = env.config(TABLES[:1], chunk_rows=500)
    start = start_run(config)
    with env.pg() as conn:
        chunk = status.claim_chunk(conn, start.run_id, "hung-worker", lease_seconds=600, max_attempts=3)
        conn.execute(f"UPDATE {status.SCHEMA}.migration_chunk_status SET lease_expires_at = now() - interval '5 minutes' "
                     "WHERE chunk_id = %s", (chunk.chunk_id,))
        assert env.pg_rows(f"SELECT worker, chunk_no FROM {status.SCHEMA}.stalled_leases") == [("hung-worker", chunk.chunk_no)]


def test_reconcile_command_recounts_on_demand_and_stores_the_result(env) -> None:
    env.sf_execute("CREATE TABLE R AS SELECT SEQ8()::NUMBER(18,0) AS ID FROM TABLE(GENERATOR(ROWCOUNT => 800))")
    path = env.write_config([{"source": "R"}])
    assert cli(env.env, path).returncode == 0
    with env.pg() as conn:  # someone deletes rows in the target after the migration
        conn.execute("DELETE FROM public.r WHERE id < 10")

    result = cli(env.env, path, "reconcile")

    assert result.returncode == 1
    assert "source 800, target 790 — MISMATCH" in result.stdout
    assert env.pg_rows(f"SELECT reconcile_status, target_count FROM {status.SCHEMA}.migration_table_status") == [
        ("mismatch", 790)]


def test_status_works_while_a_run_is_going_and_after_it_ended(env) -> None:
    import json
    import time

    from tests.helpers import cli_popen

    env.sf_execute("CREATE TABLE BIGGISH AS SELECT SEQ8()::NUMBER(18,0) AS ID, 'x' || SEQ8() AS V "
                   "FROM TABLE(GENERATOR(ROWCOUNT => 200000))")
    path = env.write_config([{"source": "BIGGISH", "chunking_columns": ["ID"], "chunking_column_types": ["numeric"]}],
                            defaults={"chunk_rows": 2000, "batch_size": 1000, "parallel_threads": 1})
    proc = cli_popen(env.env, path)
    seen_running = None
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        probe = cli(env.env, path, "status", "--json")
        if probe.returncode == 0 and probe.stdout.startswith("{"):
            report = json.loads(probe.stdout)
            if report["status"] == "running" and report["tables"] and 0 < report["tables"][0]["rows_copied"] < 200_000:
                seen_running = report
                break
        time.sleep(0.2)
    proc.communicate(timeout=120)
    assert seen_running is not None, "status could not watch the run from another process"
    assert seen_running["resume_window_hours_left"] > 167

    after = cli(env.env, path, "status")
    assert after.returncode == 0 and "run 1: completed" in after.stdout and "200,000" in after.stdout


def test_status_lists_failed_chunks_with_their_errors(env) -> None:
    _two_tables(env)
    path = env.write_config(TABLES, defaults={"chunk_rows": 500})
    cli(env.env, path)
    report = cli(env.env, path, "status")
    assert "failed: " in report.stdout and "value does not fit the target column type" in report.stdout


def test_cleanup_removes_only_old_abandoned_runs_and_only_with_yes(env) -> None:
    env.sf_execute("CREATE TABLE CL AS SELECT SEQ8()::NUMBER(18,0) AS ID FROM TABLE(GENERATOR(ROWCOUNT => 10))")
    path = env.write_config([{"source": "CL", "truncate_onstart": True}])
    start_run(env.config([{"source": "CL", "truncate_onstart": True}]))  # run 1, left unfinished
    assert cli(env.env, path, "run", "--no-resume").returncode == 0  # run 2 abandons run 1
    with env.pg() as conn:
        conn.execute(f"UPDATE {status.SCHEMA}.migration_runs SET started_at = now() - interval '40 days' WHERE run_id = 1")

    dry = cli(env.env, path, "cleanup")
    assert "run 1 " in dry.stdout and "add --yes" in dry.stdout
    assert env.pg_value(f"SELECT count(*) FROM {status.SCHEMA}.migration_runs") == 2

    real = cli(env.env, path, "cleanup", "--yes")
    assert "deleted the ledger rows of 1 abandoned run(s)" in real.stdout
    assert env.pg_rows(f"SELECT run_id, status FROM {status.SCHEMA}.migration_runs") == [(2, "completed")]
    assert env.pg_value(f"SELECT count(*) FROM {status.SCHEMA}.migration_chunk_status WHERE run_id = 1") == 0
    assert env.pg_value("SELECT count(*) FROM public.cl") == 10
