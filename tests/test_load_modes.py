"""Load modes on the real stack: catch-up into a target that holds rows, merge, watermark incremental runs
and protected swap reloads. Each keeps every row exactly once."""

from __future__ import annotations

from datetime import datetime

import pyarrow as pa

from lib import ledger as status
from lib.run.orchestrator import reconcile_finished_tables, run, start_run, work, work_plan

ROWS = 3000
NUMERIC = {"chunking_columns": ["ID"], "chunking_column_types": ["numeric"]}


def _source(env, rows: int = ROWS) -> None:
    env.sf_execute(
        "CREATE TABLE ITEMS (ID NUMBER(18,0) PRIMARY KEY, NAME VARCHAR, PRICE NUMBER(12,2), UPDATED_AT TIMESTAMP_NTZ)",
        f"INSERT INTO ITEMS SELECT SEQ8(), 'item ' || SEQ8(), (SEQ8() % 1000) / 10, "
        f"DATEADD(second, SEQ8(), '2024-01-01'::TIMESTAMP_NTZ) FROM TABLE(GENERATOR(ROWCOUNT => {rows}))",
    )


def _target_rows(env, table: str = "items") -> dict[int, tuple]:
    return {r[0]: r[1:] for r in env.pg_rows(f"SELECT id, name, price, updated_at FROM public.{table}")}


def _source_rows(env) -> dict[int, tuple]:
    return {int(r[0]): (r[1], r[2], r[3]) for r in env.sf_rows("SELECT ID, NAME, PRICE, UPDATED_AT FROM ITEMS")}


def _when(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text[:26])


def _loads(env) -> list[tuple]:
    return env.pg_rows("SELECT run_id, load_mode, rows_read, rows_inserted, rows_updated, watermark_lo, watermark_hi "
                       f"FROM {status.SCHEMA}.table_loads ORDER BY run_id")


def test_catch_up_into_a_target_that_holds_rows_skips_exactly_the_existing_keys(env) -> None:
    _source(env)
    with env.pg() as conn:
        conn.execute("CREATE TABLE public.items (id bigint PRIMARY KEY, name text, price numeric(12,2), updated_at timestamp)")
        conn.execute("INSERT INTO public.items SELECT g, 'kept ' || g, 0, NULL FROM generate_series(0, 2099) g")

    result = run(env.config([{"source": "ITEMS", "source_filter": "ID >= 2000", **NUMERIC}], chunk_rows=300))

    assert result.status == "completed", result.tables
    rows = _target_rows(env)
    source = _source_rows(env)
    assert set(rows) == set(range(ROWS))
    assert all(rows[i][0] == f"kept {i}" for i in range(2100)), "existing keys must be skipped, never overwritten"
    assert all(rows[i] == source[i] for i in range(2100, ROWS))
    assert _loads(env) == [(1, "insert_missing", 1000, 900, 0, None, None)]
    table = result.tables[0]
    assert (table["source_count"], table["reconcile"]) == (1000, "match")


def test_merge_updates_changed_rows_inserts_new_ones_and_leaves_equal_rows_untouched(env) -> None:
    _source(env)
    tables = [{"source": "ITEMS", "insert_only_mode": False, **NUMERIC}]
    assert run(env.config(tables, chunk_rows=700)).status == "completed"  # into a new table: plain COPY
    env.sf_execute("UPDATE ITEMS SET PRICE = PRICE + 1 WHERE ID % 30 = 0",  # 100 rows change
                   "INSERT INTO ITEMS SELECT 10000 + SEQ8(), 'new', 1, NULL FROM TABLE(GENERATOR(ROWCOUNT => 40))")
    before = dict(env.pg_rows("SELECT id, xmin::text FROM public.items"))

    second = run(env.config(tables, chunk_rows=700))

    assert second.status == "completed" and second.run_id == 2, second.tables
    assert _target_rows(env) == _source_rows(env)
    after = dict(env.pg_rows("SELECT id, xmin::text FROM public.items"))
    rewritten = {i for i in before if after[i] != before[i]}
    assert rewritten == {i for i in range(ROWS) if i % 30 == 0}, "an equal row was rewritten"
    assert _loads(env)[1] == (2, "merge", ROWS + 40, 40, 100, None, None)

    locks = dict(env.pg_rows("SELECT id, xmax::text FROM public.items"))
    third = run(env.config(tables, chunk_rows=700))  # nothing changed: a merge changes nothing
    assert third.status == "completed"
    assert dict(env.pg_rows("SELECT id, xmin::text FROM public.items")) == after
    assert _loads(env)[2][3:5] == (0, 0)
    # ... and writes nothing: an equal row is not even locked (a lock would set its xmax)
    assert dict(env.pg_rows("SELECT id, xmax::text FROM public.items")) == locks


def test_watermark_runs_bring_exactly_the_changed_rows_and_nothing_when_nothing_changed(env) -> None:
    _source(env)
    env.sf_execute("INSERT INTO ITEMS VALUES (-1, 'no watermark', 5, NULL)")
    tables = [{"source": "ITEMS", "source_watermark": "UPDATED_AT", **NUMERIC}]
    first = run(env.config(tables, chunk_rows=800))
    assert first.status == "completed", first.tables
    assert _target_rows(env) == _source_rows(env)  # the first window takes NULL watermarks too
    env.sf_execute(
        "UPDATE ITEMS SET NAME = 'changed', UPDATED_AT = '2025-01-01 00:00:00' WHERE ID IN (5, 6, 7)",
        "INSERT INTO ITEMS SELECT 20000 + SEQ8(), 'late', 2, DATEADD(second, SEQ8(), '2025-02-01'::TIMESTAMP_NTZ) "
        "FROM TABLE(GENERATOR(ROWCOUNT => 25))",
        "INSERT INTO ITEMS VALUES (-2, 'still no watermark', 5, NULL)",
    )

    second = run(env.config(tables, chunk_rows=800))
    third = run(env.config(tables, chunk_rows=800))

    assert second.status == third.status == "completed"
    source = _source_rows(env)
    target = _target_rows(env)
    assert -2 not in target and {k: v for k, v in source.items() if k != -2} == target
    loads = [(mode, read, inserted, updated, _when(lo), _when(hi)) for _, mode, read, inserted, updated, lo, hi in _loads(env)]
    first_hi, second_hi = datetime(2024, 1, 1, 0, 49, 59), datetime(2025, 2, 1, 0, 0, 24)
    assert loads[0] == ("copy", ROWS + 1, ROWS + 1, 0, None, first_hi)
    # lo is inclusive: each window reads the rows at the last one's hi again (one here), and merges them to nothing
    assert loads[1] == ("merge", 28 + 1, 25, 3, first_hi, second_hi)
    assert loads[2] == ("merge", 1, 0, 0, second_hi, second_hi)
    notes = env.pg_value(f"SELECT plan_notes::text FROM {status.SCHEMA}.migration_table_status WHERE run_id = 2")
    assert "2 row(s) have a NULL UPDATED_AT" in notes and "from the ledger" in notes


LIVE_DDL = """
CREATE TABLE public.items (row_no bigint GENERATED BY DEFAULT AS IDENTITY, id bigint NOT NULL, name text,
    price numeric(12,2) CHECK (price >= 0), updated_at timestamp,
    CONSTRAINT items_pkey PRIMARY KEY (id));
CREATE INDEX items_name_idx ON public.items (name);
CREATE UNIQUE INDEX items_row_no_key ON public.items (row_no);
COMMENT ON TABLE public.items IS 'the live items';
INSERT INTO public.items (id, name, price) SELECT g, 'old ' || g, 1 FROM generate_series(1, 500) g;
"""


def _live(env) -> None:
    with env.pg() as conn:
        conn.execute("DO $$ BEGIN CREATE ROLE items_reader NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$")
        conn.execute(LIVE_DDL)
        conn.execute("GRANT SELECT ON public.items TO items_reader")


def _indexes(env, table: str) -> set[tuple[str, str]]:
    return set(env.pg_rows("SELECT indexname, regexp_replace(indexdef, ' ON \\S+ ', ' ON t ') FROM pg_indexes "
                           "WHERE schemaname = 'public' AND tablename = %s", (table,)))


SWAP = [{"source": "ITEMS", "load_mode": "swap", **NUMERIC}]


def test_swap_reload_replaces_the_live_table_whole_and_keeps_its_indexes_grants_and_a_backup(env) -> None:
    _source(env)
    _live(env)
    live_indexes = _indexes(env, "items")

    result = run(env.config(SWAP, chunk_rows=700))

    assert result.status == "completed", result.tables
    assert {k: v for k, v in _target_rows(env).items()} == _source_rows(env)
    assert _indexes(env, "items") == live_indexes  # same names and definitions on the new table
    assert env.pg_value("SELECT has_table_privilege('items_reader', 'public.items', 'SELECT')")
    assert env.pg_value("SELECT obj_description('public.items'::regclass, 'pg_class')") == "the live items"
    assert env.pg_value("SELECT count(*) FROM public.items__backup_1 WHERE name LIKE 'old %'") == 500
    with env.pg() as conn:  # identity values continue above the new rows
        conn.execute("INSERT INTO public.items (id, name, price) VALUES (-5, 'after', 1)")
    assert env.pg_value("SELECT row_no FROM public.items WHERE id = -5") > ROWS
    managed = env.pg_rows(f"SELECT kind, object_name, status FROM {status.SCHEMA}.managed_tables ORDER BY object_id")
    assert managed == [("shadow", "items__shadow_1", "swapped_in"), ("backup", "items__backup_1", "kept")]


def test_rollback_swaps_the_backup_back_and_cleanup_keeps_the_newest_backups(env) -> None:
    from tests.helpers import cli

    _source(env)
    _live(env)
    live_indexes = _indexes(env, "items")
    path = env.write_config(SWAP, defaults={"chunk_rows": 700, "keep_backups": 1})
    for _ in range(3):  # three reloads, three backups
        reloaded = cli(env.env, path, "--no-resume")
        assert reloaded.returncode == 0, reloaded.stdout + reloaded.stderr

    rolled = cli(env.env, path, "rollback", "--table", "ITEMS")

    assert rolled.returncode == 0, rolled.stdout + rolled.stderr
    assert env.pg_value("SELECT count(*) FROM public.items") == ROWS  # backup 3 held the second reload
    status_out = cli(env.env, path, "status").stdout
    assert "backup of public.items: public.items__backup_1" in status_out and "cleanup drops it" in status_out
    cleaned = cli(env.env, path, "cleanup", "--yes")
    assert cleaned.returncode == 0, cleaned.stdout
    kept = {r[0] for r in env.pg_rows("SELECT tablename FROM pg_tables WHERE tablename LIKE 'items__%'")}
    assert kept == {"items__backup_3"}, kept
    assert _indexes(env, "items") == live_indexes  # the original names, after three swaps and a rollback
    assert env.pg_value("SELECT count(*) FROM public.items__backup_3") == ROWS  # the third reload, rolled back


def test_a_swap_whose_shadow_does_not_reconcile_leaves_the_live_table_untouched(env) -> None:
    _source(env)
    _live(env)
    config = env.config(SWAP, chunk_rows=700)
    start = start_run(config)
    work(work_plan(config, start.run_id), 2)
    with env.pg() as conn:  # the shadow ends up with one row too many
        conn.execute("INSERT INTO public.items__shadow_1 (id, name, price) VALUES (-1, 'stray', 0)")

    reconcile_finished_tables(config, start.run_id)

    state, error = env.pg_rows(f"SELECT status, error FROM {status.SCHEMA}.migration_table_status")[0]
    assert state == "failed" and "shadow public.items__shadow_1" in error and "+1" in error
    assert env.pg_value("SELECT count(*) FROM public.items") == 500
    assert env.pg_value("SELECT count(*) FROM public.items WHERE name LIKE 'old %'") == 500
    assert env.pg_value("SELECT to_regclass('public.items__backup_1')") is None


def test_a_swap_refuses_what_it_cannot_carry_over_and_lists_all_of_it(env) -> None:
    _source(env)
    _live(env)
    with env.pg() as conn:
        conn.execute("CREATE MATERIALIZED VIEW public.cheap_items AS SELECT * FROM public.items WHERE price < 10")
        conn.execute("CREATE TABLE public.orders (item_id bigint REFERENCES public.items (id))")
        conn.execute("CREATE FUNCTION public.touch() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RETURN NEW; END$$")
        conn.execute("CREATE TRIGGER touch BEFORE UPDATE ON public.items FOR EACH ROW EXECUTE FUNCTION public.touch()")

    result = run(env.config(SWAP, chunk_rows=700))

    error = result.tables[0]["error"]
    assert result.tables[0]["status"] == "failed"
    for fragment in ("foreign key orders_item_id_fkey on orders references it",
                     "materialized view cheap_items depends on it and cannot be carried to the new table",
                     "trigger touch is defined on it"):
        assert fragment in error, error
    assert env.pg_value("SELECT count(*) FROM public.items") == 500
    assert env.pg_value("SELECT to_regclass('public.items__shadow_1')") is None  # nothing was created


def test_a_chunk_whose_key_range_was_empty_falls_back_to_the_stage_when_rows_appear(env, monkeypatch) -> None:
    """New-key chunks of a catch-up are copied straight into the target; if another writer puts a row into
    the range meanwhile, the COPY meets the key, rolls back, and the retry merges through the stage."""
    from lib.target import postgres as postgres_target

    _source(env)
    with env.pg() as conn:
        conn.execute("CREATE TABLE public.items (id bigint PRIMARY KEY, name text, price numeric(12,2), updated_at timestamp)")
        conn.execute("INSERT INTO public.items VALUES (0, 'kept 0', 0, NULL), (2999, 'written meanwhile', 0, NULL)")
    real, lied = postgres_target.has_rows_in_range, []

    def misses_the_late_row(conn, target, bounds, columns):  # as if 2999 arrived just after the check
        if bounds.hi is None and not lied:
            lied.append(bounds.lo)
            return False
        return real(conn, target, bounds, columns)

    monkeypatch.setattr(postgres_target, "has_rows_in_range", misses_the_late_row)
    result = run(env.config([{"source": "ITEMS", **NUMERIC}], chunk_rows=1000, retry_base_seconds=0.1))

    assert result.status == "completed", result.tables
    assert lied, "the last chunk's range was never checked"
    rows = _target_rows(env)
    assert set(rows) == set(range(ROWS)) and rows[2999][0] == "written meanwhile" and rows[0][0] == "kept 0"
    error = env.pg_value(f"SELECT max(attempts) FROM {status.SCHEMA}.migration_chunk_status")
    assert error == 2
    inserted = env.pg_value(f"SELECT sum(rows_inserted) FROM {status.SCHEMA}.migration_chunk_status")
    assert inserted == ROWS - 2


def test_the_new_key_range_probe_walks_the_key_index_even_where_the_planner_expects_many_rows(env) -> None:
    """A target loaded in key order keeps a late key range behind every earlier row; probing whether that range
    holds a row must read the key's index, not the table up to the range, once per chunk."""
    from lib.models import Bounds
    from lib.target import postgres as postgres_target
    from lib.typemap import Column

    with env.pg() as conn:
        conn.execute("CREATE TABLE public.items (id bigint PRIMARY KEY, name text)")
        conn.execute("INSERT INTO public.items SELECT g, repeat('x', 40) FROM generate_series(1, 200000) g")
        conn.execute("ANALYZE public.items")
    id_column = Column("ID", "NUMBER(18,0)", "bigint", pa.int64())
    late, beyond = (Bounds("range", "ID", "numeric", lo, hi) for lo, hi in (("150000", "400000"), ("200001", None)))

    with env.pg() as conn:  # one transaction: its own table statistics count its scans
        answers = [postgres_target.has_rows_in_range(conn, ("public", "items"), b, [id_column]) for b in (late, beyond)]
        scans = conn.execute("SELECT seq_scan, coalesce(seq_tup_read, 0), idx_scan FROM pg_stat_xact_user_tables "
                             "WHERE relid = 'public.items'::regclass").fetchone()

    assert answers == [True, False]
    assert scans[:2] == (0, 0) and scans[2] >= 2, scans
