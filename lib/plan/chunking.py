"""Chunking strategies: pure functions from aggregated stats to a plan that covers every row.

Invariants every strategy keeps (tests check them):
- ranges are contiguous `[lo, hi)`, the first is open below and the last open above, so a key
  value that appears after planning still falls into exactly one chunk (hash chunks partition
  rows by remainder instead, which covers every row by construction);
- NULL keys of a nullable column get their own chunk;
- each chunk's `expected_rows` is exact for the data seen at plan time, and they sum to the count.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime, timedelta
from decimal import Decimal

from lib.models import Bounds, DayCount, HourCount, KeyBucket, PlannedChunk, TablePlan

# The numeric stats query cuts the sorted keys into buckets of chunk_rows / BUCKETS_PER_CHUNK rows,
# so chunks can be packed to within about a quarter of the target size.
BUCKETS_PER_CHUNK = 4


def plan_single(total_rows: int, reason: str) -> TablePlan:
    return TablePlan("single", [PlannedChunk(0, Bounds("all"), total_rows)], reason)


def plan_dates(
    column: str, days: Sequence[DayCount], chunk_rows: int, nullable: bool, reason: str,
    hours: Sequence[HourCount] = (),
    why_not_split: str = "it has no time of day to split on",
    utc: bool = False,
) -> TablePlan:
    """Pack consecutive days into chunks of up to `chunk_rows` rows.

    A day heavier than `chunk_rows` whose hourly counts are given (`hours`) is cut out of the day
    ranges and split into chunks of consecutive hours; without hourly counts (a DATE column) it
    stands alone. Cut points are days, so the ranges stay contiguous over all time. `utc`: the days
    (and hours) are those of the column's UTC instant (TIMESTAMP_TZ/LTZ).
    """
    by_day: dict[date, list[HourCount]] = {}
    for h in hours:
        by_day.setdefault(h.hour.date(), []).append(h)
    dated = sorted((d for d in days if d.day is not None and d.rows > 0), key=lambda d: d.day)  # type: ignore[arg-type,return-value]
    null_rows = sum(d.rows for d in days if d.day is None)

    segments: list[tuple[Bounds, int]] = []
    group_lo: str | None = None  # the open group of days: its lower cut (None: open below) and rows
    group_rows = 0
    notes: list[str] = []

    def close_group(hi: str | None) -> None:
        if group_lo is None or hi is None or group_lo < hi:
            segments.append((Bounds("range", column, "date", group_lo, hi, utc=utc), group_rows))

    for d in dated:
        assert d.day is not None
        split = by_day.get(d.day) if d.rows > chunk_rows else None
        if split:
            close_group(d.day.isoformat())
            segments.extend(_hour_chunks(column, d.day, split, chunk_rows, notes, utc))
            group_lo, group_rows = (d.day + timedelta(days=1)).isoformat(), 0
            continue
        if group_rows and group_rows + d.rows > chunk_rows:
            close_group(d.day.isoformat())
            group_lo, group_rows = d.day.isoformat(), 0
        group_rows += d.rows
        if d.rows > chunk_rows:
            notes.append(f"{d.day} holds {d.rows} rows, more than chunk_rows={chunk_rows}; not split: {why_not_split}")
    close_group(None)
    return _finish("date", column, segments, null_rows, nullable, reason, notes)


def _hour_chunks(column: str, day: date, hours: list[HourCount], chunk_rows: int, notes: list[str],
                 utc: bool) -> list[tuple[Bounds, int]]:
    """Chunks of consecutive hours covering exactly [day 00:00, next day 00:00)."""
    groups: list[tuple[datetime, int]] = []
    for h in sorted(hours, key=lambda h: h.hour):
        if groups and groups[-1][1] + h.rows <= chunk_rows:
            groups[-1] = (groups[-1][0], groups[-1][1] + h.rows)
        else:
            groups.append((h.hour, h.rows))
        if h.rows > chunk_rows:
            notes.append(f"hour {h.hour:%Y-%m-%d %H}:00 holds {h.rows} rows, more than chunk_rows={chunk_rows}")
    start_of_day = datetime.combine(day, datetime.min.time())
    cuts = [start_of_day, *(g[0] for g in groups[1:]), start_of_day + timedelta(days=1)]
    notes.append(f"{day} holds {sum(g[1] for g in groups)} rows: split into {len(groups)} chunk(s) by hour")
    return [
        (Bounds("range", column, "hour", cuts[i].isoformat(), cuts[i + 1].isoformat(), utc=utc), g[1])
        for i, g in enumerate(groups)
    ]


def plan_hash(columns: Sequence[str], remainder_rows: dict[int, int], modulus: int, reason: str) -> TablePlan:
    """`modulus` chunks, each the rows whose hash of all `columns` has one remainder."""
    chunks = [
        PlannedChunk(r, Bounds("hash", hash_columns=tuple(columns), modulus=modulus, remainder=r), remainder_rows.get(r, 0))
        for r in range(modulus)
    ]
    return TablePlan("hash", chunks, reason)


def hash_modulus(total_rows: int, chunk_rows: int) -> int:
    return max(1, -(-total_rows // chunk_rows))


def plan_numeric(
    column: str, buckets: Sequence[KeyBucket], null_rows: int, chunk_rows: int, nullable: bool, reason: str
) -> TablePlan:
    """Cut at real key values so chunks hold near-equal row counts whatever the key's density.

    Buckets come from ranking the keys (equal-count, not equal-width), so sparse and dense regions
    both end up in chunks of about `chunk_rows`. Each bucket is split into its keys below `high`
    and the key `high` itself, so a key value heavier than a chunk gets a chunk of its own and
    every count stays exact. Chunks exceed `chunk_rows` only when one key value alone does.
    """
    return _plan_ranked("numeric", column, buckets, null_rows, chunk_rows, nullable, reason)


def plan_strings(
    column: str, buckets: Sequence[KeyBucket], null_rows: int, chunk_rows: int, nullable: bool, reason: str
) -> TablePlan:
    """plan_numeric for text keys: cut at real key values, kept exactly ('' and trailing spaces included),
    in code point order, the order of Snowflake's comparison without a collation and of PostgreSQL's
    COLLATE "C" on UTF-8 (lib/target/postgres.py)."""
    return _plan_ranked("string", column, buckets, null_rows, chunk_rows, nullable, reason)


def _plan_ranked(kind: str, column: str, buckets: Sequence[KeyBucket], null_rows: int, chunk_rows: int,
                 nullable: bool, reason: str) -> TablePlan:
    pieces: list[tuple[Decimal | str, int, bool]] = []  # (lowest key, rows, holds a single key value)
    for b in sorted((b for b in buckets if b.rows > 0), key=lambda b: b.low):  # type: ignore[arg-type,return-value]
        below = b.rows - b.high_rows
        if below > 0:
            pieces.append((b.low, below, False))
        pieces.append((b.high, b.high_rows, True))
    groups: list[tuple[Decimal | str, int]] = []  # (lowest key of the chunk, rows)
    notes: list[str] = []
    for low, rows, single in pieces:
        if groups and groups[-1][1] + rows <= chunk_rows:
            groups[-1] = (groups[-1][0], groups[-1][1] + rows)
        else:
            groups.append((low, rows))
        if single and rows > chunk_rows:
            notes.append(f"key value {_key_shown(low)} alone holds {rows} rows, more than chunk_rows={chunk_rows}: "
                         "it is one chunk of its own")
    starts = [_key_text(g[0]) for g in groups]
    chunks = _ranges(column, kind, starts, [g[1] for g in groups])
    return _finish(kind, column, chunks, null_rows, nullable, reason, notes)


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


def _key_text(value: Decimal | str) -> str:
    if isinstance(value, str):
        return value
    text = format(value, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def _key_shown(value: Decimal | str) -> str:
    return "'" + value.replace("'", "''") + "'" if isinstance(value, str) else _key_text(value)
