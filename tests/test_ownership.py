"""One target, one loader: two runs (two configs, two table subsets) can never load the same table, and
a worker of an abandoned run can never commit into it."""

from __future__ import annotations

import signal

import pyarrow as pa
import pytest

from lib import ledger as status
from lib.config import load_config
from lib.errors import FenceLostError
from lib.run.orchestrator import run, start_run, work, work_plan
from lib.target import postgres as pg
from lib.typemap import columns_from_description
from tests.helpers import cli

ROWS = 3000


def _load(env) -> None:
    env.sf_execute("CREATE TABLE SHARED AS SELECT SEQ8()::NUMBER(18,0) AS ID FROM TABLE(GENERATOR(ROWCOUNT => 3000))",
                   "CREATE TABLE OTHER AS SELECT SEQ8()::NUMBER(18,0) AS ID FROM TABLE(GENERATOR(ROWCOUNT => 10))")


SHARED = {"source": "SHARED", "chunking_columns": ["ID"], "chunking_column_types": ["numeric"], "truncate_onstart": True}


def test_a_second_run_over_a_target_that_a_live_run_is_loading_is_refused_by_name(env) -> None:
    _load(env)
    first = env.write_config([SHARED, {"source": "OTHER"}], defaults={"chunk_rows": 500, "parallel_threads": 1},
                             filename="first.json")
    killed = cli({**env.env, "MIGRATION_FAULTS": "after_commit@2"}, first)  # interrupted mid-table
    assert killed.returncode == -signal.SIGKILL
    copied = env.pg_value("SELECT count(*) FROM public.shared")
    assert 0 < copied < ROWS

    # the same target through another fingerprint (a subset of the tables); it also says truncate_onstart
    second = run(env.config([SHARED], chunk_rows=500))

    assert second.run_id == 2 and second.status == "completed_with_errors"
    error = second.tables[0]["error"]
    assert "target table public.shared is being loaded by run 1 (source test" in error
    assert "migrate.py abandon --source test --run-id 1" in error
    assert env.pg_value("SELECT count(*) FROM public.shared") == copied, "the refused run must not touch the target"

    resumed = cli(env.env, first)
    assert resumed.returncode == 0 and "resuming run 1" in resumed.stdout, resumed.stdout + resumed.stderr
    assert env.pg_value("SELECT count(*) FROM public.shared") == env.pg_value(
        "SELECT count(DISTINCT id) FROM public.shared") == ROWS


def test_abandon_releases_the_target_for_another_run(env) -> None:
    _load(env)
    path = env.write_config([SHARED, {"source": "OTHER"}], defaults={"chunk_rows": 500}, filename="first.json")
    first = start_run(load_config("test", {}, path))
    blocked = run(env.config([SHARED], chunk_rows=500))
    assert "being loaded by run" in blocked.tables[0]["error"]

    abandoned = cli(env.env, path, "abandon", "--run-id", str(first.run_id), "--yes")
    assert abandoned.returncode == 0, abandoned.stdout + abandoned.stderr
    assert f"run {first.run_id} abandoned" in abandoned.stdout

    again = run(env.config([SHARED], chunk_rows=500))
    assert again.run_id == blocked.run_id and again.status == "completed"
    assert env.pg_value("SELECT count(*) FROM public.shared") == env.pg_value("SELECT count(DISTINCT id) FROM public.shared") == ROWS


def test_a_worker_of_an_abandoned_run_cannot_commit_even_with_its_fence(env) -> None:
    _load(env)
    config = env.config([SHARED], chunk_rows=500)
    first = start_run(config)
    with env.pg() as conn:
        columns = columns_from_description(status.table_columns(conn, first.run_id)[f"{env.sf_database}.PUBLIC.SHARED"])
    with env.pg() as zombie:
        chunk = status.claim_chunk(zombie, first.run_id, "zombie", 600, 3)
        assert chunk is not None
        fresh = start_run(env.config([SHARED], chunk_rows=500, no_resume=True))  # abandons run 1, truncates, re-plans
        assert fresh.run_id != first.run_id
        with pytest.raises(FenceLostError, match=f"run {first.run_id} is abandoned"), zombie.transaction():
            pg.copy_batches(zombie, ("public", "shared"), columns, [pa.record_batch([pa.array([1, 2, 3], pa.int64())],
                                                                                     names=["ID"])])
            status.mark_done(zombie, chunk, 3, 0)
    work(work_plan(config, fresh.run_id), 2)
    assert env.pg_value("SELECT count(*) FROM public.shared") == ROWS
