"""Swap and rollback that cannot break a database: a table's key to itself points at the new table, views that
read the table follow it, rollback checks and carries what a swap does, and the live table is locked only for
the swap itself."""

from __future__ import annotations

import threading

import pytest

from lib import ledger as status
from lib.errors import TransientError
from lib.run.orchestrator import run
from tests.helpers import cli

NUMERIC = {"chunking_columns": ["ID"], "chunking_column_types": ["numeric"]}
SWAP = [{"source": "ITEMS", "load_mode": "swap", **NUMERIC}]


def _source(env, rows: int = 1000) -> None:
    env.sf_execute("CREATE TABLE ITEMS (ID NUMBER(18,0) PRIMARY KEY, PARENT_ID NUMBER(18,0), NAME VARCHAR, PRICE NUMBER(12,2))",
                   f"INSERT INTO ITEMS SELECT SEQ8(), IFF(SEQ8() = 0, NULL, 0), 'item ' || SEQ8(), SEQ8() % 20 "
                   f"FROM TABLE(GENERATOR(ROWCOUNT => {rows}))")


def _live(env) -> None:
    with env.pg() as conn:
        conn.execute("DO $$ BEGIN CREATE ROLE items_reader NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$")
        conn.execute("CREATE TABLE public.items (id bigint PRIMARY KEY, parent_id bigint REFERENCES public.items (id), "
                     "name text, price numeric(12,2))")
        conn.execute("CREATE INDEX items_name_idx ON public.items (name)")
        conn.execute("INSERT INTO public.items SELECT g, NULL, 'old ' || g, 1 FROM generate_series(0, 99) g")


def _references(env, constraint_table: str) -> list[str]:
    return [r[0] for r in env.pg_rows("SELECT confrelid::regclass::text FROM pg_constraint WHERE contype = 'f' "
                                      "AND conrelid = %s::regclass", (constraint_table,))]


def test_a_foreign_key_of_the_table_to_itself_points_at_the_new_table_after_the_swap(env) -> None:
    _source(env)
    _live(env)

    result = run(env.config(SWAP, chunk_rows=400))

    assert result.status == "completed", result.tables
    assert _references(env, "public.items") == ["items"]
    assert _references(env, "public.items__backup_1") == ["items__backup_1"]
    with env.pg() as conn:  # new children of new rows are accepted, and the backup can go on its own
        conn.execute("INSERT INTO public.items VALUES (5000, 999, 'child of a new row', 1)")
        conn.execute("DROP TABLE public.items__backup_1")
    assert env.pg_value("SELECT count(*) FROM public.items") == 1001


def test_views_that_read_the_table_are_carried_with_their_grants_and_read_the_new_table(env) -> None:
    _source(env)
    _live(env)
    with env.pg() as conn:
        conn.execute("CREATE VIEW public.cheap_items WITH (security_barrier) AS "
                     "SELECT id, name FROM public.items WHERE price < 10")
        conn.execute("CREATE VIEW public.cheap_count AS SELECT count(*) AS n FROM public.cheap_items")
        conn.execute("GRANT SELECT ON public.cheap_items TO items_reader")
        conn.execute("COMMENT ON VIEW public.cheap_items IS 'cheap ones'")
        conn.execute("COMMENT ON COLUMN public.cheap_items.name IS 'the name'")

    result = run(env.config(SWAP, chunk_rows=400))

    assert result.status == "completed", result.tables
    assert env.pg_value("SELECT n FROM public.cheap_count") == 500  # prices 0-9 of 1,000 new rows
    assert env.pg_value("SELECT has_table_privilege('items_reader', 'public.cheap_items', 'SELECT')")
    assert env.pg_value("SELECT obj_description('public.cheap_items'::regclass, 'pg_class')") == "cheap ones"
    assert env.pg_value("SELECT col_description('public.cheap_items'::regclass, 2)") == "the name"
    assert env.pg_value("SELECT reloptions::text FROM pg_class WHERE oid = 'public.cheap_items'::regclass") == \
        "{security_barrier=true}"
    with env.pg() as conn:  # nothing reads the backup: it drops without CASCADE
        conn.execute("DROP TABLE public.items__backup_1")


def test_a_rollback_checks_and_carries_what_a_swap_does(env) -> None:
    _source(env)
    _live(env)
    path = env.write_config(SWAP, defaults={"chunk_rows": 400})
    assert cli(env.env, path).returncode == 0
    with env.pg() as conn:  # created after the swap, on the new live table
        conn.execute("CREATE VIEW public.named AS SELECT id, name FROM public.items")
        conn.execute("GRANT SELECT ON public.items TO items_reader")
        conn.execute("CREATE TABLE public.orders (item_id bigint REFERENCES public.items (id))")

    refused = cli(env.env, path, "rollback", "--table", "ITEMS")

    assert refused.returncode != 0
    assert "foreign key orders_item_id_fkey on orders references it" in refused.stdout + refused.stderr
    assert env.pg_value("SELECT count(*) FROM public.items") == 1000  # nothing moved
    with env.pg() as conn:
        conn.execute("DROP TABLE public.orders")

    rolled = cli(env.env, path, "rollback", "--table", "ITEMS")

    assert rolled.returncode == 0, rolled.stdout + rolled.stderr
    assert env.pg_value("SELECT count(*) FROM public.items") == 100
    assert env.pg_value("SELECT count(*) FROM public.named") == 100, "the view follows the restored table"
    assert env.pg_value("SELECT has_table_privilege('items_reader', 'public.items', 'SELECT')")
    assert _references(env, "public.items") == ["items"]
    with env.pg() as conn:
        conn.execute("DROP TABLE public.items__backup_1")  # the table rolled back from: nothing reads it


def test_a_swap_that_cannot_get_the_lock_retries_only_the_swap_and_never_holds_readers_behind_index_builds(env):
    _source(env)
    _live(env)
    config = env.config(SWAP, chunk_rows=400, swap_lock_timeout_seconds=0.3, retry_attempts=2,
                        retry_base_seconds=0.05)
    reader = env.pg()
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM public.items")  # a long report holds its lock on the live table

    with pytest.raises(TransientError, match="longer than swap_lock_timeout_seconds"):
        run(config)

    assert env.pg_value(f"SELECT status FROM {status.SCHEMA}.migration_runs") == "running"
    assert env.pg_value(f"SELECT status FROM {status.SCHEMA}.migration_table_status") == "post_load"
    built = dict(env.pg_rows("SELECT c.relname, c.oid::bigint FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                             "WHERE i.indrelid = 'public.items__shadow_1'::regclass"))
    assert len(built) == 2, built  # prepared: its indexes were built without the live table's lock
    waited = []

    def read_while_swapping() -> None:
        with env.pg() as other:
            other.execute("SET lock_timeout = '5s'")
            waited.append(other.execute("SELECT count(*) FROM public.items").fetchone()[0])

    reader.execute("COMMIT")
    reader.close()
    thread = threading.Thread(target=read_while_swapping)
    thread.start()
    done = run(config)
    thread.join()

    assert done.status == "completed", done.tables
    assert waited and waited[0] in (100, 1000)
    final = dict(env.pg_rows("SELECT c.relname, c.oid::bigint FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                             "WHERE i.indrelid = 'public.items'::regclass"))
    assert sorted(final.values()) == sorted(built.values()), "the indexes were built once, before the swap"
