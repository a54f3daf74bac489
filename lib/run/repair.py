"""Repair: copy the chunks verification found different again, through the ordinary workers, then verify them
again."""

from __future__ import annotations

from lib.check.verify import TableVerification, schedule_repairs, verify_run
from lib.config.sources import SourceConfig
from lib.errors import MigrationError
from lib.log import ctx, get_logger

log = get_logger()


def verify_and_repair(config: SourceConfig, run_id: int, tables: set[str] | None, sample: float | None,
                      repair: bool, threads: int) -> tuple[list[TableVerification], list[TableVerification] | None,
                                                           list[str]]:
    """Verify; with `repair`, copy the differing chunks again and verify those tables again.
    Returns (first results, results after repair or None, what could not be repaired)."""
    from lib.run.orchestrator import finalize_run, reconcile_finished_tables, thread_count, work, work_plan

    first = verify_run(config, run_id, tables, sample, threads)
    if not repair or all(r.clean for r in first):
        return first, None, []
    repaired, refused = schedule_repairs(config, run_id, first)
    if not repaired:
        return first, None, refused
    plan = work_plan(config, run_id)
    stats = work(plan, thread_count(config, plan))
    if stats.errors:
        log.error("repair copies failed: %s", "; ".join(stats.errors[:3]), **ctx(run_id=run_id))
    reconcile_finished_tables(config, run_id)
    finalize_run(config, run_id)
    try:
        again = verify_run(config, run_id, set(repaired), None, threads, only=repaired)
    except MigrationError as exc:
        log.error("verifying the repairs failed: %s", exc, **ctx(run_id=run_id))
        raise
    return first, again, refused
