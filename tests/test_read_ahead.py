"""Reading ahead: a thread claims its next chunk and starts reading it from Snowflake when the last row of its
current chunk is read, while PostgreSQL still writes that chunk. Every row still arrives exactly once, a thread
that stops gives the chunk it read ahead back untouched, and the connection cap turns it off."""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import pytest

from lib import ledger as status
from lib.plan.budget import reads_ahead
from lib.run.orchestrator import run, start_run, work, work_plan
from tests.helpers import at_fault_point_once

ROWS = 2000
TABLES = [{"source": "ITEMS", "chunking_columns": ["ID"], "chunking_column_types": ["numeric"]}]


def _source(env) -> None:
    env.sf_execute("CREATE TABLE ITEMS AS SELECT SEQ8()::NUMBER(18,0) AS ID, 'item ' || SEQ8() AS NAME "
                   f"FROM TABLE(GENERATOR(ROWCOUNT => {ROWS}))")


def _exact(env) -> None:
    assert env.pg_value("SELECT count(*) FROM public.items") == ROWS
    assert env.pg_value("SELECT count(DISTINCT id) FROM public.items") == ROWS


def _chunks(env) -> list[tuple[Any, ...]]:
    return env.pg_rows(f"SELECT chunk_no, worker, started_at, completed_at, attempts, status "
                       f"FROM {status.SCHEMA}.migration_chunk_status ORDER BY started_at")


def test_a_thread_claims_and_reads_its_next_chunk_before_it_commits_the_last(env) -> None:
    _source(env)

    result = run(env.config(TABLES, chunk_rows=400, parallel_threads=1))

    assert result.status == "completed" and result.tables[0]["reconcile"] == "match", result.tables
    _exact(env)
    chunks = _chunks(env)
    assert len(chunks) >= 5 and all(c[4] == 1 and c[5] == "done" for c in chunks), chunks
    # each chunk after the first was claimed (and its read begun) before the one before it committed
    assert all(later[2] < earlier[3] for earlier, later in pairwise(chunks)), chunks
    # and each says where its time went, within its own time from claim to done
    for phases, seconds in env.pg_rows(f"SELECT phase_seconds, extract(epoch FROM completed_at - started_at) "
                                       f"FROM {status.SCHEMA}.migration_chunk_status"):
        assert set(phases) == {"read_wait", "copy", "after_copy", "ledger"} and min(phases.values()) >= 0, phases
        assert sum(phases.values()) <= float(seconds) + 0.01, (phases, seconds)


@pytest.mark.parametrize("settings", [{"read_ahead": False}, {"max_target_connections": 4}],
                         ids=["turned off", "over the connection cap"])
def test_without_read_ahead_a_thread_claims_its_next_chunk_after_it_committed_the_last(env, settings) -> None:
    _source(env)

    result = run(env.config(TABLES, chunk_rows=400, parallel_threads=1, **settings))

    assert result.status == "completed", result.tables
    _exact(env)
    chunks = _chunks(env)
    assert len(chunks) >= 5
    assert all(later[2] >= earlier[3] for earlier, later in pairwise(chunks)), chunks


def test_a_thread_that_stops_gives_back_the_chunk_it_read_ahead_untouched_and_a_resume_copies_it(env, monkeypatch) -> None:
    _source(env)
    config = env.config(TABLES, chunk_rows=400)
    start = start_run(config)
    plan = work_plan(config, start.run_id)
    plan.read_ahead = True
    # the first chunk has read its last row, so the next one is claimed and being read: then a stop is asked
    stopped = at_fault_point_once(monkeypatch, "before_commit", plan.stop.set)

    work(plan, 1)

    assert stopped
    states = {c[0]: (c[4], c[5], c[1]) for c in _chunks(env)}
    assert sorted(s for _, s, _ in states.values()) == ["done"] + ["pending"] * (len(states) - 1), states
    assert all(attempts == 0 and worker is None for attempts, state, worker in states.values() if state == "pending")
    assert env.pg_value("SELECT count(*) FROM public.items") == 400

    resumed = run(config)
    assert resumed.status == "completed" and resumed.run_id == start.run_id, resumed.tables
    _exact(env)


def test_two_chunks_a_thread_fit_the_connection_cap_or_it_does_not_read_ahead() -> None:
    assert reads_ahead(15, 64) and not reads_ahead(16, 64)  # 4 connections a thread (two chunks), 1 a process
    assert reads_ahead(1, 5) and not reads_ahead(1, 4)


def test_a_run_with_no_more_chunks_than_threads_does_not_try_to_read_ahead(env, monkeypatch) -> None:
    """A run that finds one chunk (a small window, a no-op) opens no second connection to claim a chunk that
    cannot exist: the loop's claim, and the one that finds none left."""
    from lib.run import worker

    env.sf_execute("CREATE TABLE NOTES AS SELECT 'note ' || SEQ8() AS BODY FROM TABLE(GENERATOR(ROWCOUNT => 50))")
    claims = []
    real = worker.ledger.claim_chunk
    monkeypatch.setattr(worker.ledger, "claim_chunk", lambda *a, **k: claims.append(1) or real(*a, **k))

    result = run(env.config([{"source": "NOTES"}], parallel_threads=1))

    assert result.status == "completed" and result.tables[0]["chunks"] == 1, result.tables
    assert len(claims) == 2, claims
    assert env.pg_value("SELECT count(*) FROM public.notes") == 50
