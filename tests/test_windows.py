"""Watermark windows that cannot lose a row: the lower end is inclusive, values compare at full precision, a
high-water mark belongs to its whole scope, a source that changes during a window neither loses rows nor blocks
the next window, and verify checks the window the run copied."""

from __future__ import annotations

import pytest

from lib import ledger as status
from lib.check.verify import verify_run
from lib.run.orchestrator import run
from lib.target.windows import Window, last_load, load_scope, lowered
from tests.helpers import at_fault_point_once

NUMERIC = {"chunking_columns": ["ID"], "chunking_column_types": ["numeric"]}


def _source(env, watermark_type: str = "TIMESTAMP_NTZ", rows: int = 1000) -> None:
    value = ("DATEADD(day, FLOOR(SEQ8() / 100), '2024-01-01'::DATE)" if watermark_type == "DATE"
             else "DATEADD(second, SEQ8(), '2024-01-01'::TIMESTAMP_NTZ)")
    env.sf_execute(f"CREATE TABLE ITEMS (ID NUMBER(18,0) PRIMARY KEY, NAME VARCHAR, UPDATED_AT {watermark_type})",
                   f"INSERT INTO ITEMS SELECT SEQ8(), 'item ' || SEQ8(), {value} FROM TABLE(GENERATOR(ROWCOUNT => {rows}))")


def _same(env) -> None:
    source = {int(r[0]): (r[1], str(r[2])) for r in env.sf_rows("SELECT ID, NAME, UPDATED_AT FROM ITEMS")}
    target = {int(r[0]): (r[1], str(r[2])) for r in env.pg_rows("SELECT id, name, updated_at FROM public.items")}
    assert target == source
    assert env.pg_value("SELECT count(*) FROM public.items") == len(source), "a row was doubled"


WINDOW = [{"source": "ITEMS", "source_watermark": "UPDATED_AT", **NUMERIC}]


def test_a_row_that_arrives_later_on_the_last_windows_day_is_read_by_the_next_window(env) -> None:
    _source(env, "DATE")
    assert run(env.config(WINDOW, chunk_rows=400)).status == "completed"
    last_day = env.sf_rows("SELECT MAX(UPDATED_AT) FROM ITEMS")[0][0]
    env.sf_execute(f"INSERT INTO ITEMS VALUES (5000, 'late on the last day', '{last_day}')")

    second = run(env.config(WINDOW, chunk_rows=400))

    assert second.status == "completed", second.tables
    _same(env)


def test_a_row_that_arrives_later_at_the_last_windows_exact_timestamp_is_read_by_the_next_window(env) -> None:
    _source(env)
    assert run(env.config(WINDOW, chunk_rows=400)).status == "completed"
    env.sf_execute("INSERT INTO ITEMS SELECT 5000, 'late, same instant', MAX(UPDATED_AT) FROM ITEMS")
    assert run(env.config(WINDOW, chunk_rows=400)).status == "completed"
    _same(env)


def test_window_values_compare_at_nanoseconds_and_every_decimal_digit() -> None:
    nanos = Window("TS", "timestamp", "2024-01-01 00:00:00.123456000", "2024-01-01 00:00:00.123456789", "ledger")
    assert not nanos.empty, "a window whose ends differ below the microsecond is not empty"
    assert nanos.predicate() == ('"TS" >= \'2024-01-01 00:00:00.123456000\'::TIMESTAMP_NTZ(9) '
                                 'AND "TS" <= \'2024-01-01 00:00:00.123456789\'::TIMESTAMP_NTZ(9)')
    assert not Window("N", "numeric", "1.0000000000000000000001", "1.0000000000000000000002", "ledger").empty
    assert Window("N", "numeric", "2", "1.99999999999999999999", "ledger").empty
    assert not Window("D", "date", "2024-01-05", "2024-01-05", "ledger").empty, "the boundary day is read again"
    assert lowered("timestamp", "2024-01-01 00:00:00.000000001", 0.5) == "2023-12-31 23:59:59.500000001"
    assert lowered("timestamptz", "2024-03-01 00:00:00", 86_400) == "2024-02-29 00:00:00.000000000"
    # verification cuts both sides to PostgreSQL's microseconds, the same way
    source_sql, _, params = nanos.verified_predicates("ts")
    assert params == ["2024-01-01 00:00:00.123456", "2024-01-01 00:00:00.123456"]
    assert "'2024-01-01 00:00:00.123457'::TIMESTAMP_NTZ(9)" in source_sql


def test_a_widened_source_filter_starts_the_window_afresh_and_copies_the_rows_it_now_includes(env) -> None:
    _source(env)
    narrow = [{**WINDOW[0], "source_filter": "ID < 500"}]
    assert run(env.config(narrow, chunk_rows=400)).status == "completed"
    assert env.pg_value("SELECT count(*) FROM public.items") == 500

    wide = run(env.config(WINDOW, chunk_rows=400))

    assert wide.status == "completed", wide.tables
    _same(env)
    notes = env.pg_value(f"SELECT plan_notes::text FROM {status.SCHEMA}.migration_table_status WHERE run_id = 2")
    assert "window starts afresh" in notes and "filter 'ID < 500' → None" in notes


def test_a_high_water_mark_belongs_to_its_whole_scope(env) -> None:
    with env.pg() as conn:
        from lib.ledger import schema as ledger_schema

        ledger_schema.apply_migrations(conn)
        scope = load_scope("acct", ("DB", "S", "T"), "X > 1", "TS", "public.t")
        conn.execute(f"INSERT INTO {status.SCHEMA}.migration_runs (config_hash, source_name, status) VALUES ('h', 's', 'completed')")
        conn.execute(f"INSERT INTO {status.SCHEMA}.migration_table_status (run_id, table_name, target_table, status, "
                     "watermark_column, watermark_lo, watermark_hi, load_scope, completed_at) VALUES "
                     "(1, 'DB.S.T', 'public.t', 'completed', 'TS', NULL, '2024-05-01', %s, now())",
                     (__import__("json").dumps(scope),))
        assert last_load(conn, scope, 99).hi == "2024-05-01"
        for changed in ({"account": "other"}, {"source": "DB.S.U"}, {"filter": None}, {"watermark": "TS2"}):
            other = last_load(conn, {**scope, **changed}, 99)
            assert other.hi is None and not other.target_max_serves and other.why, changed
        assert last_load(conn, {**scope, "target": "public.u"}, 99).target_max_serves  # nothing loaded there yet


def _update_after_first_commit(env, monkeypatch, *statements: str) -> list[str]:
    """Run `statements` in Snowflake once, right after the run's first chunk commits (before the next is read)."""
    return at_fault_point_once(monkeypatch, "after_commit", lambda: env.sf_execute(*statements))


# rows of the first chunk move out of the second window right after that chunk commits: counted now, the window
# holds fewer rows than were read
MOVE = "UPDATE ITEMS SET NAME = 'moved', UPDATED_AT = '2030-01-01 00:00:00' WHERE ID < 10"


@pytest.mark.parametrize("reads", ["snapshot", "live"])
def test_a_source_updated_during_a_window_loses_nothing_and_never_blocks_the_next_window(env, monkeypatch, reads) -> None:
    settings = {"parallel_threads": 1, **({"resume_max_age": 24} if reads == "snapshot" else {})}
    _source(env)
    assert run(env.config(WINDOW, chunk_rows=400, **settings)).status == "completed"
    env.sf_execute("UPDATE ITEMS SET NAME = 'changed', UPDATED_AT = DATEADD(day, 1, UPDATED_AT) WHERE ID % 2 = 0")
    moved = _update_after_first_commit(env, monkeypatch, MOVE)

    second = run(env.config(WINDOW, chunk_rows=200, **settings))

    assert moved and second.status == "completed", second.tables
    verdict = env.pg_value(f"SELECT reconcile_status FROM {status.SCHEMA}.migration_table_status WHERE run_id = 2")
    assert verdict == ("match" if reads == "snapshot" else "source_changed")
    third = run(env.config(WINDOW, chunk_rows=200, **settings))
    assert third.status == "completed" and third.run_id == 3, third.tables
    _same(env)


def test_verify_of_a_watermark_table_checks_the_window_the_run_copied(env) -> None:
    _source(env)
    config = env.config(WINDOW, chunk_rows=400)
    assert run(config).status == "completed"
    env.sf_execute("UPDATE ITEMS SET NAME = 'changed', UPDATED_AT = '2026-01-01' WHERE ID < 10")
    assert run(env.config(WINDOW, chunk_rows=400)).status == "completed"
    # rows that arrive after the run planned its window are the next window's, not a difference
    env.sf_execute("INSERT INTO ITEMS SELECT 10000 + SEQ8(), 'after', '2027-01-01' FROM TABLE(GENERATOR(ROWCOUNT => 50))",
                   "UPDATE ITEMS SET NAME = 'changed again', UPDATED_AT = '2027-01-02' WHERE ID BETWEEN 500 AND 510")

    results = verify_run(config, 2, threads=2)

    assert all(r.clean for r in results), results
    assert sum(r.checked for r in results) >= 1
    with env.pg() as conn:  # and a real difference inside the window is found
        conn.execute("UPDATE public.items SET name = 'damaged' WHERE id = 3")
    assert not all(r.clean for r in verify_run(config, 2, threads=2))


def test_a_zoned_watermark_at_the_last_instant_written_in_another_offset_is_read_by_a_small_window(env) -> None:
    """The window that finds almost nothing is one chunk counted with its high end: its lower end still compares
    instants, so a row at the last window's instant written in another offset is read, once."""
    env.sf_execute("CREATE TABLE ITEMS (ID NUMBER(18,0) PRIMARY KEY, NAME VARCHAR, UPDATED_AT TIMESTAMP_TZ)",
                   "INSERT INTO ITEMS SELECT SEQ8(), 'item', DATEADD(second, SEQ8(), "
                   "'2024-01-01 00:00:00 +00:00'::TIMESTAMP_TZ) FROM TABLE(GENERATOR(ROWCOUNT => 100))")
    assert run(env.config(WINDOW)).status == "completed"
    # the last instant, 00:01:39 UTC, written at +05:00; and one just before it, which the window must not take
    env.sf_execute("INSERT INTO ITEMS VALUES (5000, 'same instant, +05:00', '2024-01-01 05:01:39 +05:00'::TIMESTAMP_TZ)",
                   "INSERT INTO ITEMS VALUES (5001, 'a second earlier, -03:00', '2023-12-31 21:01:38 -03:00'::TIMESTAMP_TZ)")

    second = run(env.config(WINDOW))

    assert second.status == "completed" and second.tables[0]["reconcile"] == "match", second.tables
    reason = env.pg_value(f"SELECT strategy_reason FROM {status.SCHEMA}.migration_table_status ORDER BY run_id DESC LIMIT 1")
    assert "incremental window of 2 row(s)" in reason  # the row at the boundary, read again, and the late one
    ids = {int(r[0]) for r in env.pg_rows("SELECT id FROM public.items")}
    assert 5000 in ids and 5001 not in ids and len(ids) == 101
    assert env.pg_value("SELECT count(*) FROM public.items") == 101


def test_a_window_read_as_one_chunk_is_counted_again_at_reconcile_and_rows_that_arrived_meanwhile_are_read(
        env, monkeypatch) -> None:
    """A small window's one chunk reads the whole window at one instant, and reconcile counts it again: a row that
    arrives below hi after that read is caught by the count, not by planning's."""
    from lib.source.snowflake import SnowflakeSource

    _source(env)
    assert run(env.config(WINDOW)).status == "completed"
    counted = []
    real = SnowflakeSource.count
    monkeypatch.setattr(SnowflakeSource, "count", lambda self, *a, **k: counted.append(a) or real(self, *a, **k))
    env.sf_execute("INSERT INTO ITEMS VALUES (5000, 'new', '2025-01-01')")

    quiet = run(env.config(WINDOW))

    assert quiet.status == "completed" and quiet.tables[0]["reconcile"] == "match", quiet.tables
    assert quiet.tables[0]["source_count"] == 2 and quiet.tables[0]["rows_copied"] == 2  # the boundary row and the new one
    assert len(counted) == 1
    _same(env)

    # a row arrives at the window's lower end after planning counted the window and before its chunk reads it
    late = at_fault_point_once(monkeypatch, "after_claim",
                               lambda: env.sf_execute("INSERT INTO ITEMS VALUES (5001, 'late', '2025-01-01')"))
    env.sf_execute("INSERT INTO ITEMS VALUES (5002, 'newer', '2025-01-02')")

    busy = run(env.config(WINDOW))

    assert late and busy.status == "completed" and busy.tables[0]["reconcile"] == "match", busy.tables
    assert busy.tables[0]["rows_copied"] == 3 and busy.tables[0]["source_count"] == 3 and len(counted) == 2
    _same(env)


LIVE = [{"source": "ITEMS", "source_watermark": "UPDATED_AT", **NUMERIC}]


def _statements(monkeypatch) -> list[str]:
    """Every statement the engine sends to Snowflake from now on."""
    from lib.source import snowflake as snowflake_source

    sent: list[str] = []
    real = snowflake_source.run
    monkeypatch.setattr(snowflake_source, "run", lambda cur, sql, params=None: sent.append(sql) or real(cur, sql, params))
    return sent


def test_a_run_that_finds_little_new_sends_snowflake_two_queries_per_table_and_one_that_finds_nothing_one(
        env, monkeypatch) -> None:
    """Read live, a window after the first finds its columns, its high end, its size and (small) its rows in one
    query, and its chunk is written from those rows; reconcile counts it once more. A window that finds nothing
    newer than its lower end is not counted again: it holds only rows at that end, which the next window reads
    again, so a row arriving there after the one query is read by the next run."""
    _source(env)
    assert run(env.config(LIVE, snapshot=False)).status == "completed"
    env.sf_execute("INSERT INTO ITEMS VALUES (5000, 'new', '2025-01-01')",
                   "UPDATE ITEMS SET NAME = 'changed', UPDATED_AT = '2025-01-02' WHERE ID = 3")
    sent = _statements(monkeypatch)

    changed = run(env.config(LIVE, snapshot=False))

    assert changed.status == "completed" and changed.tables[0]["reconcile"] == "match", changed.tables
    assert changed.tables[0]["rows_copied"] == 3  # the last window's boundary row, the new one and the changed one
    assert len(sent) == 2 and "_MIGRATION_HI" in sent[0] and "COUNT(*)" in sent[1], sent
    _same(env)
    notes = env.pg_value(f"SELECT plan_notes::text FROM {status.SCHEMA}.migration_table_status ORDER BY run_id DESC LIMIT 1")
    assert "row(s) were read by the query that found its high end" in notes

    sent.clear()
    late = at_fault_point_once(monkeypatch, "after_commit",  # at the window's one end, after its one query
                               lambda: env.sf_execute("INSERT INTO ITEMS VALUES (5003, 'late', '2025-01-02')"))
    quiet = run(env.config(LIVE, snapshot=False))
    assert late and quiet.status == "completed" and quiet.tables[0]["reconcile"] == "match", quiet.tables
    assert len(sent) == 1 and "_MIGRATION_HI" in sent[0], sent
    assert quiet.tables[0]["rows_copied"] == quiet.tables[0]["source_count"] == 1  # the row at the lower end

    assert run(env.config(LIVE, snapshot=False)).status == "completed"
    _same(env)


def test_a_window_too_large_for_one_chunk_or_after_a_schema_change_is_planned_and_read_as_before(env, monkeypatch) -> None:
    _source(env)
    config = env.config(LIVE, snapshot=False, chunk_rows=400)  # one chunk holds at most 400 rows of a window
    assert run(config).status == "completed"
    env.sf_execute("INSERT INTO ITEMS SELECT 10000 + SEQ8(), 'new', DATEADD(second, SEQ8(), '2025-01-01'::TIMESTAMP_NTZ) "
                   "FROM TABLE(GENERATOR(ROWCOUNT => 500))")
    sent = _statements(monkeypatch)

    large = run(config)

    assert large.status == "completed" and large.tables[0]["reconcile"] == "match", large.tables
    assert large.tables[0]["chunks"] > 1 and large.tables[0]["rows_copied"] == 501
    _same(env)
    # planned from the probe (whose rows, unused, measured the row size) and the bucket query, which also checks
    # the key's column: no sample, no key query
    planning = [s for s in sent if "_MIGRATION_HI" in s or "RANK() OVER" in s or "LIMIT %(n)s" in s or "HAS_NULL" in s]
    assert len(planning) == 2 and "_MIGRATION_HI" in planning[0] and "RANK() OVER" in planning[1], planning
    sent.clear()

    env.sf_execute("ALTER TABLE ITEMS ADD COLUMN NOTE VARCHAR(10)", "UPDATE ITEMS SET NOTE = 'n' || ID")
    added = run(config)
    assert added.status == "completed", added.tables
    assert any("information_schema.columns" in s and "MD5" not in s for s in sent), "the new columns were described"
    notes = env.pg_value(f"SELECT plan_notes::text FROM {status.SCHEMA}.migration_table_status ORDER BY run_id DESC LIMIT 1")
    assert "reads the whole scope" in notes
    source = {int(r[0]): r[1] for r in env.sf_rows("SELECT ID, NOTE FROM ITEMS")}
    assert dict(env.pg_rows("SELECT id, note FROM public.items")) == source
    _same(env)


def test_a_source_table_gone_since_the_last_window_fails_its_table_saying_so(env) -> None:
    _source(env)
    assert run(env.config(LIVE, snapshot=False)).status == "completed"
    env.sf_execute("DROP TABLE ITEMS")

    gone = run(env.config(LIVE, snapshot=False))

    assert gone.status == "completed_with_errors"
    error = env.pg_value(f"SELECT error FROM {status.SCHEMA}.migration_table_status ORDER BY run_id DESC LIMIT 1")
    assert "does not exist or the configured role cannot see it" in error, error


def test_a_row_committed_late_below_the_windows_high_end_is_read_by_the_next_window_within_the_lag(
        env, monkeypatch) -> None:
    """A row whose watermark is older than rows already read (a transaction that committed late) is behind the
    window that read the others; watermark_lag starts the next window early enough to read it."""
    _source(env)
    table = [{**LIVE[0], "watermark_lag": 3600}]
    assert run(env.config(table, snapshot=False)).status == "completed"
    env.sf_execute("INSERT INTO ITEMS VALUES (5000, 'new', '2025-01-01 12:00:00')")
    late = at_fault_point_once(monkeypatch, "during_read", lambda: env.sf_execute(  # after the window's one query
        "INSERT INTO ITEMS VALUES (5001, 'committed late', '2025-01-01 11:30:00')"))

    first = run(env.config(table, snapshot=False))

    assert late and first.status == "completed"
    assert env.pg_value("SELECT count(*) FROM public.items WHERE id = 5001") == 0  # behind the window, for now
    second = run(env.config(table, snapshot=False))
    assert second.status == "completed" and second.tables[0]["reconcile"] == "match", second.tables
    _same(env)


def test_a_window_read_at_a_snapshot_is_not_counted_again_at_reconcile(env, monkeypatch) -> None:
    """Planning counted the window at the run's snapshot, the point every chunk reads: reconcile takes that count
    instead of scanning the window once more, and a row added meanwhile belongs to the next window."""
    _source(env)
    assert run(env.config(WINDOW, snapshot=True)).status == "completed"
    env.sf_execute("INSERT INTO ITEMS VALUES (5000, 'new', '2025-01-01')")
    sent = _statements(monkeypatch)
    late = at_fault_point_once(monkeypatch, "after_commit",
                               lambda: env.sf_execute("INSERT INTO ITEMS VALUES (5001, 'late', '2025-01-01')"))

    second = run(env.config(WINDOW, snapshot=True))

    assert late and second.status == "completed" and second.tables[0]["reconcile"] == "match", second.tables
    assert second.tables[0]["source_count"] == second.tables[0]["rows_copied"] == 2  # the boundary row and 5000
    assert not any("COUNT(*) FROM" in s and "_MIGRATION" not in s for s in sent), sent
    assert run(env.config(WINDOW, snapshot=True)).status == "completed"
    _same(env)



@pytest.mark.parametrize(("watermark_type", "older", "last", "late"), [
    # the last instant, 00:01:39 UTC, stored at +00:00; the late row at the same instant written at +05:00
    ("TIMESTAMP_TZ", "'2023-06-01 00:00:00 +00:00'::TIMESTAMP_TZ", "'2024-01-01 00:01:39 +00:00'::TIMESTAMP_TZ",
     "'2024-01-01 05:01:39 +05:00'::TIMESTAMP_TZ"),
    ("DATE", "'2023-06-01'::DATE", "'2024-04-09'::DATE", "'2024-04-09'::DATE"),
    ("NUMBER(38,9)", "1", "99.000000001", "99.000000001"),
], ids=["zoned", "date", "decimal"])
def test_a_run_that_finds_nothing_new_is_not_counted_again_and_a_row_arriving_at_its_end_is_read_next(
        env, monkeypatch, watermark_type, older, last, late) -> None:
    """Nothing newer than the last window's end: the window (every row at that end) is reconciled by the count of its
    one query. A row arriving at that same end after the query, in another offset, a date or a decimal equal to
    the last digit, is read by the next window, never lost behind the `match`."""
    env.sf_execute(f"CREATE TABLE ITEMS (ID NUMBER(18,0) PRIMARY KEY, NAME VARCHAR, UPDATED_AT {watermark_type})",
                   f"INSERT INTO ITEMS SELECT SEQ8(), 'item ' || SEQ8(), {last} FROM TABLE(GENERATOR(ROWCOUNT => 3))",
                   f"INSERT INTO ITEMS VALUES (10, 'older', {older})")
    assert run(env.config(LIVE, snapshot=False)).status == "completed"
    assert run(env.config(LIVE, snapshot=False)).status == "completed"  # the window from the ledger's end onwards
    sent = _statements(monkeypatch)
    late_row = at_fault_point_once(monkeypatch, "after_commit",
                                   lambda: env.sf_execute(f"INSERT INTO ITEMS VALUES (5000, 'late', {late})"))

    quiet = run(env.config(LIVE, snapshot=False))

    assert late_row and quiet.status == "completed" and quiet.tables[0]["reconcile"] == "match", quiet.tables
    assert quiet.tables[0]["source_count"] == quiet.tables[0]["rows_copied"] == 3  # the rows at the end, once each
    assert len(sent) == 1, sent
    nxt = run(env.config(LIVE, snapshot=False))
    assert nxt.status == "completed" and nxt.tables[0]["reconcile"] == "match", nxt.tables
    assert env.pg_value("SELECT count(*) FROM public.items WHERE id = 5000") == 1
    assert env.pg_value("SELECT count(*) FROM public.items") == env.pg_value("SELECT count(DISTINCT id) FROM public.items") == 5
