"""Every chunk of a copy sees one state of the source: rows updated between the reads of two chunks are copied
exactly once, as they were when the run started, whatever column the chunks are cut on. Where the table cannot be
read at one point in time, the plan says so and why."""

from __future__ import annotations

import pytest

from lib import ledger as status
from lib.run.orchestrator import run
from tests.helpers import at_fault_point_once

# The stand-in keeps Time Travel for 1 day (Snowflake's default): a resume window of 24 h is covered by it.
COVERED = {"resume_max_age": 24, "parallel_threads": 1}


def _update_after_first_commit(env, monkeypatch, *statements: str) -> list[str]:
    """Run `statements` in Snowflake once, right after the run's first chunk commits (before the next is read)."""
    return at_fault_point_once(monkeypatch, "after_commit", lambda: env.sf_execute(*statements))


def _log_table(env) -> None:
    """No key and no ID: the engine cuts chunks on UPDATED_AT, 100 rows a day for 10 days."""
    env.sf_execute("CREATE TABLE LOG (NAME VARCHAR, UPDATED_AT TIMESTAMP_NTZ)",
                   "INSERT INTO LOG SELECT 'row ' || SEQ8(), DATEADD(minute, SEQ8() * 14, '2024-01-01'::TIMESTAMP_NTZ) "
                   "FROM TABLE(GENERATOR(ROWCOUNT => 1000))")


def test_rows_updated_between_two_chunk_reads_of_a_date_chunked_table_are_copied_once_as_they_were(env, monkeypatch):
    _log_table(env)
    before = sorted(env.sf_rows("SELECT NAME, UPDATED_AT FROM LOG"))
    # the first chunk holds the first days: move one of its rows to the last day, and one of the last day's back
    updated = _update_after_first_commit(
        env, monkeypatch,
        "UPDATE LOG SET UPDATED_AT = '2024-01-10 12:00:00' WHERE NAME = 'row 5'",
        "UPDATE LOG SET UPDATED_AT = '2024-01-01 00:01:00' WHERE NAME = 'row 990'")

    result = run(env.config([{"source": "LOG"}], chunk_rows=150, **COVERED))

    assert updated, "the update ran between two chunk reads"
    assert result.status == "completed", result.tables
    assert sorted(env.pg_rows("SELECT name, updated_at FROM public.log")) == before
    notes = env.pg_value(f"SELECT plan_notes::text FROM {status.SCHEMA}.migration_table_status")
    assert "reads: AT(TIMESTAMP =>" in notes and "not one snapshot" not in notes


def test_rows_updated_between_two_chunk_reads_of_a_hash_chunked_table_are_copied_once_as_they_were(env, monkeypatch):
    env.sf_execute("CREATE TABLE TAGS (NAME VARCHAR, WEIGHT FLOAT)",
                   "INSERT INTO TAGS SELECT 'tag ' || SEQ8(), SEQ8() / 7 FROM TABLE(GENERATOR(ROWCOUNT => 1000))")
    before = sorted(env.sf_rows("SELECT NAME, WEIGHT FROM TAGS"))
    updated = _update_after_first_commit(env, monkeypatch, "UPDATE TAGS SET NAME = NAME || ' renamed' WHERE WEIGHT < 30")

    result = run(env.config([{"source": "TAGS"}], chunk_rows=200, **COVERED))

    assert updated and result.status == "completed", result.tables
    assert env.pg_value(f"SELECT strategy FROM {status.SCHEMA}.migration_table_status") == "hash"
    assert sorted(env.pg_rows("SELECT name, weight FROM public.tags")) == before


@pytest.mark.parametrize(("settings", "why"), [
    ({"snapshot": False}, "reads: live (snapshot false)"),
    ({}, "Time Travel keeps 1 day(s) (24 h) of"),  # the default resume window (168 h) outlasts the history
])
def test_a_table_read_live_on_a_column_that_can_change_says_it_is_not_one_snapshot_and_why(env, settings, why) -> None:
    _log_table(env)
    result = run(env.config([{"source": "LOG"}], chunk_rows=150, **settings))
    assert result.status == "completed"
    notes = env.pg_value(f"SELECT plan_notes::text FROM {status.SCHEMA}.migration_table_status")
    assert why in notes
    assert "not one snapshot: chunks are cut on UPDATED_AT, a date column that is not a key" in notes
