"""Rows that planning already read for a table's one chunk: a small incremental window is read by the query that
finds its high end (lib/plan/probe.py), and its chunk is written from those rows instead of being read again.
Only a local run holds them (its workers are threads of the planning process), for itself alone; a chunk
claimed elsewhere, or retried, is read as usual."""

from __future__ import annotations

import threading

import pyarrow as pa


class EarlyReads:
    """The rows of the run's tables read while planning, each taken once by the chunk that writes them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[str, pa.Table] = {}

    def keep(self, table: str, rows: pa.Table) -> None:
        with self._lock:
            self._held[table] = rows

    def take(self, table: str) -> pa.Table | None:
        """The rows kept for the table's chunk, once: a later attempt reads the source."""
        with self._lock:
            return self._held.pop(table, None)

    def held_bytes(self) -> int:
        with self._lock:
            return sum(t.nbytes for t in self._held.values())
