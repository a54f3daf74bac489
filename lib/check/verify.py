"""Verification: every done chunk's content checksum (lib/check/checksum.py), computed inside Snowflake and inside
PostgreSQL, compared and stored in `migration_status.chunk_checksums`; and the repair of the chunks
that differ.

- A chunk is selected on both sides by its own bounds. Consecutive chunks of a table are checksummed
  by one query per side, grouped by chunk (at most MAX_GROUP chunks, and at least as many groups as
  threads): a target without an index on the chunk column is then read once per group, not once per
  chunk. Tables chunked by hash (no key range PostgreSQL can select) are compared as a whole, and
  cannot be repaired chunk-wise.
- The source side applies the table's `source_filter` when the target holds exactly those rows (copy and
  swap loads); catch-up, merge and watermark targets are replicas of the whole source table, compared
  without it. With a run snapshot (settings.snapshot), the source is read at that point in time.
- Both sessions work in UTC.
- `repair`: each differing chunk is reset (pending, `repair`) and copied again by the usual workers,
  fenced like any chunk: copy and swap loads empty the chunk's key range first, keyed loads merge. The
  table and the run reopen until the repaired chunks are done, reconciled and verified again.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from lib import ledger
from lib.check import checksum
from lib.check.jsonb_text import snowflake_udf_ddl
from lib.config import SourceConfig, TableSpec
from lib.errors import classify
from lib.identifiers import and_sql
from lib.log import ctx, get_logger
from lib.models import Bounds
from lib.source.snowflake import SnowflakeSource, chunk_predicate
from lib.target import postgres as pg
from lib.target.load_modes import TableLoad, held_scope, live_rows
from lib.target.wire import target_column_name
from lib.typemap import Column

log = get_logger()


@dataclass
class TableVerification:
    table: str
    checked: int = 0
    matched: int = 0
    differing: list[int | None] = field(default_factory=list)  # chunk numbers; None: the whole table
    errors: list[str] = field(default_factory=list)
    nulls_only: list[str] = field(default_factory=list)
    whole_table: bool = False  # hash chunks: compared as one

    @property
    def clean(self) -> bool:
        return not self.differing and not self.errors


@dataclass(frozen=True)
class _Check:
    spec: TableSpec
    columns: list[Column]
    load: TableLoad
    chunks: tuple[tuple[int | None, Bounds], ...]  # (None, Bounds("all")) for a whole-table check
    fields: list[checksum.Field]  # the table's canonical texts (lib/check/checksum.py), built once per table
    held: str | None  # the source rows the target holds (load_modes.held_scope)


MAX_GROUP = 32  # chunks per query: each row is tested against at most this many chunk predicates


def chunk_groups(chunks: list[Any], threads: int) -> list[list[Any]]:
    """Consecutive chunks, in groups of equal size: at least `threads` groups (so every thread has one), and
    none bigger than MAX_GROUP."""
    if not chunks:
        return []
    count = max(min(threads, len(chunks)), -(-len(chunks) // MAX_GROUP))
    size = -(-len(chunks) // count)
    return [chunks[i:i + size] for i in range(0, len(chunks), size)]


class _Sessions(threading.local):
    source: SnowflakeSource | None = None
    target: psycopg.Connection[Any] | None = None


def verify_run(config: SourceConfig, run_id: int, tables: set[str] | None = None, sample: float | None = None,
               threads: int = 2, seed: int | None = None, only: dict[str, set[int | None]] | None = None,
               deadline: float | None = None) -> list[TableVerification]:
    """Checksum the done chunks of the run (all, a random `sample` fraction, or `only` these chunks per table),
    store and return the verdicts. Past `deadline` (time.monotonic()) no further group is started."""
    from lib.ledger.tables import source_snapshots
    from lib.target.load_modes import table_loads

    with pg.connect(config.postgres_connect_args(), autocommit=True) as conn:
        loads = table_loads(conn, config, run_id)
        snapshots = source_snapshots(conn, config, run_id)
        done = _done_chunks(conn, run_id)
        held = {name: held_scope(conn, run_id, spec) for name, (spec, _, _) in loads.items()}
    draw = random.Random(seed)
    checks: list[_Check] = []
    results: dict[str, TableVerification] = {}
    for name, (spec, columns, load) in loads.items():
        if tables is not None and name not in tables:
            continue
        chunks = done.get(name, [])
        result = results[name] = TableVerification(name)
        fields = checksum.fields(columns)
        result.nulls_only = [f.describe() for f in fields if not f.values]
        if not chunks:
            continue
        if any(pg.chunk_predicate(b, columns) is None for _, b in chunks):
            result.whole_table = True
            checks.append(_Check(spec, columns, load, ((None, Bounds("all")),), fields, held[name]))
            continue
        if only is not None:
            chunks = [c for c in chunks if c[0] in only.get(name, set())]
        if sample is not None and sample < 1:
            chunks = draw.sample(chunks, max(1, round(len(chunks) * sample)))
        checks.extend(_Check(spec, columns, load, tuple(group), fields, held[name])
                      for group in chunk_groups(sorted(chunks, key=lambda c: c[0]), threads))

    sessions = _Sessions()
    opened: list[Any] = []
    lock = threading.Lock()

    def check(item: _Check) -> list[tuple[int | None, str, str | None]]:
        if deadline is not None and time.monotonic() >= deadline:
            return []  # left for a later call (unverified_chunks)
        snapshot_at = snapshots.get(item.spec.source)
        with _sessions(config, snapshots, sessions, opened, lock) as (source, target):
            try:
                return [(no, verdict, None) for no, verdict in _compare(source, target, run_id, item, snapshot_at)]
            except Exception as exc:  # noqa: BLE001 - stored as these chunks' error; the others go on
                error = str(classify(exc, f"verifying {_label(item)}"))
                sessions.target = None  # a fresh connection for the next check
                with pg.connect(config.postgres_connect_args(), autocommit=True) as conn:
                    for no, _ in item.chunks:
                        _store(conn, run_id, item, no, None, None, "error", snapshot_at, error)
                return [(no, "error", error) for no, _ in item.chunks]

    try:
        with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
            for item, verdicts in zip(checks, pool.map(check, checks), strict=True):
                result = results[item.spec.name]
                for chunk_no, verdict, error in verdicts:
                    result.checked += 1
                    if verdict == "match":
                        result.matched += 1
                    elif verdict == "differ":
                        result.differing.append(chunk_no)
                    else:
                        result.errors.append(f"chunk {chunk_no}: {error}")
    finally:
        for resource in opened:
            resource.close()
    for result in results.values():
        level = log.info if result.clean else log.error
        level("verified %d chunk(s): %d match, %d differ, %d error(s)%s", result.checked, result.matched,
              len(result.differing), len(result.errors),
              f"; compared for NULLs only: {', '.join(result.nulls_only)}" if result.nulls_only else "",
              **ctx(run_id=run_id, table=result.table))
    return list(results.values())


@contextmanager
def _sessions(config: SourceConfig, snapshots: dict[tuple[str, ...], str], sessions: _Sessions, opened: list[Any],
              lock: threading.Lock) -> Iterator[tuple[SnowflakeSource, psycopg.Connection[Any]]]:
    """This thread's Snowflake session (with the jsonb-text UDF) and PostgreSQL connection."""
    if sessions.source is None:
        source = SnowflakeSource(config.snowflake_connect_args(), config.retry_policy(), snapshots)
        source.on_connect.append(snowflake_udf_ddl())
        sessions.source = source
        with lock:
            opened.append(source)
    if sessions.target is None or sessions.target.closed:
        target = pg.connect(config.postgres_connect_args(), autocommit=True)  # in UTC, as every session
        target.execute("SET statement_timeout = 0")  # a whole-table checksum may take long
        sessions.target = target
        with lock:
            opened.append(target)
    yield sessions.source, sessions.target


def _compare(source: SnowflakeSource, target: psycopg.Connection[Any], run_id: int, item: _Check,
             snapshot_at: str | None) -> list[tuple[int | None, str]]:
    """Both databases checksum the group's chunks at the same time, one query each; every chunk's verdict is stored."""
    bounds = [b for _, b in item.chunks]
    scope, narrowed = compared_scope(item.spec, item.load, item.held)
    destination = item.load.destination if item.load.mode != "swap" else item.spec.target
    with ThreadPoolExecutor(max_workers=1) as snowflake_side:  # both databases compute at the same time
        pending = snowflake_side.submit(source_checksums, source, item.fields, item.spec.source, bounds, scope,
                                        f"checksumming {_label(item)} in Snowflake")
        ours_by_bucket = target_checksums(target, item.fields, destination, item.columns, bounds, narrowed)
        theirs_by_bucket = pending.result()
    verdicts = []
    for n, (chunk_no, _) in enumerate(item.chunks):
        theirs, ours = theirs_by_bucket.get(n, (0, 0, 0)), ours_by_bucket.get(n, (0, 0, 0))
        verdict = "match" if theirs == ours else "differ"
        _store(target, run_id, item, chunk_no, theirs, ours, verdict, snapshot_at, None)
        verdicts.append((chunk_no, verdict))
    return verdicts


Sums = tuple[int, int, int]  # a chunk's rows and its two hash sums


def compared_scope(spec: TableSpec, load: TableLoad,
                   held: str | None) -> tuple[str | None, tuple[sql.Composable, list[Any]] | None]:
    """What both sides compare of a table, beyond each chunk's bounds: (the source's filter, the target's).

    - a watermark window: the rows whose watermark lies in the window the run copied, on both sides (rows that
      arrived after it was planned belong to the next window);
    - any other load: the source rows the target holds (`held`: load_modes.held_scope), whichever loads
      brought them."""
    live = live_rows(spec)
    if load.window is not None:
        column = spec.target_watermark or target_column_name(load.window.column)
        source_sql, target_sql, params = load.window.verified_predicates(column)
        both = f"({spec.source_filter}) AND ({source_sql})" if spec.source_filter else source_sql
        return both, (target_sql if live is None else sql.SQL("({}) AND {}").format(target_sql, live), params)
    return held, None if live is None else (live, [])


def source_buckets(chunks: list[Bounds]) -> tuple[list[str], dict[str, Any]]:
    """Each chunk's predicate in Snowflake, its parameters tagged by its index, so that one statement holds them all."""
    buckets, params = [], {}
    for n, bounds in enumerate(chunks):
        where, chunk_params = chunk_predicate(bounds, tag=f"_{n}")
        buckets.append(where)
        params.update(chunk_params)
    return buckets, params


def target_buckets(chunks: list[Bounds], columns: list[Column]) -> tuple[list[sql.Composable], list[Any]]:
    """Each chunk's predicate in PostgreSQL, and all their parameters in order (a statement that names every
    predicate twice, in a CASE and in its WHERE, passes them twice)."""
    buckets, params = [], []
    for bounds in chunks:
        selected = pg.chunk_predicate(bounds, columns)
        assert selected is not None, "a key range, not a hash class"
        buckets.append(selected[0])
        params.extend(selected[1])
    return buckets, params


def source_checksums(source: SnowflakeSource, fields: list[checksum.Field], table: tuple[str, ...],
                     chunks: list[Bounds], source_filter: str | None, context: str) -> dict[int, Sums]:
    """The checksums of these chunks in Snowflake, one query, by their index in `chunks` (an empty chunk is absent)."""
    buckets, params = source_buckets(chunks)
    query = checksum.snowflake_query(fields, source.table_sql(table), buckets, and_sql(source_filter))
    return source.checksums(query, params, context)


def target_checksums(conn: psycopg.Connection[Any], fields: list[checksum.Field], destination: tuple[str, str],
                     columns: list[Column], chunks: list[Bounds],
                     narrowed: tuple[sql.Composable, list[Any]] | None = None) -> dict[int, Sums]:
    """The same checksums in PostgreSQL (`narrowed`: a predicate and its parameters that narrow every chunk)."""
    buckets, params = target_buckets(chunks, columns)
    query = checksum.postgres_query(fields, destination, buckets, narrowed[0] if narrowed else None)
    # the buckets' parameters: the CASE's, then the WHERE's; then the narrowing predicate's
    rows = conn.execute(query, params * 2 + (narrowed[1] if narrowed else [])).fetchall()
    return {int(b): (int(count), int(first), int(second)) for b, count, first, second in rows}


def _label(item: _Check) -> str:
    numbers = [no for no, _ in item.chunks]
    return item.spec.name if numbers == [None] else f"{item.spec.name} chunk(s) {', '.join(map(str, numbers))}"


def _store(conn: psycopg.Connection[Any], run_id: int, item: _Check, chunk_no: int | None,
           theirs: Sums | None, ours: Sums | None, verdict: str,
           snapshot_at: str | None, error: str | None) -> None:
    fields = item.fields
    conn.execute(
        f"INSERT INTO {ledger.SCHEMA}.chunk_checksums (run_id, table_name, chunk_no, source_rows, source_sum1, "
        "source_sum2, target_rows, target_sum1, target_sum2, result, compared, nulls_only, snapshot_at, error) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (run_id, item.spec.name, chunk_no, *(theirs or (None, None, None)), *(ours or (None, None, None)), verdict,
         json.dumps([f.column.name for f in fields if f.values]), json.dumps([f.describe() for f in fields if not f.values]),
         snapshot_at, error))


def unverified_chunks(conn: psycopg.Connection[Any], run_id: int, tables: set[str]) -> dict[str, set[int | None]]:
    """The done chunks of these tables that have no checksum in this run yet (a whole-table check counts for all)."""
    rows = conn.execute(
        f"SELECT c.table_name, c.chunk_no FROM {ledger.SCHEMA}.migration_chunk_status c WHERE c.run_id = %s "
        "AND c.status = 'done' AND c.table_name = ANY(%s) AND NOT EXISTS (SELECT 1 FROM "
        f"{ledger.SCHEMA}.chunk_checksums k WHERE k.run_id = c.run_id AND k.table_name = c.table_name "
        "AND (k.chunk_no = c.chunk_no OR k.chunk_no IS NULL))", (run_id, sorted(tables))).fetchall()
    out: dict[str, set[int | None]] = {}
    for table, chunk_no in rows:
        out.setdefault(table, set()).add(chunk_no)
    return out


def _done_chunks(conn: psycopg.Connection[Any], run_id: int) -> dict[str, list[tuple[int, Bounds]]]:
    rows = conn.execute(f"SELECT table_name, chunk_no, bounds FROM {ledger.SCHEMA}.migration_chunk_status "
                        "WHERE run_id = %s AND status = 'done' ORDER BY table_name, chunk_no", (run_id,)).fetchall()
    out: dict[str, list[tuple[int, Bounds]]] = {}
    for name, chunk_no, bounds in rows:
        out.setdefault(name, []).append((chunk_no, Bounds.from_json(bounds)))
    return out


def schedule_repairs(config: SourceConfig, run_id: int,
                     results: list[TableVerification]) -> tuple[dict[str, set[int | None]], list[str]]:
    """Reset every differing chunk for repair, and reopen its table and the run. Returns the chunks scheduled per
    table, and what cannot be repaired: whole-table comparisons, and targets another live run loads."""
    refused: list[str] = []
    scheduled: dict[str, set[int | None]] = {}
    targets = {spec.name: spec.target_name for spec in config.tables}
    with pg.connect(config.postgres_connect_args(), autocommit=True) as conn, conn.transaction():
        for result in results:
            chunks = [c for c in result.differing if c is not None]
            if None in result.differing:
                refused.append(f"{result.table}: chunked by hash, so no key range selects a chunk in PostgreSQL: "
                               "it cannot be repaired chunk-wise; reload it (load_mode swap)")
            owner = ledger.target_owner(conn, targets[result.table], run_id) if chunks else None
            if owner is not None:
                refused.append(f"{result.table}: its target {targets[result.table]} is being loaded "
                               f"by run {owner.run_id} (source {owner.source_name}); a repair now would delete rows that "
                               "run is writing. Let it finish (or abandon it), then repair")
                continue
            if not chunks:
                continue
            conn.execute(
                f"UPDATE {ledger.SCHEMA}.migration_chunk_status SET status = 'pending', repair = true, attempts = 0, "
                "retry_at = NULL, lease_expires_at = NULL WHERE run_id = %s AND table_name = %s AND chunk_no = ANY(%s)",
                (run_id, result.table, chunks))
            conn.execute(
                f"UPDATE {ledger.SCHEMA}.migration_table_status SET status = 'running', reconcile_status = 'pending', "
                "completed_at = NULL WHERE run_id = %s AND table_name = %s", (run_id, result.table))
            scheduled[result.table] = set(chunks)
        if scheduled:
            ledger.set_run_status(conn, run_id, "running")
    return scheduled, refused


def record_differences(config: SourceConfig, run_id: int, results: list[TableVerification]) -> None:
    """After a run's own verification (settings.verify): a table whose content differs is failed, with what to do."""
    with pg.connect(config.postgres_connect_args(), autocommit=True) as conn:
        for result in results:
            if result.clean:
                continue
            error = (f"verification: {len(result.differing)} chunk(s) differ "
                     f"({', '.join('whole table' if c is None else str(c) for c in result.differing[:10])})"
                     + (f", {len(result.errors)} could not be checked ({result.errors[0]})" if result.errors else "")
                     + "; see migration_status.verification, repair with: migrate.py verify --repair")
            conn.execute(f"UPDATE {ledger.SCHEMA}.migration_table_status SET status = 'failed', error = %s "
                         "WHERE run_id = %s AND table_name = %s", (error, run_id, result.table))


