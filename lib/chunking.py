"""Chunking strategies: pure functions from aggregated stats to a plan that covers every row.

Invariants every strategy keeps (tests check them):
- ranges are contiguous `[lo, hi)`, the first is open below and the last open above, so a key
  value that appears after planning still falls into exactly one chunk;
- NULL keys of a nullable column get their own chunk;
- each chunk's `expected_rows` is exact for the data seen at plan time, and they sum to the count.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from decimal import Decimal

from lib.models import Bounds, PlannedChunk, TablePlan

# The numeric stats query cuts the sorted keys into buckets of chunk_rows / BUCKETS_PER_CHUNK rows,
# so chunks can be packed to within about a quarter of the target size.
BUCKETS_PER_CHUNK = 4


@dataclass(frozen=True)
class DayCount:
    day: date | None  # None: rows whose key is NULL
    rows: int


@dataclass(frozen=True)
class KeyBucket:
    """Rows of consecutive sorted keys: every key in [low, high], `rows` of them, `high_rows` of
    which hold the key `high`. A key value never spans two buckets."""

    low: Decimal
    high: Decimal
    rows: int
    high_rows: int


def plan_single(total_rows: int, reason: str) -> TablePlan:
    return TablePlan("single", [PlannedChunk(0, Bounds("all"), total_rows)], reason)


def plan_dates(column: str, days: Sequence[DayCount], chunk_rows: int, nullable: bool, reason: str) -> TablePlan:
    """Pack consecutive days into chunks of up to `chunk_rows` rows; a heavier day stands alone."""
    dated = sorted((d for d in days if d.day is not None and d.rows > 0), key=lambda d: d.day)  # type: ignore[arg-type,return-value]
    null_rows = sum(d.rows for d in days if d.day is None)
    groups: list[tuple[date, int]] = []  # (first day of the group, rows)
    for d in dated:
        assert d.day is not None
        if groups and groups[-1][1] + d.rows <= chunk_rows:
            groups[-1] = (groups[-1][0], groups[-1][1] + d.rows)
        else:
            groups.append((d.day, d.rows))
    starts = [g[0].isoformat() for g in groups]
    chunks = _ranges(column, "date", starts, [g[1] for g in groups])
    notes = [f"{d.day} holds {d.rows} rows, more than chunk_rows={chunk_rows}" for d in dated if d.rows > chunk_rows]
    return _finish("date", column, chunks, null_rows, nullable, reason, notes)


def plan_numeric(
    column: str, buckets: Sequence[KeyBucket], null_rows: int, chunk_rows: int, nullable: bool, reason: str
) -> TablePlan:
    """Cut at real key values so chunks hold near-equal row counts whatever the key's density.

    Buckets come from ranking the keys (equal-count, not equal-width), so sparse and dense regions
    both end up in chunks of about `chunk_rows`. Each bucket is split into its keys below `high`
    and the key `high` itself, so a key value heavier than a chunk gets a chunk of its own and
    every count stays exact. Chunks exceed `chunk_rows` only when one key value alone does.
    """
    pieces: list[tuple[Decimal, int, bool]] = []  # (lowest key, rows, holds a single key value)
    for b in sorted((b for b in buckets if b.rows > 0), key=lambda b: b.low):
        below = b.rows - b.high_rows
        if below > 0:
            pieces.append((b.low, below, False))
        pieces.append((b.high, b.high_rows, True))
    groups: list[tuple[Decimal, int]] = []  # (lowest key of the chunk, rows)
    notes: list[str] = []
    for low, rows, single in pieces:
        if groups and groups[-1][1] + rows <= chunk_rows:
            groups[-1] = (groups[-1][0], groups[-1][1] + rows)
        else:
            groups.append((low, rows))
        if single and rows > chunk_rows:
            notes.append(f"key value {_decimal_text(low)} alone holds {rows} rows, more than chunk_rows={chunk_rows}: "
                         "it is one chunk of its own")
    starts = [_decimal_text(g[0]) for g in groups]
    chunks = _ranges(column, "numeric", starts, [g[1] for g in groups])
    return _finish("numeric", column, chunks, null_rows, nullable, reason, notes)


def _ranges(column: str, key_kind: str, starts: list[str], rows: list[int]) -> list[tuple[Bounds, int]]:
    """Contiguous ranges cut at each group's first key; open below and above."""
    if not starts:
        return [(Bounds("range", column, key_kind, None, None), 0)]  # type: ignore[arg-type]
    out = []
    for i, count in enumerate(rows):
        lo = None if i == 0 else starts[i]
        hi = starts[i + 1] if i + 1 < len(starts) else None
        out.append((Bounds("range", column, key_kind, lo, hi), count))  # type: ignore[arg-type]
    return out


def _finish(strategy: str, column: str, ranges: list[tuple[Bounds, int]], null_rows: int, nullable: bool,
            reason: str, notes: list[str]) -> TablePlan:
    chunks = [PlannedChunk(i, b, n) for i, (b, n) in enumerate(ranges)]
    if nullable or null_rows:
        chunks.append(PlannedChunk(len(chunks), Bounds("null", column), null_rows))
    return TablePlan(strategy, chunks, reason, notes=notes)


def _decimal_text(value: Decimal) -> str:
    text = format(value, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text
