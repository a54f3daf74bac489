"""The ledger never stops at an integer boundary: chunk ids and fences past 2^15, 2^31 and 2^32 claim, hold
their liveness lock and commit; a claim's cost does not grow with the ledger's size."""

from __future__ import annotations

import json

import pytest

from lib import ledger as status
from lib.ledger import chunks
from lib.ledger import schema as ledger_schema
from lib.run.orchestrator import run, start_run

NUMERIC = {"chunking_columns": ["ID"], "chunking_column_types": ["numeric"]}


def _items(env, rows: int = 600) -> None:
    env.sf_execute(f"CREATE TABLE ITEMS AS SELECT SEQ8()::NUMBER(18,0) AS ID, 'v' || SEQ8() AS V "
                   f"FROM TABLE(GENERATOR(ROWCOUNT => {rows}))")


@pytest.mark.parametrize("first_chunk_id", [2**15 - 2, 2**31 - 2, 2**32 - 2, 2**53 - 2])
def test_chunk_ids_and_fences_past_every_integer_boundary_are_claimed_and_committed(env, first_chunk_id) -> None:
    _items(env)
    with env.pg() as conn:
        ledger_schema.apply_migrations(conn)
        conn.execute(f"ALTER TABLE {status.SCHEMA}.migration_chunk_status ALTER COLUMN chunk_id "
                     f"RESTART WITH {first_chunk_id}")
    config = env.config([{"source": "ITEMS", **NUMERIC}], chunk_rows=100)
    start = start_run(config)
    with env.pg() as conn:  # fences at each boundary too: the next claim adds one
        for fence, parity in ((2**15 - 1, 0), (2**31 - 1, 1)):
            conn.execute(f"UPDATE {status.SCHEMA}.migration_chunk_status SET fence = %s WHERE chunk_no %% 3 = %s",
                         (fence, parity))
        conn.execute(f"UPDATE {status.SCHEMA}.migration_chunk_status SET fence = %s WHERE chunk_no %% 3 = 2",
                     (2**63 - 10,))
        ids = [r[0] for r in conn.execute(f"SELECT chunk_id FROM {status.SCHEMA}.migration_chunk_status").fetchall()]
    assert min(ids) == first_chunk_id and max(ids) > first_chunk_id + 2, "the plan must span the boundary"

    result = run(config)

    assert result.status == "completed", result.tables
    assert result.run_id == start.run_id
    assert env.pg_value("SELECT count(DISTINCT id) FROM public.items") == 600
    assert env.pg_value("SELECT count(*) FROM public.items") == 600


def test_a_claimed_chunk_holds_its_liveness_lock_whatever_its_id_and_fence(env) -> None:
    _items(env, 100)
    with env.pg() as conn:
        ledger_schema.apply_migrations(conn)
        conn.execute(f"ALTER TABLE {status.SCHEMA}.migration_chunk_status ALTER COLUMN chunk_id RESTART WITH {2**40}")
    config = env.config([{"source": "ITEMS", **NUMERIC}], chunk_rows=1000)
    run_id = start_run(config).run_id
    with env.pg() as conn:
        conn.execute(f"UPDATE {status.SCHEMA}.migration_chunk_status SET fence = %s", (2**62,))
    with env.pg() as worker, env.pg() as other:
        chunk = status.claim_chunk(worker, run_id, "w", lease_seconds=600, max_attempts=3)
        assert chunk is not None and chunk.chunk_id == 2**40 and chunk.fence == 2**62 + 1
        pid = worker.info.backend_pid
        held = other.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = %s AND classid = %s",
                             (pid, status.CHUNK_LOCK_CLASS)).fetchone()
        assert held == (1,)
        # alive: nobody else can take it while its lease runs (the plan's NULL-key chunk is claimed instead)
        second = status.claim_chunk(other, run_id, "x", lease_seconds=600, max_attempts=3)
        assert second is not None and second.chunk_id != chunk.chunk_id
        status.release_liveness_lock(worker, chunk)
        worker.close()
        # its worker gone: the chunk is claimable at once, with the next fence
        again = status.claim_chunk(other, run_id, "x", lease_seconds=600, max_attempts=3)
        assert again is not None and (again.chunk_id, again.fence) == (2**40, 2**62 + 2)


def _claim_buffers(conn, run_id: int) -> int:
    """Shared buffers a claim's selection of the next chunk touches (EXPLAIN ANALYZE, rolled back)."""
    with conn.transaction(force_rollback=True):
        plan = conn.execute(
            f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) SELECT chunk_id {chunks._CLAIMABLE} AND attempts < 3 "
            "ORDER BY chunk_id LIMIT 1 FOR UPDATE SKIP LOCKED", {"run_id": run_id}).fetchone()[0]
    top = (plan if isinstance(plan, list) else json.loads(plan))[0]["Plan"]
    return int(top.get("Shared Hit Blocks", 0)) + int(top.get("Shared Read Blocks", 0))


def test_a_claim_costs_the_same_in_a_ledger_of_hundreds_of_thousands_of_chunks(env) -> None:
    """The claim walks only claimable chunks: half-way through a run of 300,000 chunks it touches about as many
    buffers as in a run of ten (the primary key walk it replaced read 20,000 buffers at 2,000,000 chunks)."""
    with env.pg() as conn:
        ledger_schema.apply_migrations(conn)
        s = status.SCHEMA
        costs = {}
        for run_id, done, pending in ((1, 0, 10), (2, 150_000, 150_000)):
            conn.execute(f"INSERT INTO {s}.migration_runs (config_hash, source_name, status) VALUES ('h', 's', 'running')")
            conn.execute(f"INSERT INTO {s}.migration_table_status (run_id, table_name, target_table) "
                         "VALUES (%s, 't', 'public.t')", (run_id,))
            conn.execute(f"INSERT INTO {s}.migration_chunk_status (run_id, table_name, chunk_no, predicate, bounds, "
                         "expected_rows, status) SELECT %s, 't', g, 'all rows', '{\"kind\": \"all\"}', 1, "
                         "CASE WHEN g <= %s THEN 'done' ELSE 'pending' END FROM generate_series(1, %s) g",
                         (run_id, done, done + pending))
            conn.execute(f"ANALYZE {s}.migration_chunk_status")
            costs[run_id] = _claim_buffers(conn, run_id)
    assert costs[2] <= costs[1] + 5, costs
    assert costs[2] < 50, costs
