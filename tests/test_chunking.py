"""Chunk plans cover every key exactly once, with exact expected counts, whatever the distribution."""

from __future__ import annotations

import itertools
from collections import Counter
from datetime import date, datetime, timedelta
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from lib.models import Bounds, DayCount, HourCount, KeyBucket, TablePlan
from lib.plan.chunking import BUCKETS_PER_CHUNK, plan_dates, plan_numeric, plan_strings
from lib.run.orchestrator import run


def contains(bounds: Bounds, key: Decimal | date | datetime | str | None) -> bool:
    """Python twin of the SQL predicate a chunk reads with."""
    if bounds.kind == "all":
        return True
    if bounds.kind == "null":
        return key is None
    if key is None:
        return False
    if bounds.key_kind == "date":
        parse, key = date.fromisoformat, (key.date() if isinstance(key, datetime) else key)
    elif bounds.key_kind == "hour":
        parse, key = datetime.fromisoformat, key.replace(minute=0, second=0, microsecond=0)
    elif bounds.key_kind == "string":
        parse = str  # Python compares str by code point, as Snowflake does without a collation
    else:
        parse = Decimal
    return (bounds.lo is None or key >= parse(bounds.lo)) and (bounds.hi is None or key < parse(bounds.hi))


def buckets_like_the_source(keys: list, bucket_rows: int) -> tuple[list[KeyBucket], int]:
    """What SnowflakeSource.key_buckets returns: RANK()-based buckets and the NULL count (str keys stay str)."""
    present = sorted(k for k in keys if k is not None)
    rank: dict = {}
    for i, k in enumerate(present):
        rank.setdefault(k, i + 1)
    grouped: dict[int, list] = {}
    for k in present:
        grouped.setdefault((rank[k] - 1) // bucket_rows, []).append(k)
    buckets = []
    for ks in grouped.values():
        below_high = rank[max(ks)] - rank[min(ks)]
        low, high = (min(ks), max(ks)) if isinstance(ks[0], str) else (Decimal(min(ks)), Decimal(max(ks)))
        buckets.append(KeyBucket(low, high, len(ks), len(ks) - below_high))
    return buckets, sum(1 for k in keys if k is None)


def assert_covers_exactly(plan: TablePlan, keys: list, chunk_rows: int) -> None:
    ranges = [c.bounds for c in plan.chunks if c.bounds.kind == "range"]
    assert ranges[0].lo is None and ranges[-1].hi is None
    assert all(a.hi == b.lo for a, b in itertools.pairwise(ranges))
    actual = Counter()
    for key in keys:
        holders = [c.chunk_no for c in plan.chunks if contains(c.bounds, key)]
        assert len(holders) == 1, (key, holders)
        actual[holders[0]] += 1
    for chunk in plan.chunks:
        assert chunk.expected_rows == actual[chunk.chunk_no]
        if chunk.expected_rows > chunk_rows:
            distinct = {k for k in keys if contains(chunk.bounds, k)}
            assert len(distinct) == 1, "only a single heavy key value may exceed chunk_rows"
    assert plan.expected_rows == len(keys)


key_lists = st.one_of(
    st.lists(st.integers(-10**6, 10**6), max_size=400),  # sparse, negative
    st.lists(st.integers(0, 20), max_size=400),  # heavy duplicates
    st.lists(st.just(42), max_size=300),  # all equal
    st.lists(st.integers(-(10**37), 10**37), max_size=200),  # beyond 64-bit
    st.lists(st.one_of(st.none(), st.integers(0, 50)), max_size=300),  # with NULLs
    st.builds(lambda a, b: a + b, st.lists(st.integers(0, 10**9), max_size=50),
              st.lists(st.integers(500, 700), max_size=300)),  # sparse plus one dense cluster
)


@settings(max_examples=400, deadline=None)
@given(keys=key_lists, chunk_rows=st.integers(1, 120))
def test_numeric_plan_covers_every_key_once_with_exact_counts(keys, chunk_rows) -> None:
    buckets, nulls = buckets_like_the_source(keys, max(1, chunk_rows // BUCKETS_PER_CHUNK))
    plan = plan_numeric("ID", buckets, nulls, chunk_rows, nullable=True, reason="test")
    assert_covers_exactly(plan, keys, chunk_rows)
    for probe in (Decimal(-(10**38)), Decimal(10**38), Decimal("0.5"), None):
        assert sum(contains(c.bounds, probe) for c in plan.chunks) == 1


# keys whose order differs by code point and by a language's collation: case, accents, punctuation,
# spaces (trailing ones too), the empty string, and characters beyond the Basic Multilingual Plane
hostile_text = st.text(alphabet=["a", "B", "b", "A", " ", "-", "_", "'", "\\", "é", "\u0301", "ß", "日", "😀"],
                       max_size=4)


@settings(max_examples=300, deadline=None)
@given(keys=st.lists(st.one_of(st.none(), hostile_text), max_size=300), chunk_rows=st.integers(1, 80))
def test_string_plan_covers_every_key_once_with_exact_counts(keys, chunk_rows) -> None:
    buckets, nulls = buckets_like_the_source(keys, max(1, chunk_rows // BUCKETS_PER_CHUNK))
    plan = plan_strings("K", buckets, nulls, chunk_rows, nullable=True, reason="test")
    assert plan.strategy == "string"
    assert_covers_exactly(plan, keys, chunk_rows)
    for probe in ("", " ", "\U0010ffff", "a ", None):
        assert sum(contains(c.bounds, probe) for c in plan.chunks) == 1


def test_string_bounds_are_the_exact_keys() -> None:
    keys = [""] * 3 + ["a"] * 2 + ["a "] * 2 + ["B"] * 2 + ["it's"] * 2
    plan = plan_strings("K", *buckets_like_the_source(keys, 1), chunk_rows=2, nullable=False, reason="t")
    assert [(c.bounds.lo, c.bounds.hi) for c in plan.chunks] == [
        (None, "B"), ("B", "a"), ("a", "a "), ("a ", "it's"), ("it's", None)]
    assert plan.chunks[-1].bounds.describe() == "K >= 'it''s'"
    assert plan.notes == ["key value '' alone holds 3 rows, more than chunk_rows=2: it is one chunk of its own"]


@settings(max_examples=200, deadline=None)
@given(offsets=st.lists(st.one_of(st.none(), st.integers(0, 400)), max_size=400), chunk_rows=st.integers(1, 80))
def test_date_plan_covers_every_day_once_with_exact_counts(offsets, chunk_rows) -> None:
    days = [None if o is None else date(2024, 1, 1) + timedelta(days=o) for o in offsets]
    counts = Counter(days)
    plan = plan_dates("D", [DayCount(d, n) for d, n in counts.items()], chunk_rows, nullable=True, reason="test")
    ranges = [c.bounds for c in plan.chunks if c.bounds.kind == "range"]
    assert ranges[0].lo is None and ranges[-1].hi is None
    assert all(a.hi == b.lo for a, b in itertools.pairwise(ranges))
    for chunk in plan.chunks:
        inside = [d for d in days if contains(chunk.bounds, d)]
        assert chunk.expected_rows == len(inside)
        if len(inside) > chunk_rows:
            assert len(set(inside)) == 1, "only a single heavy day may exceed chunk_rows"
    assert plan.expected_rows == len(days)


@settings(max_examples=200, deadline=None)
@given(minutes=st.lists(st.one_of(st.none(), st.integers(0, 6 * 24 * 60)), max_size=400), chunk_rows=st.integers(1, 60))
def test_heavy_days_split_by_hour_still_cover_every_timestamp_once(minutes, chunk_rows) -> None:
    start = datetime(2024, 6, 10)
    keys = [None if m is None else start + timedelta(minutes=m) for m in minutes]
    days = Counter(None if k is None else k.date() for k in keys)
    heavy = {d for d, n in days.items() if d is not None and n > chunk_rows}
    hours = Counter(k.replace(minute=0) for k in keys if k is not None and k.date() in heavy)
    plan = plan_dates("TS", [DayCount(d, n) for d, n in days.items()], chunk_rows, nullable=True, reason="t",
                      hours=[HourCount(h, n) for h, n in hours.items()])
    for probe in (datetime(1900, 1, 1), datetime(2999, 1, 1), *(datetime.combine(d, datetime.min.time()) for d in heavy)):
        assert sum(contains(c.bounds, probe) for c in plan.chunks) == 1, probe
    for key in keys:
        assert sum(contains(c.bounds, key) for c in plan.chunks) == 1, key
    for chunk in plan.chunks:
        inside = [k for k in keys if contains(chunk.bounds, k)]
        assert chunk.expected_rows == len(inside)
        if len(inside) > chunk_rows and chunk.bounds.kind == "range":
            assert len({k.replace(minute=0) for k in inside}) == 1, "only a single heavy hour may exceed chunk_rows"


def test_sparse_ids_with_a_dense_region_give_even_chunks() -> None:
    keys = [*range(1, 1001, 2), *range(1001, 1_000_001, 199)][:5500] + list(range(5_000_001, 5_100_001))
    buckets, _ = buckets_like_the_source(keys, 2500)
    plan = plan_numeric("ID", buckets, 0, 10_000, nullable=False, reason="test")
    sizes = [c.expected_rows for c in plan.chunks]
    assert sum(sizes) == len(keys)
    assert max(sizes) <= 10_000 and sorted(sizes)[len(sizes) // 2] >= 7_500


def test_incident_reproduction_sparse_ids_and_dense_region_lose_no_row(env) -> None:
    """IDs 1..1,000 holding 500 rows, 1,001..1,000,000 holding 5,000, 5,000,001..5,100,000 dense."""
    env.sf_execute(
        "CREATE TABLE INCIDENT AS SELECT ID::NUMBER(38,0) AS ID, 'r' || ID AS V FROM ("
        " SELECT 1 + 2 * SEQ8() AS ID FROM TABLE(GENERATOR(ROWCOUNT => 500))"
        " UNION ALL SELECT 1001 + 199 * SEQ8() FROM TABLE(GENERATOR(ROWCOUNT => 5000))"
        " UNION ALL SELECT 5000001 + SEQ8() FROM TABLE(GENERATOR(ROWCOUNT => 100000)))"
    )
    result = run(env.config([{"source": "INCIDENT", "chunking_columns": ["ID"], "chunking_column_types": ["numeric"]}],
                            chunk_rows=10_000))
    table = result.tables[0]
    assert result.status == "completed"
    assert table["source_count"] == table["target_count"] == table["rows_copied"] == 105_500
    sizes = [r[0] for r in env.pg_rows("SELECT expected_rows FROM migration_status.migration_chunk_status "
                                       "WHERE bounds->>'kind' = 'range'")]
    assert max(sizes) <= 10_000 and min(sizes) > 0 and len(sizes) <= 13
    assert env.pg_value("SELECT count(DISTINCT id) FROM public.incident") == 105_500


def test_keys_beyond_64_bits_negative_and_decimal_are_chunked_end_to_end(env) -> None:
    env.sf_execute(
        "CREATE TABLE HUGE AS SELECT (SEQ8() * 123456789012345678901 - 61728394506172839450500000)::NUMBER(30,0) AS K, "
        "((SEQ8() - 1500) / 7.0)::NUMBER(12,2) AS D FROM TABLE(GENERATOR(ROWCOUNT => 3000))",
        "INSERT INTO HUGE VALUES (NULL, NULL), (99999999999999999999999999999, -0.01), (-99999999999999999999999999999, 0)",
    )
    for column in ("K", "D"):
        result = run(env.config([{"source": "HUGE", "target": f"huge_by_{column.lower()}", "chunking_columns": [column],
                                  "chunking_column_types": ["numeric"]}], chunk_rows=400))
        table = result.tables[0]
        assert result.status == "completed", table
        assert table["chunks"] >= 8 and table["expected_rows"] == table["target_count"] == 3003
    assert env.pg_value("SELECT count(*) FROM (SELECT k, d FROM public.huge_by_k EXCEPT SELECT k, d FROM public.huge_by_d) x") == 0
    assert env.pg_value("SELECT max(k) FROM public.huge_by_k") == 99999999999999999999999999999
