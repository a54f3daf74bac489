"""Deletes (`deletes` hard or soft) of merge and watermark tables: rows deleted in Snowflake leave the target
(or are marked), found by key-range checksums so that only the ranges that differ have their keys read; a pass
that would delete more than max_delete_fraction is refused and deletes nothing; a killed pass resumes exact."""

from __future__ import annotations

import signal
import time
from typing import Any

import pytest

from lib.check import deletes
from lib.errors import TransientError
from lib.run.orchestrator import finalize_run, reconcile_finished_tables, run, start_run, work, work_plan
from tests.helpers import cli

ROWS = 6000
WATERMARK = {"source": "DT", "target": "public.dt", "source_watermark": "UPDATED_AT", "merge_key": ["ID"],
             "chunking_columns": ["ID"], "chunking_column_types": ["numeric"]}
MERGE = {"source": "DT", "target": "public.dt", "insert_only_mode": False, "merge_key": ["ID"],
         "chunking_columns": ["ID"], "chunking_column_types": ["numeric"]}


def _source(env: Any, rows: int = ROWS) -> None:
    env.sf_execute(
        "CREATE TABLE DT (ID NUMBER(18,0) PRIMARY KEY, V VARCHAR, UPDATED_AT TIMESTAMP_NTZ)",
        f"INSERT INTO DT SELECT (SEQ8() + 1)::NUMBER(18,0), 'v' || SEQ8(), "
        f"DATEADD(second, SEQ8(), '2024-01-01'::TIMESTAMP_NTZ) FROM TABLE(GENERATOR(ROWCOUNT => {rows}))")


def _target_equals_source(env: Any, live: str = "TRUE") -> None:
    source = sorted((int(i), v) for i, v in env.sf_rows("SELECT ID, V FROM DT"))
    target = sorted((int(i), v) for i, v in env.pg_rows(f"SELECT id, v FROM public.dt WHERE {live}"))
    assert target == source


def _passes(env: Any) -> list[tuple[Any, ...]]:
    return env.pg_rows("SELECT mode, key_ranges, differing_ranges, deleted, restored, refused "
                       "FROM migration_status.delete_passes ORDER BY at")


def test_hard_deletes_of_a_watermark_table_read_only_the_ranges_that_differ(env, monkeypatch) -> None:
    monkeypatch.setattr(deletes, "RANGE_ROWS", 500)  # 12 ranges of the 6,000 keys
    _source(env)
    config = [{**WATERMARK, "deletes": "hard"}]
    assert run(env.config(config)).status == "completed"
    # 1% deleted, all in two ranges (IDs 1001-1500 and 4001-4500); some rows updated, some new
    env.sf_execute("DELETE FROM DT WHERE (ID BETWEEN 1001 AND 1500 OR ID BETWEEN 4001 AND 4500) AND MOD(ID, 17) = 0",
                   "UPDATE DT SET V = 'changed', UPDATED_AT = '2025-01-01' WHERE MOD(ID, 500) = 3",
                   "INSERT INTO DT SELECT (SEQ8() + 7001)::NUMBER(18,0), 'new', '2025-01-02'::TIMESTAMP_NTZ "
                   "FROM TABLE(GENERATOR(ROWCOUNT => 20))")
    second = run(env.config(config))

    assert second.status == "completed" and second.tables[0]["reconcile"] == "match", second.tables
    _target_equals_source(env)
    gone = len([i for i in [*range(1001, 1501), *range(4001, 4501)] if i % 17 == 0])
    mode, ranges, differing, deleted, restored, refused = _passes(env)[-1]
    assert (mode, deleted, restored, refused) == ("hard", gone, 0, None)
    # the two ranges with deletes and the last (open above) holding the new rows; the updated rows' keys are unchanged
    assert (ranges, differing) == (12, 3)


def test_soft_deletes_mark_the_rows_and_a_key_that_comes_back_is_restored(env) -> None:
    _source(env)
    config = [{**MERGE, "deletes": "soft"}]
    assert run(env.config(config, verify=True)).status == "completed"
    env.sf_execute("CREATE TABLE DT_GONE AS SELECT * FROM DT WHERE MOD(ID, 100) = 7",
                   "DELETE FROM DT WHERE MOD(ID, 100) = 7")
    assert run(env.config(config, verify=True)).status == "completed"  # verify compares the live rows

    _target_equals_source(env, "_deleted_at IS NULL")
    marked = {int(r[0]) for r in env.pg_rows("SELECT id FROM public.dt WHERE _deleted_at IS NOT NULL")}
    assert marked == {i for i in range(1, ROWS + 1) if i % 100 == 7}

    env.sf_execute("INSERT INTO DT SELECT * FROM DT_GONE WHERE ID < 1000")  # ten keys come back, values unchanged
    assert run(env.config(config)).status == "completed"
    _target_equals_source(env, "_deleted_at IS NULL")
    assert env.pg_value("SELECT count(*) FROM public.dt WHERE _deleted_at IS NOT NULL") == len(marked) - 10
    assert _passes(env)[-1][3:5] == (0, 10)


def test_a_pass_that_would_delete_40_percent_is_refused_until_the_fraction_is_raised(env) -> None:
    _source(env)
    path = env.write_config([{**MERGE, "deletes": "hard"}])
    assert cli(env.env, path).returncode == 0
    env.sf_execute("DELETE FROM DT WHERE MOD(ID, 5) IN (1, 2)")  # 40%: what a source read missing rows looks like

    refused = cli(env.env, path)
    assert refused.returncode != 0
    assert "would remove 2400 of its 6000 rows (40.0%), more than max_delete_fraction 0.05; nothing was deleted" in (
        refused.stdout + refused.stderr)
    assert env.pg_value("SELECT count(*) FROM public.dt") == ROWS
    assert env.pg_value("SELECT status FROM migration_status.migration_table_status ORDER BY run_id DESC LIMIT 1") == "failed"

    allowed = cli(env.env, path, "--max-delete-fraction", "0.41")
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr
    assert "resuming run" in allowed.stdout
    _target_equals_source(env)


@pytest.mark.parametrize("nth", [1, 2])
def test_a_pass_killed_between_ranges_resumes_exact(env, nth) -> None:
    _source(env, 60_000)  # three ranges of 25,000 keys at most
    path = env.write_config([{**WATERMARK, "deletes": "hard"}], defaults={"chunk_rows": 20_000})
    assert cli(env.env, path).returncode == 0
    env.sf_execute("DELETE FROM DT WHERE MOD(ID, 97) = 0")  # about 1%, in every range

    killed = cli({**env.env, "MIGRATION_FAULTS": f"during_deletes@{nth}"}, path)
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    assert env.pg_value("SELECT count(*) FROM public.dt") > 60_000 - 60_000 // 97  # some deletes are still to do
    resumed = cli(env.env, path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    _target_equals_source(env)


def test_hard_deletes_with_a_text_key_cut_in_code_point_order(env, monkeypatch) -> None:
    monkeypatch.setattr(deletes, "RANGE_ROWS", 400)
    env.sf_execute("CREATE TABLE DT (ID VARCHAR PRIMARY KEY, V VARCHAR, UPDATED_AT TIMESTAMP_NTZ)",
                   "INSERT INTO DT SELECT IFF(MOD(SEQ8(), 2) = 0, 'k-', 'K-') || LPAD(SEQ8()::VARCHAR, 5, '0'), "
                   "'v' || SEQ8(), '2024-01-01'::TIMESTAMP_NTZ FROM TABLE(GENERATOR(ROWCOUNT => 4000))")
    config = [{"source": "DT", "target": "public.dt", "source_watermark": "UPDATED_AT", "merge_key": ["ID"],
               "deletes": "hard"}]
    assert run(env.config(config)).status == "completed"
    env.sf_execute("DELETE FROM DT WHERE ID LIKE 'K-011%'")  # upper case: a block in code point order

    assert run(env.config(config)).status == "completed"
    target = sorted(r[0] for r in env.pg_rows("SELECT id FROM public.dt"))
    assert target == sorted(r[0] for r in env.sf_rows("SELECT ID FROM DT")) and len(target) == 3950
    mode, ranges, differing, deleted, _, _ = _passes(env)[-1]
    assert (mode, deleted) == ("hard", 50) and ranges >= 10 and differing == 1


def test_a_pass_split_across_step_invocations_advances_each_time_and_ends_exact(env, monkeypatch) -> None:
    """A Step Functions Reconcile invocation stops at its deadline; each one does a group at least."""
    monkeypatch.setattr(deletes, "RANGE_ROWS", 100)  # 60 ranges: two groups of checksums
    monkeypatch.setattr(deletes, "KEY_GROUP", 2)
    _source(env)
    config = env.config([{**MERGE, "deletes": "hard"}])
    assert run(config).status == "completed"
    env.sf_execute("DELETE FROM DT WHERE MOD(ID, 50) = 0")  # 2%, in every range

    start = start_run(config)
    work(work_plan(config, start.run_id), 2)
    calls = 0
    while env.pg_value("SELECT status FROM migration_status.migration_table_status WHERE run_id = %s",
                       (start.run_id,)) not in ("completed", "failed"):
        reconcile_finished_tables(config, start.run_id, deadline=time.monotonic() + 0.05)  # a tiny budget
        calls += 1
        assert calls < 100
    assert calls > 10  # two checksum groups, then 30 groups of differing ranges to apply, a few per call
    assert finalize_run(config, start.run_id) == "completed"
    _target_equals_source(env)
    _, ranges, differing, deleted, _, _ = _passes(env)[-1]
    assert deleted == 120 and ranges >= 55 and differing >= ranges - 2


def test_a_source_that_loses_rows_between_check_and_delete_is_judged_again_and_refused(env, monkeypatch) -> None:
    monkeypatch.setattr(deletes, "RANGE_ROWS", 100)
    _source(env)
    config = env.config([{**MERGE, "deletes": "hard"}])
    assert run(config).status == "completed"
    env.sf_execute("DELETE FROM DT WHERE MOD(ID, 100) = 0")  # 1%: the guard lets it pass

    start = start_run(config)
    work(work_plan(config, start.run_id), 2)
    while env.pg_value("SELECT count(*) FROM migration_status.delete_ranges WHERE NOT checked") != 0 \
            or not env.pg_value("SELECT count(*) FROM migration_status.delete_ranges"):
        reconcile_finished_tables(config, start.run_id, deadline=time.monotonic() + 0.05)
    env.sf_execute("DELETE FROM DT WHERE MOD(ID, 5) = 1")  # then a read that misses 20% more (a role, a truncate)

    with pytest.raises(TransientError, match="the source changed meanwhile"):
        reconcile_finished_tables(config, start.run_id)
    reconcile_finished_tables(config, start.run_id)  # checked again: the guard refuses the whole pass
    assert finalize_run(config, start.run_id) == "completed_with_errors"
    deleted_so_far = ROWS - env.pg_value("SELECT count(*) FROM public.dt")
    assert deleted_so_far <= ROWS // 100  # at most the 1% judged before the source changed, never the 20%
    assert "would remove" in env.pg_value("SELECT error FROM migration_status.migration_table_status "
                                          "WHERE run_id = %s", (start.run_id,))


def test_deletes_refuse_a_key_whose_text_differs_between_the_databases(env) -> None:
    _source(env)
    with env.pg() as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS citext")
        conn.execute("CREATE TABLE public.dt (id bigint, v citext PRIMARY KEY, updated_at timestamp)")
    config = env.config([{**MERGE, "merge_key": ["V"], "deletes": "hard", "chunking_columns": ["ID"]}])
    assert run(config).status == "completed"  # the first load copies into the empty table: nothing to delete
    env.sf_execute("DELETE FROM DT WHERE ID = 1")

    second = run(config)
    assert second.status == "completed_with_errors"
    assert "need a key whose text is the same in both databases" in second.tables[0]["error"]
    assert env.pg_value("SELECT count(*) FROM public.dt") == ROWS


def test_deletes_keep_the_rows_another_config_loaded_into_the_same_target(env) -> None:
    """Two configs fill one target with complementary filters; the one with deletes removes only what its own
    scope lost, never the other's rows (the target's scope is the union of the loads that hold it)."""
    _source(env)
    env.sf_execute("ALTER TABLE DT ADD COLUMN REGION VARCHAR", "UPDATE DT SET REGION = IFF(MOD(ID, 2) = 0, 'EU', 'US')")
    eu = env.config([{**MERGE, "source_filter": "REGION = 'EU'", "deletes": "hard"}])
    us = env.config([{**MERGE, "source_filter": "REGION = 'US'"}])
    assert run(eu).status == "completed" and run(us).status == "completed"
    assert env.pg_value("SELECT count(*) FROM public.dt") == ROWS
    env.sf_execute("DELETE FROM DT WHERE ID IN (2, 4, 6)")  # three EU rows gone

    again = run(eu)

    assert again.status == "completed", again.tables
    assert env.pg_value("SELECT count(*) FROM public.dt") == ROWS - 3
    assert env.pg_value("SELECT count(*) FROM public.dt WHERE region = 'US'") == ROWS // 2
    _target_equals_source(env)


def test_the_soft_delete_column_is_no_schema_difference_for_a_frozen_table(env) -> None:
    _source(env)
    config = env.config([{**MERGE, "deletes": "soft", "schema_changes": "freeze"}])
    assert run(config).status == "completed"
    env.sf_execute("DELETE FROM DT WHERE ID = 3")
    assert run(config).status == "completed"  # _deleted_at exists now: the target's own column, not a change
    env.sf_execute("DELETE FROM DT WHERE ID = 4")
    third = run(config)
    assert third.status == "completed", third.tables
    assert {int(r[0]) for r in env.pg_rows("SELECT id FROM public.dt WHERE _deleted_at IS NOT NULL")} == {3, 4}
    _target_equals_source(env, "_deleted_at IS NULL")
