"""Fault injection for crash tests. `MIGRATION_FAULTS` lists points at which the process SIGKILLs
itself: `before_commit:0.3` (with probability 0.3 each time the point is reached) or
`during_copy@4` (the 4th time it is reached). Unset, as in production, it costs one dictionary
lookup per chunk."""

from __future__ import annotations

import os
import random
import signal
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import TypeVar

CHUNK_POINTS = ("after_claim", "during_read", "during_copy", "before_commit", "after_commit")
# inside a table's post-load transaction: after the renames of a swap, and before the commit; inside a table's
# planning transaction: after its schema changes (DDL and ledger rows), before its plan is stored; after each key
# range a deletes pass committed (lib/check/deletes.py)
POINTS = (*CHUNK_POINTS, "during_swap", "post_load", "schema_change", "during_deletes")


def _parse(spec: str) -> dict[str, tuple[float, int]]:
    out: dict[str, tuple[float, int]] = {}
    for item in filter(None, (p.strip() for p in spec.split(","))):
        if "@" in item:
            point, _, nth = item.partition("@")
            rule = (0.0, int(nth))
        else:
            point, _, probability = item.partition(":")
            rule = (float(probability or 1.0), 0)
        if point not in POINTS:
            raise ValueError(f"unknown fault point {point!r} (known: {', '.join(POINTS)})")
        out[point] = rule
    return out


_FAULTS = _parse(os.environ.get("MIGRATION_FAULTS", ""))
_passes: Counter[str] = Counter()


def maybe_crash(point: str) -> None:
    rule = _FAULTS.get(point)
    if rule is None:
        return
    probability, nth = rule
    _passes[point] += 1
    if (nth and _passes[point] == nth) or (probability and random.random() < probability):
        os.kill(os.getpid(), signal.SIGKILL)


T = TypeVar("T")


def at_chunk_points(batches: Iterable[T]) -> Iterator[T]:
    """A chunk's batches on their way to PostgreSQL, passing its points: during_read before the first, during_copy
    before each further one and after the last. Each batch is let go once the next is asked for."""
    for i, batch in enumerate(batches):
        maybe_crash("during_read" if i == 0 else "during_copy")
        yield batch
        del batch
    maybe_crash("during_copy")
