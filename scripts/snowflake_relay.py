"""A relay between the Snowflake connector and the fakesnow server: how a failing, hanging or distant
Snowflake looks to the connector. `canned` answers some paths with an HTTP status; `stall` holds the
statements it matches without ever answering (until the relay shuts down); `delay` holds each statement
that long before relaying it, as a warehouse takes time to compile, queue and start a query."""

from __future__ import annotations

import gzip
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class SnowflakeProxy(ThreadingHTTPServer):
    """Relays the connector's requests to fakesnow, except paths given a canned answer in `canned`
    (path prefix -> (HTTP status, JSON body or None)): how a failing Snowflake looks to the connector."""

    daemon_threads = True

    def __init__(self, target: str) -> None:
        self.target = target
        self.canned: dict[str, tuple[int, dict[str, Any] | None]] = {}
        self.stall: Callable[[str], bool] | None = None  # sqlText -> hold this statement forever?
        self.stalled: list[str] = []
        self.delay: Callable[[str], float] | None = None  # sqlText -> seconds to hold it before relaying it
        self.seen: list[str] = []  # sqlText of every statement relayed or stalled, in order
        self.paths: list[str] = []  # every request path, in order (abort requests included)
        self.released = threading.Event()
        super().__init__(("127.0.0.1", 0), _ProxyHandler)

    @property
    def port(self) -> int:
        return int(self.server_address[1])


class _ProxyHandler(BaseHTTPRequestHandler):
    server: SnowflakeProxy

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        self._relay("POST")

    def do_GET(self) -> None:
        self._relay("GET")

    def _relay(self, method: str) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.paths.append(self.path)
        sql = _sql_text(body, self.headers.get("Content-Encoding")) if self.path.startswith(QUERY_PATH) else None
        if sql is not None:
            self.server.seen.append(sql)
            if self.server.stall is not None and self.server.stall(sql):
                self.server.stalled.append(sql)
                self.server.released.wait()
                return  # never answered: the connection closes without a response
            if self.server.delay is not None:
                time.sleep(self.server.delay(sql))
        for prefix, (status, payload) in self.server.canned.items():
            if self.path.startswith(prefix) and status == TRUNCATED:
                self._truncated()
                return
            if self.path.startswith(prefix):
                self._answer(status, b"" if payload is None else json.dumps(payload).encode(), {"Content-Type": "application/json"})
                return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length", "connection")}
        request = urllib.request.Request(self.server.target + self.path, data=body if method == "POST" else None,
                                         method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                status, data, reply = response.status, response.read(), response.headers
        except urllib.error.HTTPError as failure:
            status, data, reply = failure.code, failure.read(), failure.headers
        self._answer(status, data, {k: reply[k] for k in ("Content-Type", "Content-Encoding") if reply.get(k)})

    def _truncated(self) -> None:
        """A 200 that promises more body than it sends, then closes: a server gone mid-answer."""
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "34136")
        self.end_headers()
        self.wfile.write(b'{"data": {"rowset": [')
        self.wfile.flush()
        self.close_connection = True
        self.connection.shutdown(socket.SHUT_RDWR)

    def _answer(self, status: int, data: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


QUERY_PATH = "/queries/v1/query-request"
TRUNCATED = -1  # a canned status: the answer breaks off mid-body (_truncated)


def _sql_text(body: bytes, encoding: str | None) -> str | None:
    try:
        data = json.loads(gzip.decompress(body) if encoding == "gzip" else body)
    except (ValueError, OSError):
        return None
    return data.get("sqlText") if isinstance(data, dict) else None
