"""Dashboard views and on-demand reconciliation, against real runs."""

from __future__ import annotations

from lib import status
from lib.orchestrator import run, start_run
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
