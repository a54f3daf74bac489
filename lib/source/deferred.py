"""Snowflake queries that may outlast an invocation: a Step Functions step submits a stats or count query with
execute_async, keeps its query id (in the ledger: migration_status.pending_queries), waits for it at most
`wait_seconds`, and if it still runs returns (StillRunning); a later invocation of the step asks Snowflake for
the same query's state by id and takes its result instead of running it again. A local run waits as long
as the query takes (no deferral)."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lib.errors import StillRunning, classify


@dataclass
class Deferred:
    """Where a step keeps the ids of its queries (three callables over the ledger), and how long it waits."""

    find: Callable[[str], str | None]  # statement key → query id of a submitted, unfinished query
    keep: Callable[[str, str], None]
    drop: Callable[[str], None]
    wait_seconds: float
    poll_seconds: float = 0.5

    def fetchall(self, conn: Any, sql: str, params: dict[str, Any] | None, context: str) -> list[tuple[Any, ...]]:
        """The rows of `sql`: of the query submitted earlier for the same statement, or of one submitted now."""
        key = hashlib.sha256(json.dumps([sql, params or {}], sort_keys=True, default=str).encode()).hexdigest()
        query_id = self.find(key)
        if query_id is None:
            with conn.cursor() as cur:
                cur.execute_async(sql, params or {})
                query_id = str(cur.sfqid)
            self.keep(key, query_id)
        deadline = time.monotonic() + self.wait_seconds
        try:
            while conn.is_still_running(conn.get_query_status_throw_if_error(query_id)):
                if time.monotonic() >= deadline:
                    raise StillRunning(query_id, context)
                time.sleep(self.poll_seconds)
            with conn.cursor() as cur:
                cur.get_results_from_sfqid(query_id)
                rows = list(cur.fetchall())
        except StillRunning:
            raise
        except Exception as exc:
            self.drop(key)  # failed or expired: the next attempt submits it again
            raise classify(exc, f"{context} (Snowflake query {query_id})") from exc
        self.drop(key)
        return rows
