"""The ledger's chunks: claims with a lease and a fencing token, the liveness lock of a claimed chunk, done and
failed marks, and the counts the run's status is derived from.

Liveness of a claimed chunk is carried by PostgreSQL itself: the worker's data connection holds a
session advisory lock on (chunk, fence) while it works. A crashed worker's connection closes, the lock
goes with it, and the chunk can be reclaimed at once; a live-but-stuck worker keeps the lock until
its lease expires. Either way the fence (incremented on every claim) decides who may commit.
"""

from __future__ import annotations

import json
from typing import Any

import psycopg

from lib.errors import FenceLostError
from lib.ledger.schema import SCHEMA
from lib.models import Bounds, ClaimedChunk

# First key of the two-key advisory locks the engine takes ("MI"): chunk liveness locks.
CHUNK_LOCK_CLASS = 0x4D49


# Second key of a liveness lock: one per (chunk, fence), so a new claim never waits on a stuck old owner.
# Computed in bigint whatever the operands' types (psycopg sends a small Python int as int2 or int4, whose
# product would overflow), each operand reduced first so no chunk id or fence below 2^63 can overflow it.
LIVENESS_KEY = ("((({chunk})::bigint %% 2147483647 * 1000003 + ({fence})::bigint %% 2147483647) "
                "%% 2147483647)::int")


def reset_failed(conn: psycopg.Connection[Any], run_id: int) -> int:
    """On resume every unfinished chunk gets a fresh set of attempts (failed ones, those left running
    by workers that died, pending ones under a lowered max_attempts); tables whose planning failed
    are re-planned."""
    cur = conn.execute(
        f"UPDATE {SCHEMA}.migration_chunk_status SET status = 'pending', attempts = 0, worker = NULL, "
        "lease_expires_at = NULL, retry_at = NULL WHERE run_id = %s AND status = 'failed'",
        (run_id,),
    )
    conn.execute(  # also chunks whose attempts are used up under a lowered max_attempts
        f"UPDATE {SCHEMA}.migration_chunk_status SET attempts = 0 WHERE run_id = %s AND status IN ('running', 'pending')",
        (run_id,),
    )
    conn.execute(
        f"DELETE FROM {SCHEMA}.migration_table_status t WHERE run_id = %s AND status = 'failed' "
        f"AND NOT EXISTS (SELECT 1 FROM {SCHEMA}.migration_chunk_status c "
        "WHERE c.run_id = t.run_id AND c.table_name = t.table_name)",
        (run_id,),
    )
    conn.execute(
        f"UPDATE {SCHEMA}.migration_table_status SET status = 'running', completed_at = NULL, "
        "reconcile_status = 'pending' WHERE run_id = %s AND status = 'failed'",
        (run_id,),
    )
    return cur.rowcount


_CLAIMABLE = f"""
    FROM {SCHEMA}.migration_chunk_status
    WHERE run_id = %(run_id)s AND status IN ('pending', 'running')
      AND EXISTS (SELECT 1 FROM {SCHEMA}.migration_runs r WHERE r.run_id = %(run_id)s AND r.status = 'running')
      AND (
        (status = 'pending' AND (retry_at IS NULL OR retry_at <= now()))
        OR (status = 'running' AND (lease_expires_at < now()
            OR pg_try_advisory_xact_lock({CHUNK_LOCK_CLASS}, {LIVENESS_KEY.format(chunk="chunk_id", fence="fence")}))))
"""


def claim_chunk(
    conn: psycopg.Connection[Any], run_id: int, worker: str, lease_seconds: int, max_attempts: int
) -> ClaimedChunk | None:
    """Claim the next chunk (pending, or running with a dead or expired owner) on `conn`.

    The claim commits at once, and `conn` keeps a session advisory lock on the chunk until
    `release_liveness_lock`: the signal that this worker is alive.
    """
    params = {"run_id": run_id, "worker": worker, "lease": lease_seconds, "max_attempts": max_attempts}
    with conn.transaction():
        # A chunk whose owners died max_attempts times is failed, not retried forever.
        conn.execute(
            f"UPDATE {SCHEMA}.migration_chunk_status SET status = 'failed', lease_expires_at = NULL, "
            "error = coalesce(error || '; ', '') || 'worker lost on attempt ' || attempts "
            f"WHERE chunk_id IN (SELECT chunk_id {_CLAIMABLE} AND status = 'running' "
            "AND attempts >= %(max_attempts)s FOR UPDATE SKIP LOCKED)",
            params,
        )
        row = conn.execute(
            f"WITH next AS (SELECT chunk_id {_CLAIMABLE} AND attempts < %(max_attempts)s "
            "ORDER BY chunk_id LIMIT 1 FOR UPDATE SKIP LOCKED) "
            f"UPDATE {SCHEMA}.migration_chunk_status c SET status = 'running', fence = c.fence + 1, "
            "attempts = c.attempts + 1, worker = %(worker)s, started_at = clock_timestamp(), "
            "lease_expires_at = now() + make_interval(secs => %(lease)s) FROM next WHERE c.chunk_id = next.chunk_id "
            "RETURNING c.chunk_id, c.run_id, c.table_name, c.chunk_no, c.bounds, c.expected_rows, c.fence, c.attempts, "
            "c.repair, c.staged",
            params,
        ).fetchone()
        if row is None:
            return None
        # try-lock: the key is new for this fence, so only a hash collision could make it fail,
        # and then the chunk merely looks alive until its lease expires.
        conn.execute(f"SELECT pg_try_advisory_lock(%s, {LIVENESS_KEY.format(chunk='%s', fence='%s')})",
                     (CHUNK_LOCK_CLASS, row[0], row[6]))
    return ClaimedChunk(row[0], row[1], row[2], row[3], Bounds.from_json(row[4]), row[5], row[6], row[7], row[8], row[9])


def status_under_fence(conn: psycopg.Connection[Any], chunk: ClaimedChunk) -> str | None:
    """The chunk's status while it is still under this claim's fence ('running': still claimed, 'done': this claim
    committed it); None once another claim took it over."""
    row = conn.execute(f"SELECT status FROM {SCHEMA}.migration_chunk_status WHERE chunk_id = %s AND fence = %s",
                       (chunk.chunk_id, chunk.fence)).fetchone()
    return row[0] if row else None


def unclaim_chunk(conn: psycopg.Connection[Any], chunk: ClaimedChunk) -> None:
    """Give a claimed chunk back untouched (a thread read it ahead and stops first): pending again, its attempt not
    counted. The caller then releases its liveness lock."""
    conn.execute(
        f"UPDATE {SCHEMA}.migration_chunk_status SET status = 'pending', attempts = greatest(attempts - 1, 0), "
        "worker = NULL, lease_expires_at = NULL WHERE chunk_id = %s AND fence = %s AND status = 'running'",
        (chunk.chunk_id, chunk.fence))


def release_liveness_lock(conn: psycopg.Connection[Any], chunk: ClaimedChunk) -> None:
    conn.execute(f"SELECT pg_advisory_unlock(%s, {LIVENESS_KEY.format(chunk='%s', fence='%s')})",
                 (CHUNK_LOCK_CLASS, chunk.chunk_id, chunk.fence))


def mark_done(conn: psycopg.Connection[Any], chunk: ClaimedChunk, rows: int, nbytes: int,
              inserted: int | None = None, updated: int | None = None, notes: list[str] | None = None,
              values_changed: int = 0, phases: dict[str, float] | None = None) -> None:
    """Inside the chunk's transaction: mark done only if the run is still running and we still hold the fence.

    The run row is share-locked until the chunk commits, so a run cannot be abandoned (and its target
    truncated by the run that replaces it) between this check and the commit.
    """
    run = conn.execute(f"SELECT status FROM {SCHEMA}.migration_runs WHERE run_id = %s FOR SHARE",
                       (chunk.run_id,)).fetchone()
    if run is None or run[0] != "running":
        raise FenceLostError(
            f"run {chunk.run_id} is {run[0] if run else 'gone'}, no longer running: chunk "
            f"{chunk.table_name}#{chunk.chunk_no} of this worker is rolled back"
        )
    cur = conn.execute(
        f"UPDATE {SCHEMA}.migration_chunk_status SET status = 'done', rows_copied = %s, bytes_copied = %s, "
        "rows_inserted = %s, rows_updated = %s, notes = %s, values_changed = %s, repair = false, "
        "completed_at = clock_timestamp(), phase_seconds = %s, "
        "lease_expires_at = NULL, error = NULL WHERE chunk_id = %s AND fence = %s AND status = 'running'",
        (rows, nbytes, rows if inserted is None else inserted, updated or 0, json.dumps(notes or []), values_changed,
         json.dumps(phases) if phases else None, chunk.chunk_id, chunk.fence),
    )
    if cur.rowcount != 1:
        raise FenceLostError(
            f"chunk {chunk.table_name}#{chunk.chunk_no} was reclaimed by another worker (fence {chunk.fence}); "
            "this worker's copy is rolled back"
        )


def mark_done_with_plan(conn: psycopg.Connection[Any], run_id: int, table: str, rows: int, nbytes: int, inserted: int,
                        updated: int, notes: list[str], values_changed: int, phases: dict[str, float],
                        seconds: float, completes: tuple[int, bool] | None = None) -> bool:
    """Inside the transaction that stored the table's plan of one chunk and wrote its rows (lib/plan/early_rows.py):
    the chunk is done, in one attempt by no worker, if the run is still running (share-locked until the commit,
    as mark_done does). False if it was not pending or the run no longer runs.

    `completes` (the source's count of the rows, whether ANALYZE ran): the table is reconciled against the rows read,
    which that count equals, and completed in the same statement; it has no other post-load work."""
    source_count, analyzed = completes or (None, False)
    row = conn.execute(
        f"WITH done AS (UPDATE {SCHEMA}.migration_chunk_status c SET status = 'done', attempts = 1, fence = c.fence + 1, "
        "worker = 'planning', started_at = clock_timestamp() - make_interval(secs => %(seconds)s), "
        "completed_at = clock_timestamp(), rows_copied = %(rows)s, bytes_copied = %(bytes)s, "
        "rows_inserted = %(inserted)s, rows_updated = %(updated)s, notes = %(notes)s, "
        "values_changed = %(changed)s, phase_seconds = %(phases)s, repair = false "
        "WHERE c.run_id = %(run)s AND c.table_name = %(table)s AND c.status = 'pending' "
        f"AND EXISTS (SELECT 1 FROM {SCHEMA}.migration_runs r WHERE r.run_id = %(run)s AND r.status = 'running' FOR SHARE) "
        "RETURNING c.rows_copied), "
        f"completed AS (UPDATE {SCHEMA}.migration_table_status t SET rows_copied = done.rows_copied, "
        "source_count = %(source)s, target_count = NULL, reconcile_status = 'match', reconciled_at = clock_timestamp(), "
        "error = NULL, reconciled_against = 'rows_read', status = 'completed', completed_at = clock_timestamp(), "
        "analyzed_at = CASE WHEN %(analyzed)s THEN clock_timestamp() ELSE t.analyzed_at END FROM done "
        "WHERE %(completes)s AND t.run_id = %(run)s AND t.table_name = %(table)s AND done.rows_copied = %(source)s "
        "RETURNING 1) "
        "SELECT (SELECT count(*) FROM done), (SELECT count(*) FROM completed)",
        {"seconds": seconds, "rows": rows, "bytes": nbytes, "inserted": inserted, "updated": updated,
         "notes": json.dumps(notes), "changed": values_changed, "phases": json.dumps(phases), "run": run_id,
         "table": table, "source": source_count, "analyzed": analyzed, "completes": completes is not None},
    ).fetchone()
    assert row is not None
    return row[0] == 1 and (completes is None or row[1] == 1)


def mark_failed(conn: psycopg.Connection[Any], chunk: ClaimedChunk, error: str, retry_in: float | None,
                max_attempts: int, stage_next: bool = False) -> str:
    """Record a failed attempt. With `retry_in` seconds (a transient error) the chunk goes back to
    pending, claimable after that backoff, while attempts remain; otherwise it is failed. `stage_next`: its
    later attempts go through the stage (lib/loaders.KeyedLoader)."""
    row = conn.execute(
        f"UPDATE {SCHEMA}.migration_chunk_status SET "
        "status = CASE WHEN %(retry)s AND attempts < %(max)s THEN 'pending' ELSE 'failed' END, "
        "retry_at = now() + make_interval(secs => %(wait)s), staged = staged OR %(stage_next)s, "
        "error = %(error)s, lease_expires_at = NULL "
        # status = 'running': when a COMMIT's outcome is unknown (connection lost during it), the
        # chunk may in fact be done; then it stays done and is not copied a second time.
        "WHERE chunk_id = %(id)s AND fence = %(fence)s AND status = 'running' RETURNING status",
        {"retry": retry_in is not None, "max": max_attempts, "wait": retry_in or 0, "error": error,
         "id": chunk.chunk_id, "fence": chunk.fence, "stage_next": stage_next},
    ).fetchone()
    return row[0] if row else "already done or reclaimed"


def seconds_until_retry(conn: psycopg.Connection[Any], run_id: int, max_attempts: int) -> float | None:
    """Seconds until the next pending chunk of the running run becomes claimable (0: now, its backoff ran out
    since the claim that found none); None if no chunk is pending."""
    row = conn.execute(
        f"SELECT extract(epoch FROM min(coalesce(c.retry_at, now())) - now()) FROM {SCHEMA}.migration_chunk_status c "
        "WHERE c.run_id = %s AND c.status = 'pending' AND c.attempts < %s "
        f"AND EXISTS (SELECT 1 FROM {SCHEMA}.migration_runs r WHERE r.run_id = c.run_id AND r.status = 'running')",
        (run_id, max_attempts),
    ).fetchone()
    return None if row is None or row[0] is None else max(float(row[0]), 0.0)


DONE_SUMS = ("rows_copied", "rows_inserted", "rows_updated", "values_changed")


def chunk_counts(conn: psycopg.Connection[Any], run_id: int) -> dict[str, dict[str, int]]:
    """Per table: number of chunks in each status, plus the rows copied, inserted and updated and the values
    changed (NUL bytes) by done chunks."""
    sums = ", ".join(f"coalesce(sum({c}), 0)" for c in DONE_SUMS)
    rows = conn.execute(
        f"SELECT table_name, status, count(*), {sums} FROM {SCHEMA}.migration_chunk_status "
        "WHERE run_id = %s GROUP BY 1, 2",
        (run_id,),
    ).fetchall()
    out: dict[str, dict[str, int]] = {}
    for table, status, n, *done_sums in rows:
        t = out.setdefault(table, {"pending": 0, "running": 0, "done": 0, "failed": 0,
                                   **dict.fromkeys(DONE_SUMS, 0)})
        t[status] = int(n)
        if status == "done":
            t.update(zip(DONE_SUMS, map(int, done_sums), strict=True))
    return out
