"""A claimed chunk's lease: renewed while its copy makes progress, given up when it makes none.

The keeper renews every third of the lease from its own connection, but only if the copy moved since
the last renewal (a batch read from Snowflake or written to PostgreSQL). A worker stuck in a read that
never answers, or on a PostgreSQL lock, stops renewing; when a whole lease passes without progress the
keeper declares the chunk lost: it sets `lost` (the worker stops waiting for batches), cancels the
worker's PostgreSQL statement and asks Snowflake to stop the read. Whoever claims the chunk next gets a
new fence, so the old worker could never commit it anyway; this only frees the worker sooner.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from lib.config.connections import connect
from lib.errors import TransientError
from lib.ledger.chunks import status_under_fence
from lib.ledger.schema import SCHEMA
from lib.log import ctx, get_logger
from lib.models import ClaimedChunk


class LeaseLostError(TransientError):
    """The chunk was given up: its copy made no progress for a whole lease, or another worker took it."""


class Progress:
    """A counter the copy ticks for every batch read and written; the keeper only compares values."""

    def __init__(self) -> None:
        self._value = 0
        self._lock = threading.Lock()

    def tick(self) -> None:
        with self._lock:
            self._value += 1

    @property
    def value(self) -> int:
        return self._value


class LeaseKeeper:
    def __init__(self, connect_args: dict[str, Any], chunk: ClaimedChunk, lease_seconds: int, progress: Progress,
                 on_lost: Callable[[str], None] | None = None) -> None:
        self._args = connect_args
        self._chunk = chunk
        self._lease = lease_seconds
        self._progress = progress
        self._on_lost = on_lost
        self._stop = threading.Event()
        self.lost = threading.Event()
        self.lost_reason = ""
        self.renewals = 0
        self._thread = threading.Thread(target=self._run, name=f"lease-{chunk.chunk_id}", daemon=True)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        conn = None
        seen = self._progress.value
        deadline = time.monotonic() + self._lease  # the claim set the lease from about now
        try:
            while not self._stop.wait(max(min(self._lease / 3, deadline - time.monotonic()), 0.01)):
                current = self._progress.value
                if current == seen:
                    if time.monotonic() >= deadline:
                        self._give_up(f"no progress for {self._lease}s (lease_seconds)")
                        return
                    continue
                seen = current
                sent = time.monotonic()
                try:
                    conn = conn or connect(self._args, autocommit=True)
                    renewed = conn.execute(
                        f"UPDATE {SCHEMA}.migration_chunk_status SET lease_expires_at = now() + make_interval(secs => %s) "
                        "WHERE chunk_id = %s AND fence = %s AND status = 'running'",
                        (self._lease, self._chunk.chunk_id, self._chunk.fence),
                    ).rowcount
                except Exception as exc:  # noqa: BLE001 - the next tick tries again; the fence keeps us safe
                    get_logger().warning("could not renew the lease: %s", exc, **ctx(chunk=self._chunk.chunk_no))
                    conn = None
                    continue
                if not renewed:
                    if status_under_fence(conn, self._chunk) == "done":
                        return  # its own copy committed meanwhile: nothing to keep
                    self._give_up("another worker took the chunk over")
                    return
                deadline = sent + self._lease
                self.renewals += 1
        finally:
            if conn is not None:
                conn.close()

    def _give_up(self, reason: str) -> None:
        self.lost_reason = reason
        self.lost.set()
        get_logger().warning("giving chunk %s up: %s", self._chunk.chunk_no, reason,
                             **ctx(run_id=self._chunk.run_id, table=self._chunk.table_name, chunk=self._chunk.chunk_no))
        if self._on_lost is not None:
            self._on_lost(reason)
