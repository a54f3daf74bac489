"""Plain-text rendering of a table plan: used by `migrate.py plan` and the golden-file tests."""

from __future__ import annotations

import statistics

from lib.models import TablePlan


def plan_summary(plan: TablePlan) -> dict[str, int]:
    sizes = [c.expected_rows for c in plan.chunks] or [0]
    return {"min_rows": min(sizes), "median_rows": int(statistics.median(sizes)), "max_rows": max(sizes)}


def render_plan(table: str, target: str, plan: TablePlan, timing: bool = True) -> str:
    s = plan_summary(plan)
    took = f" in {plan.seconds}s" if timing else ""
    lines = [
        f"{table} → {target}: {plan.strategy} ({plan.reason})",
        f"  {len(plan.chunks)} chunks, {plan.expected_rows:,} rows; rows per chunk min {s['min_rows']:,} / "
        f"median {s['median_rows']:,} / max {s['max_rows']:,}; {plan.queries} planning quer{'y' if plan.queries == 1 else 'ies'}{took}",
        *(f"  note: {note}" for note in plan.notes),
        *(f"    #{c.chunk_no:<4} {c.expected_rows:>12,}  {c.bounds.describe()}" for c in plan.chunks),
    ]
    return "\n".join(lines)
