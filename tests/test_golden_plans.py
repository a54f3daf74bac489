"""Golden plans for fixed key distributions: a change in how chunks are cut shows up as a diff.

Regenerate after an intended change with `make golden` (UPDATE_GOLDEN=1 pytest tests/test_golden_plans.py)
and review the diff of tests/golden/ like code.
"""

from __future__ import annotations

import os
from collections import Counter
from datetime import date, datetime, timedelta
from pathlib import Path

import pytest

from lib.models import DayCount, HourCount, TablePlan
from lib.plan.chunking import BUCKETS_PER_CHUNK, hash_modulus, plan_dates, plan_hash, plan_numeric, plan_strings
from lib.plan.render import render_plan
from tests.test_chunking import buckets_like_the_source

GOLDEN = Path(__file__).parent / "golden"


def _numeric(keys: list[int | None], chunk_rows: int) -> TablePlan:
    buckets, nulls = buckets_like_the_source(keys, max(1, chunk_rows // BUCKETS_PER_CHUNK))
    return plan_numeric("ID", buckets, nulls, chunk_rows, nullable=True, reason="golden")


def _strings(keys: list[str | None], chunk_rows: int) -> TablePlan:
    buckets, nulls = buckets_like_the_source(keys, max(1, chunk_rows // BUCKETS_PER_CHUNK))
    return plan_strings("CODE", buckets, nulls, chunk_rows, nullable=True, reason="golden")


def _dates(stamps: list[datetime | None], chunk_rows: int) -> TablePlan:
    days = Counter(None if s is None else s.date() for s in stamps)
    heavy = {d for d, n in days.items() if d is not None and n > chunk_rows}
    hours = Counter(s.replace(minute=0, second=0) for s in stamps if s is not None and s.date() in heavy)
    return plan_dates("TS", [DayCount(d, n) for d, n in days.items()], chunk_rows, True, "golden",
                      [HourCount(h, n) for h, n in hours.items()])


def _cases() -> dict[str, TablePlan]:
    incident = [*range(1, 1001, 2), *range(1001, 1_000_001, 199)][:5500] + list(range(5_000_001, 5_100_001))
    skewed = [7] * 30_000 + list(range(100, 20_100)) + [None] * 1_000
    negative_huge = [-(10**30) + i * 10**25 for i in range(2000)] + list(range(-500, 500))
    base = datetime(2024, 1, 1)
    events = ([base + timedelta(days=i % 90, seconds=i % 86_400) for i in range(45_000)]
              + [datetime(2024, 2, 14, 0, 0) + timedelta(seconds=i * 3) for i in range(25_000)] + [None] * 10)
    # code point order: '' < ' ' < 'A-1' < 'Z' < '_' < 'a' < 'a ' < 'b' < 'é' < '日本' < '😀'
    codes = ([""] * 40 + [" "] * 5 + [f"A-{i:03}" for i in range(300)] + ["Z"] * 700 + ["_x"] * 10
             + [f"a{i:03}" for i in range(300)] + ["a "] * 20 + ["b'q"] * 15 + [f"é{i}" for i in range(50)]
             + ["日本"] * 30 + ["😀"] * 3 + [None] * 7)
    return {
        "string_hostile_keys": _strings(codes, 200),
        "numeric_incident": _numeric(incident, 10_000),
        "numeric_one_heavy_value": _numeric(skewed, 8_000),
        "numeric_negative_and_beyond_64_bit": _numeric(negative_huge, 500),
        "date_heavy_day_split_by_hour": _dates(events, 5_000),
        "date_only_days": plan_dates("DAY", [DayCount(date(2024, 3, 1) + timedelta(days=i), 100 + (i * 37) % 400)
                                             for i in range(60)] + [DayCount(None, 3)], 2_000, True, "golden"),
        "hash": plan_hash(["NAME", "AMOUNT"], {r: 1000 + r for r in range(7)}, hash_modulus(7_021, 1_100), "golden"),
    }


@pytest.mark.parametrize("name", sorted(_cases()))
def test_plan_matches_golden_file(name: str) -> None:
    rendered = render_plan(name, "public.target", _cases()[name], timing=False) + "\n"
    path = GOLDEN / f"{name}.txt"
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(rendered)
    assert path.exists(), f"missing {path}: run `make golden`"
    assert rendered == path.read_text()
