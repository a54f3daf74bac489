"""Fault injection for crash tests: `MIGRATION_FAULTS="before_commit:0.3,during_copy:0.1"` makes the
process SIGKILL itself at that point with that probability. Unset (always, in production) it costs
one dictionary lookup per chunk."""

from __future__ import annotations

import os
import random
import signal

POINTS = ("after_claim", "during_read", "during_copy", "before_commit", "after_commit")


def _parse(spec: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for item in filter(None, (p.strip() for p in spec.split(","))):
        point, _, probability = item.partition(":")
        if point not in POINTS:
            raise ValueError(f"unknown fault point {point!r} (known: {', '.join(POINTS)})")
        out[point] = float(probability or 1.0)
    return out


_FAULTS = _parse(os.environ.get("MIGRATION_FAULTS", ""))


def maybe_crash(point: str) -> None:
    probability = _FAULTS.get(point)
    if probability and random.random() < probability:
        os.kill(os.getpid(), signal.SIGKILL)
