"""The write step of a chunk, one small strategy per load mode (lib/load_modes.py chooses it once per
table). Every loader runs inside the chunk's transaction; the worker then marks the chunk done under
its fence and commits, the same way for every mode."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import psycopg
import pyarrow as pa
from psycopg import sql

from lib import postgres_target as pg
from lib.errors import FatalError, TransientError
from lib.load_modes import TableLoad
from lib.models import Bounds
from lib.typemap import Column
from lib.wire import Wire


@dataclass(frozen=True)
class Written:
    rows: int  # rows read from the source
    bytes: int  # binary COPY bytes
    inserted: int  # rows new in the destination
    updated: int  # existing rows changed (merge); rows - inserted - updated were already there as they are


class Loader(Protocol):
    def write(self, conn: psycopg.Connection[Any], wire: Wire, batches: Iterable[pa.RecordBatch],
              bounds: Bounds | None = None) -> Written: ...


@dataclass(frozen=True)
class CopyLoader:
    """copy and swap: the destination is empty or new, so a plain binary COPY is exact (and fastest)."""

    destination: tuple[str, str]

    def write(self, conn: psycopg.Connection[Any], wire: Wire, batches: Iterable[pa.RecordBatch],
              bounds: Bounds | None = None) -> Written:
        rows, nbytes = pg.copy_batches(conn, self.destination, wire, batches)
        return Written(rows, nbytes, rows, 0)


@dataclass(frozen=True)
class RepairLoader:
    """verify --repair of a copy or swap load: the chunk's key range is emptied in the target and copied
    again, in the chunk's one transaction, so a crash leaves the old rows or the new ones, never half."""

    destination: tuple[str, str]

    def write(self, conn: psycopg.Connection[Any], wire: Wire, batches: Iterable[pa.RecordBatch],
              bounds: Bounds | None = None) -> Written:
        selected = pg.chunk_predicate(bounds, wire.columns) if bounds is not None else None
        if selected is None:
            raise FatalError("a hash chunk cannot be selected in PostgreSQL, so it cannot be repaired chunk-wise: "
                             "reload the table (load_mode swap)")
        predicate, params = selected
        conn.execute(sql.SQL("DELETE FROM {} WHERE {}").format(sql.Identifier(*self.destination), predicate), params)
        return CopyLoader(self.destination).write(conn, wire, batches, bounds)


@dataclass(frozen=True)
class KeyedLoader:
    """insert_missing and merge: COPY into a TEMP ... ON COMMIT DROP stage, then one INSERT ... ON CONFLICT
    on the key, so rows already in the target are skipped, or updated only where a value differs.

    A chunk cut on the key column whose key range holds no target row at all (a catch-up's new keys) is
    copied straight into the target instead, without the stage: every row of it is new. Should another
    writer insert into that range meanwhile, the COPY hits the key, rolls back, and the retry sees the
    rows and goes through the stage.

    `skip_equal` (merges): staged rows equal to the target's are left out before the upsert, so they are
    neither locked nor logged. It costs an extra index probe for each changed row, so a watermark window,
    whose rows changed by definition, goes straight to the upsert."""

    destination: tuple[str, str]
    key: tuple[str, ...]
    update: bool
    skip_equal: bool = True

    def write(self, conn: psycopg.Connection[Any], wire: Wire, batches: Iterable[pa.RecordBatch],
              bounds: Bounds | None = None) -> Written:
        columns = wire.columns
        if self._range_is_new(conn, columns, bounds):
            try:
                rows, nbytes = pg.copy_batches(conn, self.destination, wire, batches)
            except psycopg.errors.UniqueViolation as exc:
                raise TransientError(f"rows appeared in the key range {bounds.describe() if bounds else ''} while it "
                                     "was copied directly: the next attempt merges it through the stage") from exc
            return Written(rows, nbytes, rows, 0)
        stage = pg.create_stage(conn, self.destination, columns)
        rows, nbytes = pg.copy_into(conn, stage, wire, batches)
        inserted, updated = pg.insert_from_stage(conn, self.destination, columns, stage, self.key, self.update,
                                               self.skip_equal)
        return Written(rows, nbytes, inserted, updated)


    def _range_is_new(self, conn: psycopg.Connection[Any], columns: list[Column], bounds: Bounds | None) -> bool:
        if bounds is None or bounds.kind != "range" or bounds.key_kind != "numeric" or len(self.key) != 1:
            return False
        column = next((c for c in columns if pg.target_column_name(c.name) == self.key[0]), None)
        if column is None or column.name != bounds.column:
            return False
        return not pg.has_rows_in_range(conn, self.destination, bounds, columns)


def loader_for(load: TableLoad, repair: bool = False) -> Loader:
    """The table's loader; for a repair, keyed loads merge (fixing changed values), the others replace."""
    if load.staged:
        return KeyedLoader(load.destination, load.key, update=load.mode == "merge" or repair,
                           skip_equal=load.window is None or repair)
    return RepairLoader(load.destination) if repair else CopyLoader(load.destination)
