"""Run a fakesnow server in the foreground, for the local stack and the tests.

Project-owned adjustments, all at start-up and none touching fakesnow's files:
- NULL TIMESTAMP values keep their null mask (fakesnow 0.12.1 builds the timestamp struct without
  one, so NULLs would arrive as 1970-01-01);
- with --db-path, every session shares one on-disk database, so data survives a server restart
  without clients having to send fakesnow-specific session parameters;
- Snowflake functions verification uses that fakesnow lacks: MD5_NUMBER_LOWER64 (a DuckDB macro with
  Snowflake's definition: the lower 64 bits of the MD5 digest, big-endian) and the temporary UDF
  MIGRATION_JSONB_TEXT (lib/check/jsonb_text.py, registered as a DuckDB function; its CREATE statement is
  answered without running it);
- `AT(TIMESTAMP => ...)` (Time Travel) is emulated by a copy: the first read of a table AT a timestamp
  copies the table as it is into the schema _TIME_TRAVEL, and every read AT that timestamp, that first
  one included, reads the copy. So a run's reads see the table as it was when the run first read it,
  whatever is written meanwhile (real Snowflake: as it was at the timestamp itself; the engine reads right
  after taking it). Without a handle on the database (never, once started) the copy is made by the first
  statement that may change the table (INSERT, UPDATE, DELETE, MERGE, TRUNCATE, ALTER, DROP, CREATE OR
  REPLACE naming it, in its database), before it runs;
- with --result-chunk-mb, results answer like Snowflake's large results: the first part inline and the
  rest as result chunks of about that size, which the connector downloads from this server as it reads
  them (fakesnow alone answers every query in one response); the login then reports
  CLIENT_RESULT_CHUNK_SIZE, as Snowflake's does.

    python -m scripts.fakesnow_server --port 8765 [--db-path DIR] [--ready-file FILE] [--result-chunk-mb MB]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import gzip
import hashlib
import json
import logging
import os
import re
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc


def _patch_timestamp_nulls() -> None:
    import fakesnow.arrow

    original = fakesnow.arrow.timestamp_to_sf_struct

    def with_null_mask(ts: pa.Array | pa.ChunkedArray) -> pa.Array:
        if isinstance(ts, pa.ChunkedArray):
            ts = ts.combine_chunks()
        struct = original(ts)
        if ts.null_count == 0:
            return struct
        children = [pc.fill_null(struct.field(i), 0) for i in range(struct.type.num_fields)]
        fields = [struct.type.field(i) for i in range(struct.type.num_fields)]
        return pa.StructArray.from_arrays(children, fields=fields, mask=ts.is_null())

    fakesnow.arrow.timestamp_to_sf_struct = with_null_mask


_IDENT = r'(?:"(?:[^"]|"")+"|[A-Za-z_][A-Za-z0-9_$]*)'
_AT_READ = re.compile(rf"({_IDENT}\.{_IDENT}\.{_IDENT})\s+AT\s*\(\s*TIMESTAMP\s*=>\s*'([^']*)'::TIMESTAMP_TZ\s*\)",
                      re.IGNORECASE)
_WRITE = re.compile(r"^\s*(INSERT|UPDATE|DELETE|MERGE|TRUNCATE|ALTER\s+TABLE|DROP|CREATE\s+OR\s+REPLACE)\b", re.IGNORECASE)
_CREATE_UDF = re.compile(r"^\s*CREATE\s+OR\s+REPLACE\s+TEMPORARY\s+FUNCTION\s+MIGRATION_JSONB_TEXT\b", re.IGNORECASE)


_SET_RESULT_CHUNK_SIZE = re.compile(r"^\s*ALTER\s+SESSION\s+SET\s+CLIENT_RESULT_CHUNK_SIZE\s*=\s*\d+\s*$", re.IGNORECASE)


def _parts(name: str) -> tuple[str, ...]:
    return tuple(p[1:-1].replace('""', '"') if p.startswith('"') else p.upper()
                 for p in re.findall(_IDENT, name))


class TimeTravel:
    """Copy-on-write history for AT(TIMESTAMP => ...) reads (see the module's docstring)."""

    SCHEMA = "_TIME_TRAVEL"

    def __init__(self, duck: Any = None) -> None:
        self.duck = duck  # a DuckDB connection of the shared database (fakesnow's)
        self._lock = threading.Lock()
        self._pending: set[tuple[tuple[str, ...], str]] = set()  # (db, schema, table), timestamp
        self._copies: dict[tuple[tuple[str, ...], str], str] = {}

    def read_sql(self, sql: str) -> str:
        """`sql` with every AT read turned into a read of the table's copy, or of the table while it has none."""
        def replace(match: re.Match[str]) -> str:
            table, at = _parts(match.group(1)), match.group(2)
            with self._lock:
                copy = self._copies.get((table, at))
                if copy is None and self.duck is not None:
                    # copied now, not at the next write: another session's write could otherwise land between
                    # this statement's rewriting and its running, and this first read would see a later state
                    # than every read after it
                    with contextlib.suppress(Exception):  # no such table: the read fails as a read would
                        copy = self._copies[(table, at)] = self._copy(table, at)
                if copy is None:
                    self._pending.add((table, at))
            return copy or match.group(1)

        return _AT_READ.sub(replace, sql)

    def before_write(self, sql: str, database: str | None) -> None:
        """Copy each registered table this statement may change, as it is now, before it runs."""
        if self.duck is None or not _WRITE.match(sql):
            return
        words = {w.upper() for w in re.findall(r"[A-Za-z_][A-Za-z0-9_$]*", sql)} | set(re.findall(r'"([^"]+)"', sql))
        with self._lock:
            due = [(t, at) for t, at in self._pending
                   if t[2] in words and (database is None or t[0] == database.upper())]
            for table, at in due:
                self._pending.discard((table, at))
                copy = self._copy(table, at)
                self._copies[(table, at)] = copy

    def _copy(self, table: tuple[str, ...], at: str) -> str:
        db, schema, name = (part.replace('"', '""') for part in table)
        suffix = hashlib.sha1(at.encode()).hexdigest()[:10].upper()
        copy = f'"{db}"."{self.SCHEMA}"."{schema}__{name}__{suffix}"'
        cur = self.duck.cursor()
        try:
            cur.execute(f'CREATE SCHEMA IF NOT EXISTS "{db}"."{self.SCHEMA}"')
            cur.execute(f'CREATE OR REPLACE TABLE {copy} AS SELECT * FROM "{db}"."{schema}"."{name}"')
        finally:
            cur.close()
        return copy


TIME_TRAVEL = TimeTravel()


def stand_in_sql(sql: str) -> str:
    """What the stand-in runs for a statement the engine sends to Snowflake."""
    if _CREATE_UDF.match(sql):
        return "SELECT 'MIGRATION_JSONB_TEXT is built into the stand-in' AS status"
    if _SET_RESULT_CHUNK_SIZE.match(sql):  # the part size is the launcher's --result-chunk-mb
        return "SELECT 'Statement executed successfully.' AS status"
    return TIME_TRAVEL.read_sql(sql)


def _jsonb_text_vector(documents: pa.Array) -> pa.Array:
    """MIGRATION_JSONB_TEXT for a vector of values at a time (a per-row Python UDF costs DuckDB far more)."""
    from lib.check.jsonb_text import jsonb_text

    return pa.array([jsonb_text(d) for d in documents.to_pylist()], pa.string())


def _patch_functions() -> None:
    """Every DuckDB connection fakesnow opens gets the functions verification calls."""
    import duckdb
    import fakesnow.instance

    from lib.check.jsonb_text import UDF_NAME

    original = fakesnow.instance.FakeSnow.connect

    def connect(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        conn = original(self, *args, **kwargs)
        duck = conn._duck_conn  # fakesnow keeps no public handle on it
        duck.execute("CREATE OR REPLACE TEMP MACRO m_d5_number_lower64(s) AS "
                     "CAST(CAST(('0x' || substr(md5(s), 17, 16)) AS UBIGINT) AS HUGEINT)")
        with contextlib.suppress(duckdb.CatalogException):  # the cursors of one DuckDB database share it
            duck.create_function(UDF_NAME, _jsonb_text_vector, ["VARCHAR"], "VARCHAR", type="arrow",
                                 null_handling="special")
        return conn

    fakesnow.instance.FakeSnow.connect = connect


RESULTS_PATH = "/fakesnow-results/"


class ResultChunks:
    """Large Arrow results cut into an inline first part and result chunks served from RESULTS_PATH. Like
    Snowflake's presigned URLs, a part can be downloaded again (the connector retries a slow download)
    until it expires."""

    EXPIRES_SECONDS = 600

    def __init__(self, chunk_bytes: int) -> None:
        self.chunk_bytes = chunk_bytes
        self._parts: dict[str, tuple[float, bytes]] = {}
        self._lock = threading.Lock()

    def split(self, data: dict[str, Any], base_url: str) -> None:
        encoded = data.get("rowsetBase64")
        if data.get("queryResultFormat") != "arrow" or not encoded or len(encoded) * 3 // 4 <= self.chunk_bytes:
            return
        raw = base64.b64decode(encoded)
        reader = pa.ipc.open_stream(raw)
        table = reader.read_all()
        rows = max(1, table.num_rows * self.chunk_bytes // len(raw))
        inline = max(1, rows // 16)  # like Snowflake's: a small first part in the answer itself
        starts = range(inline, table.num_rows, rows)
        data["rowsetBase64"] = base64.b64encode(_ipc(reader.schema, table.slice(0, inline))).decode()
        data["chunks"] = []
        now = time.monotonic()
        with self._lock:
            for old in [k for k, (at, _) in self._parts.items() if now - at > self.EXPIRES_SECONDS]:
                del self._parts[old]
        for start in starts:
            part = _ipc(reader.schema, table.slice(start, rows))
            key = uuid.uuid4().hex
            with self._lock:
                self._parts[key] = (now, part)
            data["chunks"].append({"url": f"{base_url}{RESULTS_PATH}{key}", "rowCount": min(rows, table.num_rows - start),
                                   "uncompressedSize": len(part), "compressedSize": len(part)})

    def get(self, key: str) -> bytes | None:
        with self._lock:
            found = self._parts.get(key)
        return found[1] if found else None


def _ipc(schema: pa.Schema, table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


async def _read_body(receive: Any) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def _respond(send: Any, status: int, body: bytes, content_type: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class _ServeResultChunks:
    """ASGI middleware: result chunks are downloaded from RESULTS_PATH; query answers are cut into them,
    and the login reports CLIENT_RESULT_CHUNK_SIZE."""

    def __init__(self, app: Any, chunks: ResultChunks, chunk_mb: float) -> None:
        self.app, self.chunks, self.chunk_mb = app, chunks, chunk_mb

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if path.startswith(RESULTS_PATH):
            part = self.chunks.get(path[len(RESULTS_PATH):])
            if part is None:
                await _respond(send, 404, b"no such result chunk", b"text/plain")
            else:
                await _respond(send, 200, part, b"application/octet-stream")
            return
        if not path.startswith(("/queries/v1/query-request", "/session/v1/login-request")):
            await self.app(scope, receive, send)
            return
        started: dict[str, Any] = {}
        body: list[bytes] = []

        async def capture(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                started.update(message)
                return
            body.append(message.get("body", b""))
            if message.get("more_body"):
                return
            host = dict(scope["headers"]).get(b"host", b"127.0.0.1").decode()
            # off the event loop, so downloads of other results go on meanwhile (the connector gives one 7 s)
            encoded = await asyncio.to_thread(self._rewrite, path, b"".join(body), f"http://{host}")
            headers = [(k, str(len(encoded)).encode() if k == b"content-length" else v) for k, v in started["headers"]]
            await send({**started, "headers": headers})
            await send({"type": "http.response.body", "body": encoded})

        await self.app(scope, receive, capture)

    def _rewrite(self, path: str, body: bytes, base_url: str) -> bytes:
        answer = json.loads(body)
        data = answer.get("data") or {}
        if path.startswith("/session"):
            data.get("parameters", []).append({"name": "CLIENT_RESULT_CHUNK_SIZE", "value": self.chunk_mb})
        else:
            self.chunks.split(data, base_url)
        return json.dumps(answer).encode()


class _RewriteStatements:
    """ASGI middleware: the statement of each query request passes through stand_in_sql."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/queries/v1/query-request"):
            await self.app(scope, receive, send)
            return
        body = await _read_body(receive)
        headers = dict(scope["headers"])
        zipped = headers.get(b"content-encoding") == b"gzip"
        data = json.loads(gzip.decompress(body) if zipped else body)
        await asyncio.to_thread(TIME_TRAVEL.before_write, data["sqlText"], _session_database(headers))
        data["sqlText"] = stand_in_sql(data["sqlText"])
        body = json.dumps(data).encode()
        body = gzip.compress(body) if zipped else body
        scope = {**scope, "headers": [(k, str(len(body)).encode() if k == b"content-length" else v)
                                      for k, v in scope["headers"]]}
        sent = False

        async def replay() -> dict[str, Any]:
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


def _session_database(headers: dict[bytes, bytes]) -> str | None:
    """The current database of the session that sent a request (its token is in the Authorization header)."""
    import fakesnow.server

    auth = headers.get(b"authorization", b"").decode()
    conn = fakesnow.server.sessions.get(auth[17:-1])
    return getattr(conn, "database", None) if conn is not None else None


def _exit_when_gone(pid: int) -> None:
    def watch() -> None:
        while True:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                os._exit(0)
            time.sleep(1)

    threading.Thread(target=watch, daemon=True).start()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--db-path", help="directory for persistent databases (default: in memory)")
    parser.add_argument("--ready-file", help="write the connect kwargs here once the server listens")
    parser.add_argument("--exit-with", type=int, help="exit when the process with this pid is gone (tests)")
    parser.add_argument("--result-chunk-mb", type=float, default=0.0,
                        help="answer large results in result chunks of about this many MiB, downloaded separately")
    args = parser.parse_args()
    if args.exit_with:
        _exit_when_gone(args.exit_with)

    _patch_timestamp_nulls()
    _patch_functions()
    import fakesnow.server
    import uvicorn
    from fakesnow.instance import FakeSnow

    if args.db_path:
        os.makedirs(args.db_path, exist_ok=True)
        fakesnow.server.shared_fs = FakeSnow(db_path=args.db_path)
    TIME_TRAVEL.duck = fakesnow.server.shared_fs.duck_conn
    logging.getLogger("fakesnow.server").setLevel(logging.WARNING)

    app: Any = _RewriteStatements(fakesnow.server.app)
    if args.result_chunk_mb > 0:
        app = _ServeResultChunks(app, ResultChunks(int(args.result_chunk_mb * 2**20)), args.result_chunk_mb)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning")
    server = uvicorn.Server(config)
    if args.ready_file:
        ready = Path(args.ready_file)
        original_startup = server.startup

        async def startup(sockets=None):  # type: ignore[no-untyped-def]
            await original_startup(sockets)
            ready.write_text(json.dumps({"host": args.host, "port": args.port, "pid": os.getpid()}))

        server.startup = startup  # type: ignore[method-assign]
    server.run()


if __name__ == "__main__":
    main()
