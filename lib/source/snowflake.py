"""Snowflake side: connect, describe a table, one aggregated stats query per strategy, stream Arrow.

Identifiers are always quoted (`quote_snowflake`); values always travel as bound parameters. The
connector binds them client-side with `command % params`, and the connection is opened with
`interpolate_empty_sequences`, so that happens to every statement, with or without values: every `%`
that is not a placeholder is written `%%` (quote_snowflake and `raw_sql` do it), in this one way.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any, TypeVar

import pyarrow as pa
import snowflake.connector

from lib.config.connections import RESULT_CHUNK_MB_KEY, SNOWFLAKE_FORCED
from lib.errors import FatalError, TransientError, classify
from lib.identifiers import and_sql, quote_snowflake, snowflake_name, where_sql
from lib.models import Bounds, DayCount, HourCount, KeyBucket
from lib.retry import RetryPolicy, call_with_retry
from lib.source.deferred import Deferred
from lib.typemap import Column, columns_from_description

T = TypeVar("T")

# Rows read at planning to measure a table's Arrow bytes per row for the memory budget
SAMPLE_ROWS = 1000

# The connector turns an Arrow answer into rows or tables with a C++ iterator. The first one a process builds
# sets up its logger inside std::call_once, and that calls Python (an import, logging.getLogger), where the
# GIL may pass to another thread. If that thread is building its first iterator too, it waits on the
# once-flag while holding the GIL, and the whole process freezes for good (the call_once/GIL deadlock of
# ARROW-10519). A fresh run's planning builds one alone; a resumed run, a Lambda worker slot or `verify`
# start with several threads reading at once. So until an iterator exists, answers are taken one at a time.
_FIRST_ARROW_ANSWER = threading.Lock()
_arrow_iterator_built = threading.Event()


@contextlib.contextmanager
def _one_at_a_time_until_arrow_is_set_up() -> Iterator[None]:
    if _arrow_iterator_built.is_set():
        yield
        return
    with _FIRST_ARROW_ANSWER:
        yield


def _built_from(part: pa.Table | pa.RecordBatch | None) -> None:
    """A part with rows came out of the connector's C++ iterator: its one-time setup is over."""
    if part is not None and part.num_rows:
        _arrow_iterator_built.set()


@dataclass(frozen=True)
class KeyProblems:
    """What stops a key from naming one row of the rows read (SnowflakeSource.key_problems)."""

    null_rows: int  # rows with a NULL in the key: ON CONFLICT never matches them
    repeated_rows: int  # rows whose key another row has too (each beyond the first)
    examples: list[tuple[tuple[Any, ...], int]]  # a few repeated keys and how many rows hold each


class SnowflakeSource:
    """A Snowflake session for one worker or step. Every read of the data of a table in `snapshots` (its
    (db, schema, table) → a UTC timestamp text: stats, chunks, counts, checksums) is `AT(TIMESTAMP => ...)`:
    one consistent point in time. Other tables are read as they are."""

    def __init__(self, connect_args: dict[str, Any], retry: RetryPolicy | None = None,
                 snapshots: dict[tuple[str, ...], str] | None = None) -> None:
        self._args = {**connect_args, **SNOWFLAKE_FORCED}
        self._result_chunk_mb = self._args.pop(RESULT_CHUNK_MB_KEY, None)
        self.reports_result_chunks = False  # the login reported CLIENT_RESULT_CHUNK_SIZE: results stream in parts
        self._retry = retry or RetryPolicy()
        self.snapshots = dict(snapshots or {})
        self.deferred: Deferred | None = None  # a Step Functions step: scans may be waited for across invocations
        self._tables: dict[tuple[str, str], dict[str, int | None]] = {}
        self._primary_keys: dict[tuple[str, str], dict[str, list[str]]] = {}
        # (table, column, filter, read point) → (rows with a NULL, rows repeating another's value), as the key
        # buckets of that column counted them: a key check of that one column needs no query of its own
        self._column_keys: dict[tuple[Any, ...], tuple[int, int]] = {}
        self.on_connect: list[str] = []  # statements every new session runs first (e.g. a temporary UDF)
        self._conn: snowflake.connector.SnowflakeConnection | None = None
        self._reading: Any = None  # the cursor of the read in progress, for cancel()

    def connection(self) -> snowflake.connector.SnowflakeConnection:
        if self._conn is None or self._conn.is_closed():
            try:
                self._conn = snowflake.connector.connect(**self._args)
                if "client_prefetch_threads" in self._args:
                    self._conn.client_prefetch_threads = self._args["client_prefetch_threads"]
                # only the server's login answer puts it there: the engine never sends it at login
                reported = self._conn._session_parameters.get("CLIENT_RESULT_CHUNK_SIZE")
                self.reports_result_chunks = reported is not None
                with self._conn.cursor() as cur:
                    if reported is not None and self._result_chunk_mb and str(reported) != str(self._result_chunk_mb):
                        cur.execute(f"ALTER SESSION SET CLIENT_RESULT_CHUNK_SIZE = {int(self._result_chunk_mb)}")
                    for statement in self.on_connect:
                        cur.execute(statement)
            except Exception as exc:
                raise classify(exc, f"connecting to Snowflake ({self.where()})") from exc
        return self._conn

    def where(self) -> str:
        """The account and address this session logs in to, for messages (never a credential)."""
        host = self._args.get("host") or f"{self._args.get('account')}.snowflakecomputing.com"
        port = self._args.get("port") or 443
        return f"account {self._args.get('account')} at {self._args.get('protocol') or 'https'}://{host}:{port}"

    def preflight(self, attempts: int = 2) -> None:
        """Log in once, before any table is planned: an unreachable Snowflake fails the start at once, once, naming
        where it looked, instead of every table's queries retrying it in turn."""
        for attempt in range(1, attempts + 1):
            try:
                self.connection()
                return
            except TransientError as exc:
                if attempt == attempts:
                    raise FatalError(
                        f"Snowflake is unreachable: {exc}. Check account, host, port and protocol in the snowflake "
                        "block of the config, and that this machine can reach that address (proxy, firewall, "
                        "private link)") from exc
                time.sleep(self._retry.delay(attempt))

    def table_sql(self, table: tuple[str, ...]) -> str:
        """The table in a FROM clause: at its snapshot, if it is read at one."""
        at = self.snapshots.get(tuple(table))
        if at is None:
            return snowflake_name(table)
        return f"{snowflake_name(table)} AT(TIMESTAMP => '{_timestamp_literal(at)}'::TIMESTAMP_TZ)"

    def now(self) -> str:
        """Snowflake's current time in UTC, to the microsecond: a run's snapshot."""
        value = self.scalar("SELECT TO_VARCHAR(CONVERT_TIMEZONE('UTC', CURRENT_TIMESTAMP()), "
                            "'YYYY-MM-DD HH24:MI:SS.FF6')", "reading Snowflake's clock")
        return f"{value}+00:00"

    def retention_days(self, table: tuple[str, ...]) -> int | None:
        """The table's Time Travel retention (SHOW TABLES' retention_time), or None if it does not say."""
        db, schema, name = table
        return self._tables_of(db, schema).get(name)

    def table_names(self, db: str, schema: str) -> list[str]:
        """The tables of a schema (not its views), as Snowflake stores their names."""
        return sorted(self._tables_of(db, schema))

    def _tables_of(self, db: str, schema: str) -> dict[str, int | None]:
        """One SHOW TABLES per schema and session, whatever the number of its tables planned or matched."""
        if (db, schema) not in self._tables:
            self._tables[(db, schema)] = self._query(
                f"SHOW TABLES IN SCHEMA {quote_snowflake(db)}.{quote_snowflake(schema)}", None,
                f"listing the tables of {db}.{schema}",
                lambda cur: retention_by_table([d[0] for d in cur.description], cur.fetchall()))
        return self._tables[(db, schema)]

    def checksums(self, sql: str, params: dict[str, Any] | None, context: str) -> dict[int, tuple[int, int, int]]:
        """{bucket: (rows, sum 1, sum 2)} of a checksum query (lib/check/checksum.py); the sums travel as exact text."""
        # Snowflake answers exact integers; the stand-in (DuckDB) may print them as "123.0"
        return {int(bucket): (int(count), int(Decimal(first)), int(Decimal(second)))
                for bucket, count, first, second in self._fetchall(sql, params, context)}

    def close(self, wait: bool = True) -> None:
        """Close the connection; `wait=False` closes it in a daemon thread (a read on it may be stuck)."""
        conn, self._conn = self._conn, None
        if conn is None:
            return

        def close() -> None:
            with contextlib.suppress(Exception):  # closing a broken connection must not mask the real error
                conn.close()

        if wait:
            close()
        else:
            threading.Thread(target=close, name="snowflake-close", daemon=True).start()

    def _query(self, sql: str, params: dict[str, Any] | None, context: str, take: Callable[[Any], T]) -> T:
        """Run a read-only query and `take` its answer from the cursor; transient failures reconnect and repeat
        it (safe: it only reads)."""
        def once() -> T:
            with self.connection().cursor() as cur:
                run(cur, sql, params)
                with _one_at_a_time_until_arrow_is_set_up():  # taking the answer builds its iterator
                    return take(cur)

        return call_with_retry(once, self._retry, context, on_retry=self.close)

    def _fetchall(self, sql: str, params: dict[str, Any] | None, context: str) -> list[tuple[Any, ...]]:
        return self._query(sql, params, context, lambda cur: list(cur.fetchall()))

    def scalar(self, sql: str, context: str) -> Any:
        """One value of a read-only query (retried like every query here)."""
        rows = self._fetchall(sql, None, context)
        return rows[0][0] if rows else None

    def scan(self, sql: str, params: dict[str, Any] | None, context: str) -> list[tuple[Any, ...]]:
        """The rows of a query that reads table data (stats, counts): one that may outlast a Step Functions step
        goes through `deferred` there (lib/source/deferred.py); elsewhere it is an ordinary, retried query."""
        if self.deferred is None:
            return self._fetchall(sql, params, context)
        return self.deferred.fetchall(self.connection(), sql, params, context)

    def describe(self, table: tuple[str, ...]) -> list[dict[str, Any]]:
        """The table's columns as stored in the plan: name, data_type, precision, scale, char_length, nullable, and
        collation where a text column has one (its order is then not the code point order string chunks use)."""
        db, schema, name = table
        rows = self._fetchall(
            f"SELECT column_name, data_type, numeric_precision, numeric_scale, character_maximum_length, is_nullable, "
            f"collation_name {_columns_of(db)} ORDER BY ordinal_position",
            {"schema": schema, "table": name},
            f"describing source table {'.'.join(table)}",
        )
        if not rows:
            raise FatalError(
                f"source table {'.'.join(table)} does not exist or the configured role cannot see it"
            )
        described = [
            {"name": r[0], "data_type": r[1], "precision": r[2], "scale": r[3], "char_length": r[4],
             "nullable": str(r[5]).upper() != "NO", **({"collation": r[6]} if r[6] else {})}
            for r in rows
        ]
        columns_from_description(described)  # fail now, at planning, on a type with no mapping
        return described

    def arrow(self, sql: str, params: dict[str, Any] | None, context: str) -> pa.Table:
        """The whole answer of a read-only query as one Arrow table (timestamps in microseconds, as chunks are)."""
        def take(cur: Any) -> pa.Table:
            parts = [p if isinstance(p, pa.Table) else pa.Table.from_batches([p])
                     for p in cur.fetch_arrow_batches(force_microsecond_precision=True)]
            return pa.concat_tables(parts) if parts else pa.table({})

        return self._query(sql, params, context, take)

    def count(self, table: tuple[str, ...], source_filter: str | None) -> int:
        sql = f"SELECT COUNT(*) FROM {self.table_sql(table)}{where_sql(source_filter)}"
        return int(self.scan(sql, None, f"counting {'.'.join(table)}")[0][0])

    def day_counts(self, table: tuple[str, ...], column: str, source_filter: str | None,
                   utc: bool = False) -> list[DayCount]:
        """ONE aggregated query: rows per day (NULL keys as day None); `utc`: days of the UTC instant."""
        sql = (f"SELECT DATE({instant(column, utc)}) AS d, COUNT(*) FROM {self.table_sql(table)}"
               f"{where_sql(source_filter)} GROUP BY 1")
        rows = self.scan(sql, None, f"counting rows per day of {'.'.join(table)}.{column}")
        return [DayCount(_as_date(r[0]), int(r[1])) for r in rows]

    def hour_counts(
        self, table: tuple[str, ...], column: str, source_filter: str | None, days: list[date], utc: bool = False
    ) -> list[HourCount]:
        """ONE aggregated query: rows per hour of the given (heavy) days."""
        col = instant(column, utc)
        extra = and_sql(source_filter)
        placeholders = ", ".join(f"TO_DATE(%(d{i})s)" for i in range(len(days)))
        sql = (
            f"SELECT DATE_TRUNC('HOUR', {col}) AS h, COUNT(*) FROM {self.table_sql(table)} "
            f"WHERE DATE({col}) IN ({placeholders}){extra} GROUP BY 1"
        )
        params = {f"d{i}": d.isoformat() for i, d in enumerate(days)}
        rows = self.scan(sql, params, f"counting rows per hour of heavy days of {'.'.join(table)}.{column}")
        return [HourCount(_as_datetime(r[0]), int(r[1])) for r in rows]

    def hash_counts(
        self, table: tuple[str, ...], columns: list[str], source_filter: str | None, modulus: int
    ) -> dict[int, int]:
        """ONE aggregated query: rows per hash remainder."""
        sql = (
            f"SELECT {hash_expression(columns, '%(m)s')} AS r, COUNT(*) FROM {self.table_sql(table)}"
            f"{where_sql(source_filter)} GROUP BY 1"
        )
        rows = self.scan(sql, {"m": modulus}, f"counting rows per hash class of {'.'.join(table)}")
        return {int(r[0]): int(r[1]) for r in rows}

    def key_problems(self, table: tuple[str, ...], key: list[str], source_filter: str | None,
                     as_numbers: dict[str, int] | None = None) -> KeyProblems:
        """ONE aggregated query over the rows in scope: how many have a NULL in `key`, and how many repeat a key
        another row has (each beyond the first); a second query, only when keys repeat, for a few of them.
        `as_numbers`: key columns held as text that the target holds as numbers, compared as numbers of that scale
        (lib/typemap.numeric_key_scale); one that is no number counts as NULL (its chunk fails on it anyway)."""
        as_numbers = as_numbers or {}
        counted = self._column_keys.get((table, key[0], source_filter, self.snapshots.get(table))) \
            if len(key) == 1 and not as_numbers else None
        if counted is not None and not counted[1]:  # counted by key_buckets; repeats need the query for examples
            return KeyProblems(counted[0], 0, [])
        keyed = [f"TRY_TO_DECIMAL({quote_snowflake(c)}, 38, {as_numbers[c]})" if c in as_numbers else quote_snowflake(c)
                 for c in key]
        cols = ", ".join(keyed)
        any_null = " OR ".join(f"{k} IS NULL" for k in keyed)
        grouped = (f"SELECT {cols}, COUNT(*) AS N, ({any_null}) AS HAS_NULL FROM {self.table_sql(table)}"
                   f"{where_sql(source_filter)} GROUP BY {cols}")
        what = f"checking the key ({', '.join(key)}) of {'.'.join(table)}"
        rows = self.scan(f"SELECT COALESCE(SUM(IFF(HAS_NULL, N, 0)), 0), "
                              f"COALESCE(SUM(IFF(NOT HAS_NULL AND N > 1, N - 1, 0)), 0) FROM ({grouped}) AS K", None, what)
        nulls, repeats = int(rows[0][0]), int(rows[0][1])
        examples: list[tuple[Any, ...]] = []
        if repeats:
            examples = self.scan(f"SELECT * FROM ({grouped}) AS K WHERE NOT HAS_NULL AND N > 1 ORDER BY N DESC "
                                      "LIMIT 5", None, what)
        return KeyProblems(nulls, repeats, [(tuple(r[:len(key)]), int(r[len(key)])) for r in examples])

    def primary_key(self, table: tuple[str, ...]) -> list[str]:
        """The table's primary key columns, in key order. One SHOW PRIMARY KEYS per schema and session, so
        planning a schema's tables costs one query for all their keys."""
        db, schema, name = table
        if (db, schema) not in self._primary_keys:
            rows = self._fetchall(f"SHOW PRIMARY KEYS IN SCHEMA {quote_snowflake(db)}.{quote_snowflake(schema)}", None,
                                  f"reading the primary keys of the tables of {db}.{schema}")
            keys: dict[str, list[tuple[int, str]]] = {}
            # columns: created_on, database_name, schema_name, table_name, column_name, key_sequence, ...
            for r in rows:
                keys.setdefault(r[3], []).append((int(r[5]), r[4]))
            self._primary_keys[(db, schema)] = {t: [c for _, c in sorted(cols)] for t, cols in keys.items()}
        return list(self._primary_keys[(db, schema)].get(name, []))

    def key_buckets(
        self, table: tuple[str, ...], column: str, source_filter: str | None, bucket_rows: int, strings: bool = False
    ) -> tuple[list[KeyBucket], int]:
        """ONE aggregated query: sorted keys cut into buckets of about `bucket_rows`, plus the NULL count.

        RANK() gives equal keys one rank, so a key value never spans two buckets; MAX(rank) - MIN(rank)
        is the number of the bucket's rows below its highest key, which lets a heavy value stand alone. Equal keys
        share a bucket, so COUNT(*) - COUNT(DISTINCT k) over the buckets counts the rows that repeat a key: kept
        with the NULL count for a key check of this column (key_problems), which then needs no query.
        `strings`: the keys are text, kept exactly as Snowflake returns them (ordered by code point, the
        order of a column without a collation).
        """
        col = quote_snowflake(column)
        name = self.table_sql(table)
        extra = and_sql(source_filter)
        sql = (
            f"SELECT b, MIN(k), MAX(k), COUNT(*), MIN(r), MAX(r), COUNT(*) - COUNT(DISTINCT k) FROM ("
            f"SELECT k, r, FLOOR((r - 1) / %(n)s) AS b FROM ("
            f"SELECT {col} AS k, RANK() OVER (ORDER BY {col}) AS r "
            f"FROM {name} WHERE {col} IS NOT NULL{extra}) AS ranked) AS keyed GROUP BY b "
            f"UNION ALL SELECT -1, NULL, NULL, COUNT(*), NULL, NULL, 0 FROM {name} WHERE {col} IS NULL{extra}"
        )
        rows = self.scan(sql, {"n": bucket_rows}, f"bucketing keys of {'.'.join(table)}.{column}")
        buckets = []
        for b, low, high, count, min_rank, max_rank, _ in rows:
            if int(b) < 0:
                continue
            below_high = int(max_rank) - int(min_rank)  # rows of the bucket whose key is below its highest
            lowest, highest = (str(low), str(high)) if strings else _numeric_keys(table, column, low, high)
            buckets.append(KeyBucket(lowest, highest, int(count), int(count) - below_high))
        null_rows = sum(int(r[3]) for r in rows if int(r[0]) < 0)
        self._column_keys[(table, column, source_filter, self.snapshots.get(table))] = (
            null_rows, sum(int(r[6]) for r in rows if int(r[0]) >= 0))
        return buckets, null_rows

    def results_mode(self, setting: str) -> str:
        """How this source answers a chunk's query: "streamed" (result parts downloaded as they are read) or
        "whole" (one response holding every row). `auto` asks the session: Snowflake reports its
        CLIENT_RESULT_CHUNK_SIZE at login; a stand-in that answers in one response does not."""
        if setting != "auto":
            return setting
        self.connection()
        return "streamed" if self.reports_result_chunks else "whole"

    def sample_row_bytes(self, table: tuple[str, ...], columns: list[Column], source_filter: str | None,
                         rows: int = SAMPLE_ROWS) -> int | None:
        """Arrow bytes per row of up to `rows` rows as the connector hands them over, or None if there are none."""
        select = ", ".join(quote_snowflake(c.name) for c in columns)
        sql = f"SELECT {select} FROM {self.table_sql(table)}{where_sql(source_filter)} LIMIT %(n)s"

        def measure(cur: Any) -> tuple[int, int]:
            parts = list(cur.fetch_arrow_batches(force_microsecond_precision=True))
            _built_from(parts[0] if parts else None)
            return sum(p.num_rows for p in parts), sum(p.nbytes for p in parts)

        count, nbytes = self._query(sql, {"n": rows}, f"sampling rows of {'.'.join(table)}", measure)
        return -(-nbytes // count) if count else None

    def read(
        self,
        table: tuple[str, ...],
        columns: list[Column],
        bounds: Bounds,
        source_filter: str | None,
        batch_size: int,
        on_part: Callable[[pa.Table | pa.RecordBatch], None] | None = None,
    ) -> Iterator[pa.RecordBatch]:
        """Stream the chunk's rows as Arrow record batches of at most `batch_size` rows. Each result part
        the connector hands over (a downloaded result chunk, or the whole result) is shown to `on_part`
        first, so the memory budget sees what a thread really holds."""
        predicate, params = chunk_predicate(bounds)
        if source_filter:
            predicate = f"({predicate}){and_sql(source_filter)}"
        select = ", ".join(quote_snowflake(c.name) for c in columns)
        sql = f"SELECT {select} FROM {self.table_sql(table)} WHERE {predicate}"
        context = f"reading {'.'.join(table)} where {bounds.describe()}"
        cur = None
        try:
            cur = self.connection().cursor()
            self._reading = cur
            run(cur, sql, params)
            # microseconds in every batch: otherwise the connector picks the unit per batch (nanoseconds, or
            # microseconds for years outside 1677-2262) and cannot combine one result chunk's batches
            with _one_at_a_time_until_arrow_is_set_up():  # the first part's iterator is built here
                parts = cur.fetch_arrow_batches(force_microsecond_precision=True)
                part = next(parts, None)
                _built_from(part)
            while part is not None:
                if on_part is not None:
                    on_part(part)
                batches = part.to_batches(max_chunksize=batch_size) if isinstance(part, pa.Table) else [part]
                del part  # the batches keep its buffers only as long as they are in use
                batches.reverse()
                while batches:
                    yield batches.pop()  # no reference left here once the consumer lets the batch go
                part = next(parts, None)
        except GeneratorExit:
            raise
        except Exception as exc:
            raise classify(exc, context) from exc
        finally:
            self._reading = None
            if cur is not None:
                with contextlib.suppress(Exception):  # the read's own error, if any, is the one that matters
                    cur.close()

    def cancel(self) -> None:
        """From another thread: ask Snowflake to stop the read in progress (its chunk was given up).
        Best effort and never blocking: the request runs in a daemon thread."""
        cur = self._reading
        if cur is None:
            return

        def abort() -> None:
            with contextlib.suppress(Exception):
                if cur.sfqid:
                    cur.abort_query(cur.sfqid)
                elif cur._request_id is not None:  # still waiting for the statement's first answer
                    cur.connection._cancel_query(cur.query or "", cur._request_id)

        threading.Thread(target=abort, name="snowflake-cancel", daemon=True).start()


def retention_by_table(columns: list[str], rows: list[tuple[Any, ...]]) -> dict[str, int | None]:
    """Each table's retention_time (days) in a SHOW TABLES answer (None where it does not say)."""
    names = [c.lower() for c in columns]
    out: dict[str, int | None] = {}
    for row in rows:
        found = dict(zip(names, row, strict=False))
        retention = found.get("retention_time")
        out[str(found.get("name"))] = None if retention in (None, "") else int(retention)
    return out


def _numeric_keys(table: tuple[str, ...], column: str, low: Any, high: Any) -> tuple[Decimal, Decimal]:
    lowest, highest = Decimal(str(low)), Decimal(str(high))
    if lowest.is_nan() or highest.is_nan():
        raise FatalError(f"{'.'.join(table)}.{column} holds NaN values, which have no place in a key range: "
                         "choose another chunking column")
    return lowest, highest


def _timestamp_literal(text: str) -> str:
    """A snapshot timestamp, checked to be one before it goes into SQL."""
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}(\.\d{1,9})?[+-]\d{2}:\d{2}", text):
        raise FatalError(f"the run's snapshot {text!r} is not a timestamp")
    return text


def _columns_of(db: str) -> str:
    """The FROM and WHERE of a query of a table's columns; parameters `schema` and `table`."""
    return (f"FROM {quote_snowflake(db)}.information_schema.columns "
            "WHERE table_schema = %(schema)s AND table_name = %(table)s")


def columns_digest_sql(db: str) -> str:
    """A query of one value: the MD5 of the table's columns as describe reads them (lib/plan/probe.columns_digest
    computes the same from a stored description), so that a query can tell whether they changed without listing
    them. Parameters `schema` and `table`."""
    fields = [f"COALESCE(TO_VARCHAR({f}), '')" for f in ("numeric_precision", "numeric_scale",
                                                          "character_maximum_length")]
    line = " || CHR(31) || ".join(["column_name", "data_type", *fields, "is_nullable", "COALESCE(collation_name, '')"])
    return f"SELECT MD5(LISTAGG({line}, CHR(30)) WITHIN GROUP (ORDER BY ordinal_position)) {_columns_of(db)}"


def chunk_predicate(bounds: Bounds, tag: str = "") -> tuple[str, dict[str, Any]]:
    """SQL predicate (with bound parameters) selecting exactly the rows of a chunk. `tag` suffixes the
    parameter names, so that the predicates of several chunks can share one statement."""
    if bounds.kind == "all":
        return "TRUE", {}
    if bounds.kind == "hash":
        assert bounds.hash_columns and bounds.modulus
        return (f"{hash_expression(list(bounds.hash_columns), f'%(m{tag})s')} = %(r{tag})s",
                {f"m{tag}": bounds.modulus, f"r{tag}": bounds.remainder})
    assert bounds.column is not None
    col = quote_snowflake(bounds.column)
    if bounds.kind == "null":
        return f"{col} IS NULL", {}
    if bounds.key_kind == "date":
        key, cast = f"DATE({instant(bounds.column, bounds.utc)})", "TO_DATE(%({p})s)"
    elif bounds.key_kind == "hour":
        key, cast = f"DATE_TRUNC('HOUR', {instant(bounds.column, bounds.utc)})", "TO_TIMESTAMP_NTZ(%({p})s)"
    else:  # numeric, or string: the column's own order, code point order (a collated column is never a chunk key)
        key, cast = col, "%({p})s"
    parts = [f"{col} IS NOT NULL"]
    params: dict[str, Any] = {}
    for name, value, operator in (("lo", bounds.lo, ">="), ("hi", bounds.hi, "<")):
        if value is not None:
            parts.append(f"{key} {operator} {cast.format(p=name + tag)}")
            params[name + tag] = Decimal(value) if bounds.key_kind == "numeric" else value
    return " AND ".join(parts), params


def instant(column: str, utc: bool) -> str:
    """The column for a day or hour key: as it is, or (`utc`: TIMESTAMP_TZ/LTZ) its UTC instant. Snowflake's
    DATE() of a TIMESTAMP_TZ takes the value's own offset, not the session's zone."""
    col = quote_snowflake(column)
    return f"CONVERT_TIMEZONE('UTC', {col})" if utc else col


def hash_expression(columns: list[str], modulus: str) -> str:
    """Remainder class of a row: non-negative whether HASH() is signed (Snowflake) or not."""
    hashed = f"HASH({', '.join(quote_snowflake(c) for c in columns)})"
    return f"MOD(MOD({hashed}, {modulus}) + {modulus}, {modulus})"


def run(cur: Any, sql: str, params: dict[str, Any] | None = None) -> Any:
    """Execute on a connector cursor, always with a parameter dict: the connector then interpolates every
    statement the same way, so the `%%` written by quote_snowflake and raw_sql always becomes `%`."""
    return cur.execute(sql, params or {})


def _as_datetime(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value.replace(tzinfo=None)
    return datetime.fromisoformat(str(value))


def _as_date(value: Any) -> date | None:
    if value is None:
        return None
    if isinstance(value, date):
        return value if type(value) is date else value.date()  # type: ignore[union-attr]
    return date.fromisoformat(str(value)[:10])
