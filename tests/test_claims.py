"""Claims, leases and the fence: two workers holding the same chunk can never both commit."""

from __future__ import annotations

import pyarrow as pa
import pytest

from lib import ledger as status
from lib.errors import FenceLostError
from lib.run.orchestrator import start_run
from lib.target import postgres as pg
from lib.typemap import columns_from_description


@pytest.fixture
def planned(env):
    env.sf_execute("CREATE TABLE ITEMS AS SELECT SEQ8()::NUMBER(18,0) AS ID FROM TABLE(GENERATOR(ROWCOUNT => 100))")
    config = env.config([{"source": "ITEMS", "chunking_columns": ["ID"], "chunking_column_types": ["numeric"]}],
                        defaults={"chunk_rows": 40})
    start = start_run(config)
    return env, config, start.run_id


def _columns(env, run_id):
    with env.pg() as conn:
        return columns_from_description(status.table_columns(conn, run_id)[f"{env.sf_database}.PUBLIC.ITEMS"])


def _copy_and_commit(conn, chunk, columns, values):
    batch = pa.record_batch([pa.array(values, pa.int64())], names=["ID"])
    with conn.transaction():
        rows, nbytes = pg.copy_batches(conn, ("public", "items"), columns, [batch])
        status.mark_done(conn, chunk, rows, nbytes)


def test_zombie_worker_cannot_commit_after_its_chunk_is_reclaimed(planned) -> None:
    env, _config, run_id = planned
    columns = _columns(env, run_id)
    with env.pg() as old, env.pg() as new:
        first = status.claim_chunk(old, run_id, "old-worker", lease_seconds=600, max_attempts=5)
        assert first is not None
        # the old worker is alive (holds its liveness lock), so the chunk is not claimable...
        other = status.claim_chunk(new, run_id, "new-worker", lease_seconds=600, max_attempts=5)
        assert other is not None and other.chunk_id != first.chunk_id
        status.release_liveness_lock(new, other)
        with env.pg() as admin:
            admin.execute(f"UPDATE {status.SCHEMA}.migration_chunk_status SET status = 'pending', fence = fence "
                          "WHERE chunk_id = %s", (other.chunk_id,))
            # ...until its lease expires while it is still copying
            admin.execute(f"UPDATE {status.SCHEMA}.migration_chunk_status SET lease_expires_at = now() - interval '1 s' "
                          "WHERE chunk_id = %s", (first.chunk_id,))
        taken = status.claim_chunk(new, run_id, "new-worker", lease_seconds=600, max_attempts=5)
        assert taken is not None and taken.chunk_id == first.chunk_id and taken.fence == first.fence + 1

        with pytest.raises(FenceLostError):
            _copy_and_commit(old, first, columns, [1, 2, 3])
        _copy_and_commit(new, taken, columns, [7, 8])

    assert env.pg_rows("SELECT id FROM public.items ORDER BY id") == [(7,), (8,)]
    row = env.pg_rows(f"SELECT status, worker, fence, rows_copied FROM {status.SCHEMA}.migration_chunk_status "
                      "WHERE chunk_id = %s", (first.chunk_id,))[0]
    assert row == ("done", "new-worker", first.fence + 1, 2)


def test_chunk_of_a_dead_worker_is_reclaimed_at_once(planned) -> None:
    env, _, run_id = planned
    dead = env.pg()
    chunk = status.claim_chunk(dead, run_id, "doomed", lease_seconds=3600, max_attempts=5)
    assert chunk is not None
    dead.close()  # the process died: its connection, and with it the liveness lock, is gone
    with env.pg() as conn:
        again = status.claim_chunk(conn, run_id, "heir", lease_seconds=3600, max_attempts=5)
    assert again is not None and again.chunk_id == chunk.chunk_id and again.fence == chunk.fence + 1


def test_a_chunk_whose_workers_keep_dying_fails_after_max_attempts(planned) -> None:
    env, _, run_id = planned
    first = None
    for _ in range(2):
        conn = env.pg()
        claimed = status.claim_chunk(conn, run_id, "w", lease_seconds=3600, max_attempts=2)
        first = first or claimed
        assert claimed is not None and claimed.chunk_id == first.chunk_id
        conn.close()
    with env.pg() as conn:
        nxt = status.claim_chunk(conn, run_id, "w", lease_seconds=3600, max_attempts=2)
    assert nxt is not None and nxt.chunk_id != first.chunk_id
    state, error = env.pg_rows(f"SELECT status, error FROM {status.SCHEMA}.migration_chunk_status WHERE chunk_id = %s",
                               (first.chunk_id,))[0]
    assert state == "failed" and "worker lost on attempt 2" in error


def test_workers_of_an_abandoned_run_claim_nothing_and_cannot_revive_it(planned) -> None:
    env, _config, run_id = planned
    with env.pg() as conn:
        status.abandon_run(conn, run_id, "superseded by a --no-resume run")
        assert status.claim_chunk(conn, run_id, "late-worker", lease_seconds=60, max_attempts=3) is None
        status.set_run_status(conn, run_id, "completed")
    assert env.pg_value(f"SELECT status FROM {status.SCHEMA}.migration_runs WHERE run_id = %s", (run_id,)) == "abandoned"


def test_a_chunk_whose_backoff_ran_out_after_the_claim_that_found_none_is_still_waited_for(planned) -> None:
    """A worker that claims nothing asks how long until a pending chunk is claimable; a backoff that ran out between
    the two questions must mean "now", not "nothing left" (the worker then stopped and the run ended running)."""
    env, _config, run_id = planned
    table = f"{status.SCHEMA}.migration_chunk_status"
    with env.pg() as conn:
        conn.execute(f"UPDATE {table} SET status = 'done' WHERE run_id = %s AND chunk_no > 0", (run_id,))
        conn.execute(f"UPDATE {table} SET status = 'pending', attempts = 1, retry_at = now() - interval '1 second' "
                     "WHERE run_id = %s AND chunk_no = 0", (run_id,))
        assert status.seconds_until_retry(conn, run_id, max_attempts=3) == 0.0
        conn.execute(f"UPDATE {table} SET retry_at = now() + interval '30 seconds' WHERE run_id = %s", (run_id,))
        assert 29 < status.seconds_until_retry(conn, run_id, max_attempts=3) <= 30
        assert status.seconds_until_retry(conn, run_id, max_attempts=1) is None  # its attempts are used up
        conn.execute(f"UPDATE {table} SET status = 'done' WHERE run_id = %s", (run_id,))
        assert status.seconds_until_retry(conn, run_id, max_attempts=3) is None
