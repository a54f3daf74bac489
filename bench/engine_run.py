"""One engine run in a fresh process, as a Lambda or `migrate.py` runs it, reporting its own memory.

    python -m bench.engine_run CONFIG SOURCE '{"parallel_threads": 2}'

Prints one JSON line: the run's outcome, this process's peak RSS (VmHWM) and its RSS once the engine
was imported, its CPU seconds, and the memory budget's estimate for the threads the run used, from the
shapes the orchestrator budgets with (work_plan; lib/plan/budget.py).
"""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path
from typing import Any

from lib import ledger
from lib.config import load_config
from lib.plan.budget import MIB, estimate_bytes, widest
from lib.run.orchestrator import run, work_plan
from lib.target import postgres as pg


def vm(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def main() -> None:
    config_path, source, raw = sys.argv[1], sys.argv[2], sys.argv[3]
    started_mb = vm("VmRSS")
    config = load_config(source, json.loads(raw), Path(config_path))
    result = run(config)
    shapes = list(work_plan(config, result.run_id).shapes.values())  # what the orchestrator budgeted with
    with pg.connect(config.postgres_connect_args(), autocommit=True) as conn:
        workers = conn.execute(f"SELECT count(DISTINCT worker) FROM {ledger.SCHEMA}.migration_chunk_status "
                               "WHERE run_id = %s AND status = 'done'", (result.run_id,)).fetchone()[0]  # type: ignore[index]
        stored = list(ledger.read_shapes(conn, result.run_id).values())
    usage = resource.getrusage(resource.RUSAGE_SELF)
    shape = widest(shapes)
    report: dict[str, Any] = {
        "status": result.status, "run_id": result.run_id, "tables": result.tables, "workers": int(workers),
        "peak_mb": vm("VmHWM"), "started_mb": started_mb, "cpu": round(usage.ru_utime + usage.ru_stime, 2),
        "estimate_mb": round(estimate_bytes(int(workers), shapes) / MIB, 1),
        "per_thread": shape.describe() if shape else "",
        "source_results": shapes[0].results if shapes else None,
        "largest_chunk_rows": max((largest for _, _, largest in stored), default=0),
        "row_bytes": max((row_bytes or 0 for _, row_bytes, _ in stored), default=0),
    }
    print(json.dumps(report, default=str))


if __name__ == "__main__":
    main()
