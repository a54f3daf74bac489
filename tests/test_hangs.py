"""A worker that hangs is never waited for: a lease is renewed only while its copy makes progress, and a
chunk stuck in a Snowflake read that never answers, or on a PostgreSQL lock, is given up within about
`lease_seconds` and copied again, exactly once."""

from __future__ import annotations

import threading
import time

from lib import ledger as status
from lib.ledger.lease import LeaseKeeper, Progress
from lib.run.orchestrator import run, start_run

ROWS = 3000
LEASE = 3
HANG_RETRIES = {"lease_seconds": LEASE, "retry_base_seconds": 0.2, "retry_max_seconds": 0.5, "max_attempts": 10,
                "parallel_threads": 1, "chunk_rows": 1000, "batch_size": 250}


def _load(env) -> None:
    env.sf_execute("CREATE TABLE HANG AS SELECT SEQ8()::NUMBER(18,0) AS ID, 'body ' || SEQ8() AS BODY "
                   f"FROM TABLE(GENERATOR(ROWCOUNT => {ROWS}))")


TABLES = [{"source": "HANG", "chunking_columns": ["ID"], "chunking_column_types": ["numeric"]}]


def _assert_exactly_once(env) -> None:
    assert env.pg_value("SELECT count(*) FROM public.hang") == ROWS
    assert env.pg_value("SELECT count(DISTINCT id) FROM public.hang") == ROWS
    assert env.pg_value(f"SELECT status FROM {status.SCHEMA}.migration_runs") == "completed"


def _lease_expiry(env, chunk_id: int):
    return env.pg_value(f"SELECT lease_expires_at FROM {status.SCHEMA}.migration_chunk_status WHERE chunk_id = %s",
                        (chunk_id,))


def test_the_lease_is_renewed_only_while_the_copy_makes_progress(env) -> None:
    _load(env)
    config = env.config(TABLES, defaults=HANG_RETRIES)
    run_id = start_run(config).run_id
    lost: list[str] = []
    with env.pg() as one, env.pg() as other:  # two workers, each holding its chunk's liveness lock
        moving = status.claim_chunk(one, run_id, "moving", LEASE, 3)
        stuck = status.claim_chunk(other, run_id, "stuck", LEASE, 3)
    assert moving.chunk_id != stuck.chunk_id
    claimed_until = _lease_expiry(env, stuck.chunk_id)
    progress, idle = Progress(), Progress()
    with LeaseKeeper(config.postgres_connect_args(), moving, LEASE, progress) as keeper, \
            LeaseKeeper(config.postgres_connect_args(), stuck, LEASE, idle, lost.append) as idle_keeper:
        for _ in range(int(LEASE * 1.7 / 0.1)):
            progress.tick()
            time.sleep(0.1)
        assert idle_keeper.lost.wait(LEASE)  # given up within about one lease
        assert not keeper.lost.is_set() and keeper.renewals >= 2
    assert lost == [f"no progress for {LEASE}s (lease_seconds)"]
    assert _lease_expiry(env, stuck.chunk_id) == claimed_until, "a copy without progress must not renew its lease"
    assert _lease_expiry(env, moving.chunk_id) > claimed_until


def test_a_snowflake_read_that_never_answers_is_given_up_and_copied_again_once(env, sf_proxy) -> None:
    _load(env)
    # a chunk's read (not the planning sample of the same columns, which has a LIMIT)
    sf_proxy.stall = lambda sql: sql.startswith('SELECT "ID", "BODY" FROM') and "LIMIT" not in sql and not sf_proxy.stalled
    config = env.config(TABLES, defaults=HANG_RETRIES, snowflake={"port": str(sf_proxy.port), "network_timeout": 600})
    started = time.monotonic()

    result = run(config)

    assert result.status == "completed"
    assert time.monotonic() - started < 60, "the stuck read held the run far longer than a lease"
    _assert_exactly_once(env)
    assert len(sf_proxy.stalled) == 1
    stalled_chunk = env.pg_rows(f"SELECT chunk_no, attempts, fence, rows_copied FROM {status.SCHEMA}.migration_chunk_status "
                                "WHERE attempts > 1")
    assert len(stalled_chunk) == 1 and stalled_chunk[0][1:3] == (2, 2), stalled_chunk
    reads = [s for s in sf_proxy.seen if s.startswith('SELECT "ID", "BODY" FROM')]
    assert reads.count(sf_proxy.stalled[0]) == 2  # the same chunk's read, sent again after the lease was given up
    assert any(p.startswith("/queries/v1/abort-request") for p in sf_proxy.paths), "the stuck query was not cancelled"


def test_a_chunk_stuck_on_a_postgres_lock_is_given_up_and_copied_again_once(env) -> None:
    _load(env)
    config = env.config(TABLES, defaults={**HANG_RETRIES, "lock_timeout_seconds": 0})  # only the lease frees it
    start_run(config)
    locker = env.pg()
    locker.execute("BEGIN")
    locker.execute("LOCK TABLE public.hang IN ACCESS EXCLUSIVE MODE")
    release = threading.Timer(LEASE * 2 + 1, lambda: locker.execute("COMMIT"))
    release.start()
    try:
        result = run(config)
    finally:
        release.join()
        locker.close()

    assert result.status == "completed"
    _assert_exactly_once(env)
    attempts = env.pg_value(f"SELECT max(attempts) FROM {status.SCHEMA}.migration_chunk_status")
    assert attempts >= 2, "the chunk waited for the lock instead of being given up"
