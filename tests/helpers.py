"""Small helpers shared by tests: run the real CLI as a subprocess; make planning fail once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def cli(env: dict[str, str], config: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "migrate.py"), *args, "--source", "test", "--config", str(config)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )


def cli_popen(env: dict[str, str], config: Path, *args: str) -> subprocess.Popen[Any]:
    return subprocess.Popen(
        [sys.executable, str(ROOT / "migrate.py"), *args, "--source", "test", "--config", str(config)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def fail_planning_once(monkeypatch: Any, table: str) -> list[str]:
    """Planning `table` (the source table's name) fails once with a transient error, then works again.
    Returns the list that records the failure."""
    from lib.errors import TransientError
    from lib.plan import tables as planning

    real, failed = planning.plan_table, []

    def flaky(source: Any, spec: Any, columns: Any, chunk_rows: int) -> Any:
        if spec.source[-1] == table and not failed:
            failed.append(spec.name)
            raise TransientError("server closed the connection unexpectedly (injected)")
        return real(source, spec, columns, chunk_rows)

    monkeypatch.setattr(planning, "plan_table", flaky)
    return failed


def at_fault_point_once(monkeypatch: Any, point: str, action: Any) -> list[str]:
    """Call `action()` once, the first time the engine passes fault point `point` (lib/faults.py), e.g. to change
    the source right after the first chunk commits. Returns the list that records it."""
    from lib import faults

    real, done = faults.maybe_crash, []

    def hook(reached: str) -> None:
        if reached == point and not done:
            done.append(reached)
            action()
        real(reached)

    monkeypatch.setattr(faults, "maybe_crash", hook)
    return done


def first_live_window(env: Any, target_ddl: str, key: list[str]) -> list[dict[str, Any]]:
    """ITEMS with a watermark, its target created by `target_ddl`, loaded by a first window merged on `key` (read
    live): the tables of the next window's config."""
    env.sf_execute("CREATE TABLE ITEMS (ID NUMBER(18,0), NAME VARCHAR, UPDATED_AT TIMESTAMP_NTZ)",
                   "INSERT INTO ITEMS SELECT SEQ8(), 'item ' || SEQ8(), DATEADD(second, SEQ8(), '2024-01-01'::TIMESTAMP_NTZ) "
                   "FROM TABLE(GENERATOR(ROWCOUNT => 1000))")
    with env.pg() as conn:
        conn.execute(target_ddl)
    from lib.run.orchestrator import run

    table = [{"source": "ITEMS", "source_watermark": "UPDATED_AT", "merge_key": key, "chunking_columns": ["ID"],
              "chunking_column_types": ["numeric"]}]
    assert run(env.config(table, snapshot=False)).status == "completed"
    return table


def twin_after_first_chunk(env: Any, monkeypatch: Any) -> list[str]:
    """A source of 1,000 rows keyed on ID (not enforced) and cut on GRP, a target that holds keys 0-9; after the
    first chunk commits, a second row for key 5 arrives in the last chunk's range of GRP. Returns the list that
    records its arrival."""
    env.sf_execute("CREATE TABLE ITEMS (ID NUMBER(18,0), GRP NUMBER(18,0), NAME VARCHAR)",
                   "INSERT INTO ITEMS SELECT SEQ8(), SEQ8(), 'item ' || SEQ8() FROM TABLE(GENERATOR(ROWCOUNT => 1000))")
    with env.pg() as conn:
        conn.execute("CREATE TABLE public.items (id bigint PRIMARY KEY, grp bigint, name text)")
        conn.execute("INSERT INTO public.items SELECT g, g, 'kept ' || g FROM generate_series(0, 9) g")
    return at_fault_point_once(monkeypatch, "after_commit",
                               lambda: env.sf_execute("INSERT INTO ITEMS VALUES (5, 990, 'a second row for key 5')"))
