"""Plain data passed between modules: chunk bounds, planned chunks, table plans, claimed chunks."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Literal

BoundKind = Literal["all", "range", "null", "hash"]
KeyKind = Literal["date", "hour", "numeric", "string"]


@dataclass(frozen=True)
class Bounds:
    """Which rows a chunk holds: all rows, `lo <= key < hi` (either end open), `key IS NULL`, or
    the rows whose hash of `hash_columns` falls in one of `modulus` classes (`remainder`).

    The key of a range is the column itself (numeric, string), `DATE(column)` (date) or
    `DATE_TRUNC('HOUR', column)` (hour); with `utc` (a TIMESTAMP_TZ/LTZ column) the day or hour of the
    column's UTC instant, the same in both databases whatever a session's or a value's own time zone.
    Values are kept as strings (ISO dates and timestamps, exact decimals, the key's own text for a string
    key, compared by code point on both sides) so they survive JSON and never lose precision; `lo`/`hi` of
    None mean open, and '' is a value like any other.
    """

    kind: BoundKind
    column: str | None = None
    key_kind: KeyKind | None = None
    lo: str | None = None
    hi: str | None = None
    hash_columns: tuple[str, ...] | None = None
    modulus: int | None = None
    remainder: int | None = None
    utc: bool = False

    def to_json(self) -> str:
        data = asdict(self)
        if not self.utc:
            del data["utc"]  # the plans stored before the field existed read the same
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | dict[str, Any]) -> Bounds:
        data = json.loads(text) if isinstance(text, str) else dict(text)
        if data.get("hash_columns") is not None:
            data["hash_columns"] = tuple(data["hash_columns"])
        return cls(**data)

    def describe(self) -> str:
        """Human-readable predicate for logs, plan output and the ledger."""
        if self.kind == "all":
            return "all rows"
        if self.kind == "null":
            return f"{self.column} IS NULL"
        if self.kind == "hash":
            m = self.modulus
            return f"MOD(MOD(HASH({', '.join(self.hash_columns or ())}), {m}) + {m}, {m}) = {self.remainder}"
        column = f"CONVERT_TIMEZONE('UTC', {self.column})" if self.utc else str(self.column)
        key = {"date": f"DATE({column})", "hour": f"DATE_TRUNC('HOUR', {column})"}.get(self.key_kind or "", column)
        parts = []
        if self.lo is not None:
            parts.append(f"{key} >= {self._shown(self.lo)}")
        if self.hi is not None:
            parts.append(f"{key} < {self._shown(self.hi)}")
        return " AND ".join(parts) if parts else f"{self.column} IS NOT NULL"

    def _shown(self, value: str) -> str:
        """A string key as a quoted literal, so that '' and trailing spaces can be seen."""
        return "'" + value.replace("'", "''") + "'" if self.key_kind == "string" else value


@dataclass(frozen=True)
class PlannedChunk:
    chunk_no: int
    bounds: Bounds
    expected_rows: int


@dataclass
class TablePlan:
    strategy: str
    chunks: list[PlannedChunk]
    reason: str
    queries: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    source_results: str | None = None  # "whole" or "streamed": how Snowflake answers a chunk (lib/plan/budget.py)
    row_bytes: int | None = None  # Arrow bytes per row, sampled at planning
    mutable: str | None = None  # why the chunks are cut on values that may change (a column the engine chose)

    @property
    def expected_rows(self) -> int:
        return sum(c.expected_rows for c in self.chunks)


@dataclass(frozen=True)
class ClaimedChunk:
    chunk_id: int
    run_id: int
    table_name: str
    chunk_no: int
    bounds: Bounds
    expected_rows: int
    fence: int
    attempts: int
    repair: bool = False  # verify --repair: the chunk is copied again (lib/target/loaders.py says how each load does it)
    staged: bool = False  # an earlier attempt's direct copy hit the key: through the stage this time


@dataclass(frozen=True)
class DayCount:
    day: date | None  # None: rows whose key is NULL
    rows: int


@dataclass(frozen=True)
class HourCount:
    hour: datetime  # start of the hour (DATE_TRUNC('HOUR', key))
    rows: int


@dataclass(frozen=True)
class KeyBucket:
    """Rows of consecutive sorted keys: every key in [low, high], `rows` of them, `high_rows` of
    which hold the key `high`. A key value never spans two buckets. String keys are in code point
    order, Snowflake's order of a column without a collation (and Python's order of str)."""

    low: Decimal | str
    high: Decimal | str
    rows: int
    high_rows: int


def key_examples(examples: list[tuple[tuple[Any, ...], int]]) -> str:
    """Repeated keys with how many rows hold each, for a message: "5, x in 2 rows; 7, y in 3 rows"."""
    return "; ".join(f"{', '.join(map(str, values))} in {count} rows" for values, count in examples)
