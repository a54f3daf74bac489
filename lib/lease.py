"""Keeps a long chunk's lease alive: renews it every third of the lease from its own connection."""

from __future__ import annotations

import threading
from typing import Any

from lib import postgres_target as pg
from lib.log import ctx, get_logger
from lib.models import ClaimedChunk
from lib.status import SCHEMA


class LeaseKeeper:
    def __init__(self, connect_args: dict[str, Any], chunk: ClaimedChunk, lease_seconds: int) -> None:
        self._args = connect_args
        self._chunk = chunk
        self._lease = lease_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{chunk.chunk_id}", daemon=True)
        self.renewals = 0

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        conn = None
        try:
            while not self._stop.wait(self._lease / 3):
                try:
                    conn = conn or pg.connect(self._args, autocommit=True)
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
                    return  # reclaimed by another worker: our commit will be refused by the fence
                self.renewals += 1
        finally:
            if conn is not None:
                conn.close()
