"""The write step of a chunk, one small strategy per load mode (lib/load_modes.py chooses it once per
table). Every loader runs inside the chunk's transaction; the worker then marks the chunk done under
its fence and commits, the same way for every mode."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import psycopg
import pyarrow as pa

from lib import postgres_target as pg
from lib.load_modes import TableLoad
from lib.typemap import Column


@dataclass(frozen=True)
class Written:
    rows: int  # rows read from the source
    bytes: int  # binary COPY bytes
    inserted: int  # rows new in the destination
    updated: int  # existing rows changed (merge); rows - inserted - updated were already there as they are


class Loader(Protocol):
    def write(self, conn: psycopg.Connection[Any], columns: list[Column], batches: Iterable[pa.RecordBatch]) -> Written: ...


@dataclass(frozen=True)
class CopyLoader:
    """copy and swap: the destination is empty or new, so a plain binary COPY is exact (and fastest)."""

    destination: tuple[str, str]

    def write(self, conn: psycopg.Connection[Any], columns: list[Column], batches: Iterable[pa.RecordBatch]) -> Written:
        rows, nbytes = pg.copy_batches(conn, self.destination, columns, batches)
        return Written(rows, nbytes, rows, 0)


@dataclass(frozen=True)
class KeyedLoader:
    """insert_missing and merge: COPY into a TEMP ... ON COMMIT DROP stage, then one INSERT ... ON CONFLICT
    on the key, so rows already in the target are skipped, or updated only where a value differs."""

    destination: tuple[str, str]
    key: tuple[str, ...]
    update: bool

    def write(self, conn: psycopg.Connection[Any], columns: list[Column], batches: Iterable[pa.RecordBatch]) -> Written:
        stage = pg.create_stage(conn, self.destination, columns)
        rows, nbytes = pg.copy_into(conn, stage, columns, batches)
        inserted, updated = pg.insert_from_stage(conn, self.destination, columns, stage, self.key, self.update)
        return Written(rows, nbytes, inserted, updated)


def loader_for(load: TableLoad) -> Loader:
    if load.staged:
        return KeyedLoader(load.destination, load.key, update=load.mode == "merge")
    return CopyLoader(load.destination)
