"""Clean stops, time budgets, lease renewal and the memory budget."""

from __future__ import annotations

import signal
import time

from lib import ledger as status
from lib.run.orchestrator import run, start_run, work, work_plan
from tests.helpers import cli, cli_popen


def _load(env, rows: int) -> None:
    env.sf_execute(f"CREATE TABLE S AS SELECT SEQ8()::NUMBER(18,0) AS ID, 'text ' || SEQ8() AS T "
                   f"FROM TABLE(GENERATOR(ROWCOUNT => {rows}))")


TABLES = [{"source": "S", "chunking_columns": ["ID"], "chunking_column_types": ["numeric"]}]


def _states(env) -> dict[str, int]:
    try:
        return dict(env.pg_rows(f"SELECT status, count(*) FROM {status.SCHEMA}.migration_chunk_status GROUP BY 1"))
    except Exception:  # noqa: BLE001 - the ledger may not exist yet
        return {}


def test_sigterm_finishes_in_flight_chunks_persists_status_and_the_next_run_resumes(env) -> None:
    _load(env, 200_000)
    path = env.write_config(TABLES, defaults={"chunk_rows": 2000, "batch_size": 1000})
    proc = cli_popen(env.env, path)
    deadline = time.monotonic() + 60
    while _states(env).get("done", 0) < 5:
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=60)[0]

    assert proc.returncode == 130, output
    assert "stop requested" in output
    states = _states(env)
    assert states.get("running", 0) == 0, "in-flight chunks finished (or rolled back) before exit"
    assert 0 < states["done"] < sum(states.values())
    assert env.pg_rows(f"SELECT status FROM {status.SCHEMA}.migration_runs") == [("running",)]
    assert env.pg_value("SELECT count(*) FROM public.s") == env.pg_value(
        f"SELECT sum(rows_copied) FROM {status.SCHEMA}.migration_chunk_status WHERE status = 'done'")

    resumed = cli(env.env, path)
    assert resumed.returncode == 0 and "resuming run 1" in resumed.stdout
    assert env.pg_value("SELECT count(DISTINCT id) FROM public.s") == env.pg_value("SELECT count(*) FROM public.s") == 200_000


def test_time_budget_stops_claiming_and_leaves_the_rest_for_the_next_invocation(env) -> None:
    _load(env, 5000)
    config = env.config(TABLES, chunk_rows=500)
    start = start_run(config)
    plan = work_plan(config, start.run_id, deadline=time.monotonic())  # no time left at all
    stats = work(plan, 2)
    # only the one chunk every invocation copies, so that each loop of a state machine makes progress
    assert stats.chunks_done == 1 and _states(env) == {"pending": 10, "done": 1}
    assert run(config).status == "completed"
