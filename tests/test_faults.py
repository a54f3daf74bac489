"""Fault injection against the real local stack. Every scenario ends with the target holding exactly
the source rows: same count, no duplicates, same checksum."""

from __future__ import annotations

import random
import signal
import time
from decimal import Decimal

import pytest

from lib import faults
from lib import ledger as status
from lib.run.orchestrator import run
from tests.helpers import cli, cli_popen

ROWS = 20_000
FAST_RETRIES = {"retry_base_seconds": 0.2, "retry_max_seconds": 1.0, "retry_attempts": 20, "lease_seconds": 600}


def _load(env, rows: int = ROWS) -> None:
    env.sf_execute(
        "CREATE TABLE FT AS SELECT (SEQ8() * 7 + 3)::NUMBER(18,0) AS ID, 'payload ' || SEQ8() AS BODY, "
        f"(SEQ8() / 3.0)::NUMBER(14,3) AS AMOUNT FROM TABLE(GENERATOR(ROWCOUNT => {rows}))"
    )


def _tables() -> list[dict]:
    return [{"source": "FT", "chunking_columns": ["ID"], "chunking_column_types": ["numeric"]}]


def _assert_exact_copy(env, rows: int = ROWS) -> None:
    assert env.pg_value("SELECT count(*) FROM public.ft") == rows
    assert env.pg_value("SELECT count(DISTINCT id) FROM public.ft") == rows
    # checksums as text: the stand-in returns SUM() as a float, PostgreSQL as numeric
    source = env.sf_rows("SELECT SUM(ID)::VARCHAR, SUM(AMOUNT)::VARCHAR FROM FT")[0]
    target = env.pg_rows("SELECT sum(id), sum(amount) FROM public.ft")[0]
    assert [Decimal(v) for v in source] == list(target)
    run_status = env.pg_rows(f"SELECT status FROM {status.SCHEMA}.migration_runs ORDER BY run_id DESC LIMIT 1")
    assert run_status == [("completed",)]


def _done_chunks(env) -> int:
    try:
        return env.pg_value(f"SELECT count(*) FROM {status.SCHEMA}.migration_chunk_status WHERE status = 'done'")
    except Exception:  # noqa: BLE001 - the ledger may not exist yet
        return 0


def _wait_for_done(env, proc, at_least: int) -> None:
    deadline = time.monotonic() + 120
    while _done_chunks(env) < at_least:
        assert proc.poll() is None, f"the run ended before the fault: {proc.stdout.read()}"
        assert time.monotonic() < deadline
        time.sleep(0.05)


# Ten trials: each fault point twice. In a trial the migration is killed three times in a row, the
# k-th time it reaches the point (k drawn at random, seeded so a failure can be replayed), then
# resumed without faults: kills land at varied chunks and threads, the resume must mend everything.
_draw = random.Random(20261121)
TRIALS = [(point, [_draw.randint(1, 8) for _ in range(3)]) for point in faults.CHUNK_POINTS for _ in range(2)]


@pytest.mark.parametrize(("point", "nths"), TRIALS)
def test_worker_killed_at_a_random_point_then_resumed_copies_every_row_once(env, point, nths) -> None:
    path = env.write_config(_tables(), defaults={"chunk_rows": 1000, "batch_size": 500, **FAST_RETRIES})
    _load(env)
    for nth in nths:
        killed = cli({**env.env, "MIGRATION_FAULTS": f"{point}@{nth}"}, path)
        assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    assert _done_chunks(env) < env.pg_value(f"SELECT count(*) FROM {status.SCHEMA}.migration_chunk_status")

    resumed = cli(env.env, path)

    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resuming run 1" in resumed.stdout
    _assert_exact_copy(env)


def test_postgres_stopped_and_restarted_mid_run(env) -> None:
    path = env.write_config(_tables(), defaults={"chunk_rows": 500, "batch_size": 250, **FAST_RETRIES})
    _load(env)
    proc = cli_popen(env.env, path)
    _wait_for_done(env, proc, 5)
    env.stack.stop_postgres(mode="immediate")  # like a crash or failover: no goodbye to clients
    time.sleep(2)
    env.stack.start_postgres()
    output = proc.communicate(timeout=150)[0]
    assert proc.returncode == 0, output
    assert "reconnecting" in output or "retrying" in output  # it really noticed the outage
    _assert_exact_copy(env)


def test_snowflake_stand_in_stopped_and_restarted_mid_run(env) -> None:
    path = env.write_config(_tables(), defaults={"chunk_rows": 500, "batch_size": 250, **FAST_RETRIES})
    _load(env)
    port = int(env.env["SNOWFLAKE_PORT"])
    proc = cli_popen(env.env, path)
    _wait_for_done(env, proc, 5)
    env.stack.stop_snowflake(signal.SIGKILL)
    time.sleep(2)
    env.stack.start_snowflake(persist=True, port=port, tied=True)
    output = proc.communicate(timeout=150)[0]
    assert proc.returncode == 0, output
    assert "transient" in output or "retrying" in output
    _assert_exact_copy(env)


def test_a_value_that_does_not_fit_fails_only_its_chunk_with_a_clear_message(env) -> None:
    env.sf_execute("CREATE TABLE NARROW AS SELECT SEQ8()::NUMBER(18,0) AS ID, "
                   "IFF(SEQ8() = 1234, 40000, MOD(SEQ8(), 1000))::NUMBER(9,0) AS QTY "
                   "FROM TABLE(GENERATOR(ROWCOUNT => 3000))")
    with env.pg() as conn:
        conn.execute("CREATE TABLE public.narrow (id bigint, qty smallint)")
    result = run(env.config([{"source": "NARROW", "chunking_columns": ["ID"], "chunking_column_types": ["numeric"]}],
                            chunk_rows=500))
    assert result.status == "completed_with_errors"
    failed = env.pg_rows(f"SELECT predicate, attempts, error FROM {status.SCHEMA}.migration_chunk_status "
                         "WHERE status = 'failed'")
    assert len(failed) == 1
    predicate, attempts, error = failed[0]
    assert attempts == 1, "a value that does not fit is fatal: never retried"
    assert "NARROW" in error and predicate in error and "value does not fit the target column type" in error
    assert env.pg_value("SELECT count(*) FROM public.narrow") == 2500
    assert "1 chunk(s) failed" in result.tables[0]["error"]
