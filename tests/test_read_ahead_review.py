"""Hostile review of reading ahead (commit 43ef0ac): a thread claims its next chunk on a second lane while it
still writes the last one. test_finding_* failed when written (a chunk read ahead spent its attempt when its lease
lapsed during a slow commit, or when PostgreSQL restarted under the chunk being written); they pass since such a
chunk is given back (Worker._still_held). test_held_* tried to break something and could not."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from lib import faults
from lib import ledger as status
from lib.run.orchestrator import run
from tests.helpers import at_fault_point_once

ROWS = 2000
TABLES = [{"source": "ITEMS", "chunking_columns": ["ID"], "chunking_column_types": ["numeric"]}]


def _source(env, rows: int = ROWS) -> None:
    env.sf_execute("CREATE TABLE ITEMS AS SELECT SEQ8()::NUMBER(18,0) AS ID, 'item ' || SEQ8() AS NAME "
                   f"FROM TABLE(GENERATOR(ROWCOUNT => {rows}))")


def _exact(env, rows: int = ROWS) -> None:
    assert env.pg_value("SELECT count(*) FROM public.items") == rows
    assert env.pg_value("SELECT count(DISTINCT id) FROM public.items") == rows


def _chunks(env) -> list[tuple[Any, ...]]:
    return env.pg_rows(f"SELECT chunk_no, status, attempts, error FROM {status.SCHEMA}.migration_chunk_status "
                       "ORDER BY chunk_no")


def test_finding_a_slow_commit_of_one_chunk_fails_the_chunk_read_ahead_behind_it(env, monkeypatch, caplog) -> None:
    """The chunk read ahead is kept alive only by progress ticks; while the current chunk commits slowly (here
    longer than lease_seconds, in Python after its last batch) nothing ticks, so the read-ahead chunk, which
    nobody has started writing, is given up and its only attempt is spent: the run ends with a failed chunk.
    Without reading ahead the same run completes (the slow chunk itself commits: nobody took it)."""
    _source(env)
    config = env.config(TABLES, chunk_rows=400, parallel_threads=1, lease_seconds=2, max_attempts=1,
                        retry_base_seconds=0.1, retry_max_seconds=0.2)
    slow = at_fault_point_once(monkeypatch, "before_commit", lambda: time.sleep(4))

    result = run(config)

    assert slow
    chunks = _chunks(env)
    assert result.status == "completed" and all(c[1] == "done" and c[2] == 1 for c in chunks), (result.status, chunks)
    _exact(env)
    # the slow chunk's keeper, seeing the next chunk's ticks, found it committed by its own thread: no alarm
    assert "another worker took the chunk over" not in caplog.text


class _OpenConnections:
    """The PostgreSQL connections the engine holds open, counted as it opens and closes them (a server-side count
    would also see a backend still exiting after its client closed it, on a busy machine)."""

    def __init__(self, monkeypatch) -> None:
        import psycopg

        self.open: set[int] = set()
        self.peak = 0
        self._lock = threading.Lock()
        real_connect, real_close = psycopg.connect, psycopg.Connection.close

        def connect(*args: Any, **kwargs: Any) -> Any:
            conn = real_connect(*args, **kwargs)
            with self._lock:
                self.open.add(id(conn))
                self.peak = max(self.peak, len(self.open))
            return conn

        def close(conn: Any) -> None:
            real_close(conn)
            with self._lock:
                self.open.discard(id(conn))

        monkeypatch.setattr(psycopg, "connect", connect)
        monkeypatch.setattr(psycopg.Connection, "close", close)


def _server_connections(env) -> int:
    """Other sessions on the test's database, once exiting backends are gone (at most 10 s)."""
    deadline = time.monotonic() + 10
    while True:
        left = env.pg_value("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                            "AND pid <> pg_backend_pid()")
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


def test_held_two_threads_reading_ahead_stay_within_max_target_connections_and_leave_none_open(env, monkeypatch) -> None:
    _source(env, 4000)
    config = env.config(TABLES, chunk_rows=400, parallel_threads=2, max_target_connections=9, lease_seconds=3)
    real = faults.maybe_crash
    # every commit waits a little: the lease keepers (who connect at their first renewal) are all connected
    monkeypatch.setattr(faults, "maybe_crash", lambda point: (time.sleep(1.2) if point == "before_commit" else None,
                                                              real(point)))
    held = _OpenConnections(monkeypatch)
    before = set(threading.enumerate())  # an earlier test in this process may have left a stuck read behind

    result = run(config)

    assert result.status == "completed"
    _exact(env, 4000)
    assert held.peak <= 9, held.peak
    assert held.peak >= 7, "the run did not overlap chunks: the test proves nothing"
    assert not held.open, f"{len(held.open)} connection(s) left open after the run"
    assert _server_connections(env) == 0
    assert not [t.name for t in set(threading.enumerate()) - before
                if t.name.startswith(("lease-", "prefetch")) and t.is_alive()]


def _terminate_others(env) -> None:
    env.pg_rows("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid()")


def test_finding_a_postgres_outage_while_writing_one_chunk_also_spends_the_attempt_of_the_chunk_read_ahead(
        env, monkeypatch) -> None:
    """Every worker connection is dropped (a PostgreSQL restart or failover) while chunk 0 commits and chunk 1 is
    read ahead. Chunk 0 fails its attempt: it was being written. Chunk 1 had only been claimed and read; its
    lane's dead connection is used as is for its transaction, so it fails too. With max_attempts 1 the outage
    fails two chunks a thread instead of one."""
    _source(env)
    config = env.config(TABLES, chunk_rows=400, parallel_threads=1, max_attempts=1, retry_base_seconds=0.1,
                        retry_max_seconds=0.2, max_outage_seconds=30)
    dropped = at_fault_point_once(monkeypatch, "before_commit", lambda: _terminate_others(env))

    result = run(config)

    assert dropped
    failed = [c for c in _chunks(env) if c[1] != "done"]
    assert [c[0] for c in failed] == [0], failed
    assert result.status == "completed_with_errors"


def _chunk_read(lo: int):
    return lambda sql: sql.startswith('SELECT "ID", "NAME" FROM') and "LIMIT" not in sql and f">= '{lo}'" in sql


def test_held_a_stop_while_the_chunk_read_ahead_never_answers_gives_it_back_promptly(env, sf_proxy, monkeypatch) -> None:
    from lib.run.orchestrator import start_run, work, work_plan

    _source(env)
    config = env.config(TABLES, chunk_rows=400, parallel_threads=1, lease_seconds=600,
                        snowflake={"port": str(sf_proxy.port), "network_timeout": 600})
    stall = _chunk_read(400)
    sf_proxy.stall = lambda sql: stall(sql) and not sf_proxy.stalled
    start = start_run(config)
    plan = work_plan(config, start.run_id)
    plan.read_ahead = True
    stopped = at_fault_point_once(monkeypatch, "before_commit", plan.stop.set)
    before = {t.ident for t in threading.enumerate()}

    began = time.monotonic()
    stats = work(plan, 1)
    took = time.monotonic() - began

    assert stopped and sf_proxy.stalled, "the read ahead was not the stalled one"
    assert took < 15, f"stopping took {took:.1f}s"
    assert not stats.errors, stats.errors
    states = {c[0]: c[1:3] for c in _chunks(env)}
    assert states[0] == ("done", 1) and all(s == ("pending", 0) for n, s in states.items() if n), states
    assert env.pg_value("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                        "AND pid <> pg_backend_pid()") == 0
    # no worker, lease keeper or second prefetcher is left (the stuck read's own thread ends with its read)
    left = [t.name for t in threading.enumerate() if t.ident not in before and t.is_alive()]
    assert not [n for n in left if n.startswith(("worker-", "lease-"))] and left.count("prefetch") <= 1, left

    sf_proxy.released.set()
    sf_proxy.stall = None
    resumed = run(config)
    assert resumed.status == "completed", resumed.tables
    _exact(env)


@pytest.mark.parametrize("kind", ["fatal", "transient", "ahead_read"])
def test_held_the_chunk_being_written_fails_while_the_next_is_read_ahead(env, monkeypatch, kind) -> None:
    """fatal / transient: chunk 0 fails at its commit while chunk 1 is read ahead. ahead_read: the read of the
    chunk read ahead (chunk 1) fails once in Snowflake."""
    from lib.errors import FatalError, TransientError
    from lib.source.snowflake import SnowflakeSource

    _source(env)
    config = env.config(TABLES, chunk_rows=400, parallel_threads=1, max_attempts=1 if kind == "fatal" else 2,
                        retry_base_seconds=0.1, retry_max_seconds=0.2)
    failed: list[str] = []
    if kind == "ahead_read":
        real_read = SnowflakeSource.read

        def read(self, table, columns, bounds, *args, **kwargs):
            if ">= 400 " in bounds.describe() and not failed:
                failed.append(bounds.describe())

                def broken():
                    raise TransientError("injected: the read ahead's query failed")
                    yield

                return broken()
            return real_read(self, table, columns, bounds, *args, **kwargs)

        monkeypatch.setattr(SnowflakeSource, "read", read)
    else:
        error = FatalError("injected: a value that does not fit") if kind == "fatal" else TransientError("injected blip")

        def fail() -> None:
            raise error

        failed = at_fault_point_once(monkeypatch, "before_commit", fail)

    result = run(config)

    assert failed
    chunks = _chunks(env)
    if kind == "fatal":
        assert result.status == "completed_with_errors"
        assert [c[:3] for c in chunks if c[1] != "done"] == [(0, "failed", 1)], chunks
        assert all(c[2] == 1 for c in chunks), chunks
        assert env.pg_value("SELECT count(*) FROM public.items") == ROWS - 400
        assert env.pg_value("SELECT count(*) FROM public.items WHERE id < 400") == 0
    else:
        assert result.status == "completed", chunks
        assert [(c[0], c[2]) for c in chunks if c[2] != 1] == [(0 if kind == "transient" else 1, 2)], chunks
        assert all(c[1] == "done" for c in chunks)
        _exact(env)


def test_held_threads_lowered_mid_run_give_back_their_read_ahead_chunk_with_its_attempt(env, monkeypatch) -> None:
    from lib.run.orchestrator import start_run, work, work_plan

    _source(env, 4000)
    config = env.config(TABLES, chunk_rows=250, parallel_threads=2)
    start = start_run(config)
    plan = work_plan(config, start.run_id)
    plan.read_ahead = True

    def lower() -> None:  # what plan.observe does when a measured part outgrows the memory budget
        plan.threads = 1

    lowered = at_fault_point_once(monkeypatch, "before_commit", lower)

    stats = work(plan, 2)

    assert lowered and not stats.errors, stats.errors
    chunks = _chunks(env)
    assert all(c[1] == "done" and c[2] == 1 for c in chunks), chunks
    _exact(env, 4000)
    assert env.pg_value("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                        "AND pid <> pg_backend_pid()") == 0


def test_held_one_thread_killed_at_every_chunk_point_in_turn_then_resumed_copies_every_row_once(env) -> None:
    import signal

    from tests.helpers import cli

    _source(env, 6000)
    path = env.write_config(TABLES, defaults={"chunk_rows": 500, "batch_size": 200, "parallel_threads": 1,
                                              "retry_base_seconds": 0.2, "retry_max_seconds": 0.5})
    # with one thread every claim after the first of a process is a read ahead (after_claim@2 and @3 are)
    for point, nth in [("after_claim", 2), ("during_read", 3), ("during_copy", 4), ("after_claim", 3),
                       ("before_commit", 2), ("after_commit", 2)]:
        killed = cli({**env.env, "MIGRATION_FAULTS": f"{point}@{nth}"}, path)
        assert killed.returncode == -signal.SIGKILL, (point, killed.stdout + killed.stderr)
    done = env.pg_value(f"SELECT count(*) FROM {status.SCHEMA}.migration_chunk_status WHERE status = 'done'")
    assert done < 12

    resumed = cli(env.env, path)

    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    _exact(env, 6000)
    chunks = env.pg_rows(f"SELECT chunk_no, status, rows_copied, expected_rows FROM {status.SCHEMA}.migration_chunk_status")
    assert all(c[1] == "done" and c[2] == c[3] for c in chunks), chunks
    assert env.pg_value(f"SELECT status FROM {status.SCHEMA}.migration_runs") == "completed"


def test_held_a_swap_reload_killed_while_reading_ahead_then_resumed_holds_the_source_exactly(env) -> None:
    import signal

    from tests.helpers import cli

    _source(env, 3000)
    assert run(env.config(TABLES, chunk_rows=500)).status == "completed"
    env.sf_execute("UPDATE ITEMS SET NAME = 'changed ' || ID WHERE ID % 3 = 0", "DELETE FROM ITEMS WHERE ID % 7 = 0")
    swap = [{**TABLES[0], "load_mode": "swap"}]
    path = env.write_config(swap, defaults={"chunk_rows": 250, "batch_size": 100, "parallel_threads": 1},
                            filename="swap.json")
    for point in ("after_claim@2", "before_commit@3"):
        killed = cli({**env.env, "MIGRATION_FAULTS": point}, path)
        assert killed.returncode == -signal.SIGKILL, (point, killed.stdout + killed.stderr)

    resumed = cli(env.env, path)

    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    source = {int(i): n for i, n in env.sf_rows("SELECT ID, NAME FROM ITEMS")}
    target = dict(env.pg_rows("SELECT id, name FROM public.items"))
    assert env.pg_value("SELECT count(*) FROM public.items") == len(source)
    assert target == source
