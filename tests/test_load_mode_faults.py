"""Crash tests for every load mode: the process is SIGKILLed at a fault point (during a read, just before
a chunk's commit, just after it, inside the swap transaction), then the same command resumes. The target
must equal the expected rows exactly, with no duplicate, and the ledger must agree."""

from __future__ import annotations

import signal

import pytest

from lib import ledger as status
from tests.helpers import cli
from tests.test_load_modes import LIVE_DDL, NUMERIC, ROWS, _source, _source_rows, _target_rows

CHUNK_POINTS = ("during_read@2", "before_commit@2", "after_commit@2")
FAST = {"chunk_rows": 500, "parallel_threads": 2, "retry_base_seconds": 0.2, "retry_max_seconds": 1.0}


def _catch_up(env):
    with env.pg() as conn:
        conn.execute("CREATE TABLE public.items (id bigint PRIMARY KEY, name text, price numeric(12,2), updated_at timestamp)")
        conn.execute("INSERT INTO public.items SELECT g, 'kept ' || g, 0, NULL FROM generate_series(0, 1999) g")
    source = _source_rows(env)
    expected = {i: (f"kept {i}", 0, None) if i < 2000 else source[i] for i in range(ROWS)}
    return [{"source": "ITEMS", "source_filter": "ID >= 1500", **NUMERIC}], expected


def _changes(env, tables):
    first = cli(env.env, env.write_config(tables, defaults=FAST))
    assert first.returncode == 0, first.stdout + first.stderr
    env.sf_execute("UPDATE ITEMS SET NAME = 'changed', UPDATED_AT = '2025-01-01' WHERE ID % 7 = 0",
                   "INSERT INTO ITEMS SELECT 50000 + SEQ8(), 'new', 3, '2025-02-01'::TIMESTAMP_NTZ "
                   "FROM TABLE(GENERATOR(ROWCOUNT => 700))")
    return tables, _source_rows(env)


def _merge(env):
    return _changes(env, [{"source": "ITEMS", "insert_only_mode": False, **NUMERIC}])


def _watermark(env):
    return _changes(env, [{"source": "ITEMS", "source_watermark": "UPDATED_AT", **NUMERIC}])


def _swap(env):
    with env.pg() as conn:
        conn.execute(LIVE_DDL)
    return [{"source": "ITEMS", "load_mode": "swap", **NUMERIC}], _source_rows(env)


MODES = {"catch_up": _catch_up, "merge": _merge, "watermark": _watermark, "swap": _swap}
CASES = [(mode, point) for mode in MODES for point in CHUNK_POINTS] + [("swap", "during_swap@1")]


@pytest.mark.parametrize(("mode", "point"), CASES)
def test_a_kill_at_any_point_then_resume_leaves_exactly_the_expected_rows(env, mode, point) -> None:
    _source(env)
    tables, expected = MODES[mode](env)
    path = env.write_config(tables, defaults=FAST)
    runs_before = env.pg_value(f"SELECT count(*) FROM {status.SCHEMA}.migration_runs") if mode in ("merge", "watermark") else 0
    live_before = _target_rows(env) if mode == "swap" else None

    killed = cli({**env.env, "MIGRATION_FAULTS": point}, path)

    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    if live_before is not None:
        assert _target_rows(env) == live_before, "a swap reload touched the live table before swapping it"
    resumed = cli(env.env, path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"resuming run {runs_before + 1}" in resumed.stdout
    assert _target_rows(env) == expected
    assert env.pg_value("SELECT count(*) FROM public.items") == env.pg_value("SELECT count(DISTINCT id) FROM public.items")
    run_id = runs_before + 1
    ledger = env.pg_rows(f"SELECT r.status, t.status, t.reconcile_status FROM {status.SCHEMA}.migration_runs r "
                         f"JOIN {status.SCHEMA}.migration_table_status t USING (run_id) WHERE run_id = %s", (run_id,))
    assert ledger == [("completed", "completed", "match")]
    assert env.pg_value(f"SELECT count(*) FROM {status.SCHEMA}.migration_chunk_status WHERE run_id = %s "
                        "AND status <> 'done'", (run_id,)) == 0
    if mode == "swap":
        assert env.pg_value("SELECT count(*) FROM public.items__backup_1") == len(live_before)


class _Writer:
    """Another writer on the source: updates (bumping the watermark past every earlier one) and inserts rows
    until stopped, from its own Snowflake session."""

    def __init__(self, env) -> None:
        import threading

        self.env, self.stop, self.writes = env, threading.Event(), 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with self.env.sf() as conn, conn.cursor() as cur:
            while not self.stop.is_set():
                n = self.writes
                cur.execute(f"UPDATE ITEMS SET NAME = 'update {n}', UPDATED_AT = DATEADD(second, {n}, "
                            f"'2026-01-01'::TIMESTAMP_NTZ) WHERE ID = {(n * 7919) % ROWS}")
                cur.execute(f"INSERT INTO ITEMS VALUES ({90000 + n}, 'insert {n}', 1, DATEADD(second, {n}, "
                            "'2026-01-01'::TIMESTAMP_NTZ))")
                self.writes += 1

    def __enter__(self) -> _Writer:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join(timeout=60)


@pytest.mark.parametrize("reads", ["snapshot", "live"])
def test_a_watermark_run_killed_while_the_source_is_being_written_resumes_and_the_next_window_is_exact(env, reads):
    _source(env)
    settings = {**FAST, **({"resume_max_age": 24} if reads == "snapshot" else {})}
    path = env.write_config([{"source": "ITEMS", "source_watermark": "UPDATED_AT", **NUMERIC}], defaults=settings)
    assert cli(env.env, path).returncode == 0  # the first window: a plain copy
    env.sf_execute("UPDATE ITEMS SET NAME = 'changed', UPDATED_AT = '2025-01-01' WHERE ID % 2 = 0")  # 3 chunks' worth

    with _Writer(env) as writer:
        killed = cli({**env.env, "MIGRATION_FAULTS": "before_commit@2"}, path)
        resumed = cli(env.env, path)
    assert writer.writes > 0
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    assert resumed.returncode == 0 and "resuming run 2" in resumed.stdout, resumed.stdout + resumed.stderr

    quiet = cli(env.env, path)  # the source at rest: the next window brings everything the writer did

    assert quiet.returncode == 0, quiet.stdout + quiet.stderr
    assert _target_rows(env) == _source_rows(env)
    assert env.pg_value("SELECT count(*) FROM public.items") == env.pg_value("SELECT count(DISTINCT id) FROM public.items")
    verdicts = [r[0] for r in env.pg_rows(f"SELECT reconcile_status FROM {status.SCHEMA}.migration_table_status "
                                          "ORDER BY run_id")]
    assert verdicts[-1] == "match" and (reads == "live" or verdicts == ["match"] * len(verdicts)), verdicts
