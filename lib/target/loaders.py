"""The write step of a chunk, one small strategy per load mode (lib/target/load_modes.py chooses it once per
table). Every loader runs inside the chunk's transaction; the worker then marks the chunk done under
its fence and commits, the same way for every mode."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
from psycopg import sql

from lib.errors import FatalError, StageNextTime
from lib.models import Bounds, key_examples
from lib.target import postgres as pg
from lib.target.load_modes import TableLoad
from lib.target.wire import Wire
from lib.typemap import Column


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
    copied straight into the target instead, without the stage: every row of it is new. Should the COPY hit
    the key (another writer inserted into that range meanwhile, or the source repeats a key), it rolls back
    and the chunk's next attempt goes through the stage (`direct` False), which tells the two apart.

    The key must name one staged row: a catch-up's ON CONFLICT DO NOTHING would silently keep one of two rows
    with the same key, and NULL never conflicts, so such rows would be inserted again by every run. Planning
    checks the source's values in scope; every stage is checked again as it is written (see _KeySeen), merges
    too (see _check_stage): a table read live may have changed since, and two source values may become one
    key on the way (NUL bytes stripped, text cast to a number or a uuid).

    `skip_equal` (merges): staged rows equal to the target's are left out before the upsert, so they are
    neither locked nor logged. It costs an extra index probe for each changed row, so a watermark window,
    whose rows changed by definition, goes straight to the upsert."""

    destination: tuple[str, str]
    key: tuple[str, ...]
    update: bool
    skip_equal: bool = True
    direct: bool = True

    def write(self, conn: psycopg.Connection[Any], wire: Wire, batches: Iterable[pa.RecordBatch],
              bounds: Bounds | None = None) -> Written:
        columns = wire.columns
        if self.direct and self._range_is_new(conn, columns, bounds):
            try:
                rows, nbytes = pg.copy_batches(conn, self.destination, wire, batches)
            except psycopg.errors.UniqueViolation as exc:
                raise StageNextTime(f"the direct copy of the new key range {bounds.describe() if bounds else ''} hit "
                                    f"the key ({exc.diag.message_detail or exc}): the next attempt goes through the "
                                    "stage") from exc
            return Written(rows, nbytes, rows, 0)
        stage = pg.create_stage(conn, self.destination, columns)
        seen = _KeySeen(columns, self.key)
        rows, nbytes = pg.copy_into(conn, stage, wire, batches, seen.add)
        if not seen.clean():
            self._check_stage(conn, stage, columns)
        try:
            with conn.transaction():  # a savepoint: after a refused upsert the stage still answers which key repeats
                inserted, updated = pg.insert_from_stage(conn, self.destination, columns, stage, self.key, self.update,
                                                         self.skip_equal)
        except (psycopg.errors.CardinalityViolation, psycopg.errors.NotNullViolation):
            self._check_stage(conn, stage, columns)
            raise
        return Written(rows, nbytes, inserted, updated)

    def _range_is_new(self, conn: psycopg.Connection[Any], columns: list[Column], bounds: Bounds | None) -> bool:
        # Numeric ranges only: a string range is compared in the "C" collation, which the key's index cannot
        # answer, so the probe would scan the whole target once per chunk; string chunks go through the stage.
        if bounds is None or bounds.kind != "range" or bounds.key_kind != "numeric" or len(self.key) != 1:
            return False
        column = next((c for c in columns if pg.target_column_name(c.name) == self.key[0]), None)
        if column is None or column.name != bounds.column:
            return False
        return not pg.has_rows_in_range(conn, self.destination, bounds, columns)

    def _check_stage(self, conn: psycopg.Connection[Any], stage: sql.Composable, columns: list[Column]) -> None:
        """Fail the chunk (fatal: the same rows fail the same way) if a staged key is NULL or repeated.

        A merge cannot leave repeats to PostgreSQL: ON CONFLICT DO UPDATE raises a cardinality violation only when
        one statement changes a row twice, and a staged row equal to the target's changes nothing (its WHERE IS
        DISTINCT FROM, or skip_equal, leaves it out), so its twin would update the row alone, silently."""
        casts = {pg.target_column_name(c.name): c.pg_type for c in columns if c.via_text}
        nulls, repeated, examples = pg.stage_key_problems(conn, stage, self.key, casts)
        shown = ", ".join(self.key)
        if nulls:
            raise FatalError(f"{nulls} row(s) of the chunk have a NULL in the key ({shown}): ON CONFLICT never matches "
                             "NULL, so every run would insert them again. Give them a key, leave them out with "
                             "source_filter, or set merge_key to columns that hold no NULL")
        if repeated:
            shown_examples = key_examples(examples)
            raise FatalError(f"the source repeats keys: {repeated} row(s) of the chunk have a key ({shown}) that another "
                             f"row has too (e.g. {shown_examples}). Snowflake does not enforce keys; deduplicate the "
                             "source, leave the repeats out with source_filter, or set merge_key to columns that name one row")


class _KeySeen:
    """The key values of a chunk as they are written to the stage (after the wire's casts and NUL handling, so two
    source values that become one key are one key here), checked in Arrow (hashing in C++, a few ms a chunk) rather
    than by a second pass over the stage in PostgreSQL. Only the key columns are kept, copied out of their batches
    so that the batches themselves are freed as the COPY moves on. A key column sent as text and cast by PostgreSQL
    (uuid, inet, ...) is left to that pass, which compares it as its type."""

    def __init__(self, columns: list[Column], key: tuple[str, ...]) -> None:
        by_name = {pg.target_column_name(c.name): (i, c) for i, c in enumerate(columns)}
        known = all(k in by_name and not by_name[k][1].via_text for k in key)
        self.indexes = [by_name[k][0] for k in key] if known else None
        self.values: list[list[pa.Array]] = [[] for _ in key]

    def add(self, batch: pa.RecordBatch) -> None:
        if self.indexes is not None and batch.num_rows:
            for kept, index in zip(self.values, self.indexes, strict=True):
                kept.append(pa.concat_arrays([batch.column(index)]))

    def clean(self) -> bool:
        """No NULL in the key and no key twice; False also when it could not tell (a key column not written)."""
        if self.indexes is None:
            return False
        if not self.values[0]:
            return True  # no rows
        columns = [pa.chunked_array(kept) for kept in self.values]
        if any(c.null_count for c in columns):
            return False
        rows = len(columns[0])
        if len(columns) == 1:
            return pc.count_distinct(columns[0]).as_py() == rows
        names = [str(i) for i in range(len(columns))]
        return pa.table(columns, names=names).group_by(names).aggregate([]).num_rows == rows


def loader_for(load: TableLoad, repair: bool = False, staged: bool = False) -> Loader:
    """The table's loader; for a repair, keyed loads merge (fixing changed values), the others replace.
    `staged`: an earlier attempt of the chunk hit the key copying directly."""
    if load.staged:
        return KeyedLoader(load.destination, load.key, update=load.mode == "merge" or repair,
                           skip_equal=load.window is None or repair,
                           direct=not staged)
    return RepairLoader(load.destination) if repair else CopyLoader(load.destination)
