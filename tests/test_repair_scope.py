"""verify --repair deletes exactly what it copies again: the same rows on both sides whatever the time zones,
only the load's own rows, and never a target another run owns."""

from __future__ import annotations

from lib import ledger as status
from lib.run.orchestrator import run
from lib.run.repair import verify_and_repair

DATE_CHUNKS = {"chunking_columns": ["TS"], "chunking_column_types": ["date"]}


def _events_near_midnight(env) -> None:
    """40 rows a day for 5 days, half of them in the half hour before UTC midnight, half just after it."""
    env.sf_execute(
        "CREATE TABLE EVENTS (ID NUMBER(18,0), TS TIMESTAMP_TZ, V VARCHAR)",
        "INSERT INTO EVENTS SELECT SEQ8(), "
        "DATEADD(minute, IFF(SEQ8() % 2 = 0, -30, 30), "
        "DATEADD(day, FLOOR(SEQ8() / 40), '2024-03-01 00:00:00 +00:00'::TIMESTAMP_TZ)), 'v' || SEQ8() "
        "FROM TABLE(GENERATOR(ROWCOUNT => 200))",
    )


def test_a_repair_of_date_chunks_on_a_zoned_timestamp_deletes_and_copies_the_same_rows_in_any_time_zone(env) -> None:
    _events_near_midnight(env)
    with env.pg() as conn:  # the target database's own zone is far from UTC (and Snowflake's default is LA)
        conn.execute(f'ALTER DATABASE "{env.pg_database}" SET timezone = \'Pacific/Kiritimati\'')
    config = env.config([{"source": "EVENTS", **DATE_CHUNKS}], chunk_rows=40)
    assert run(config).status == "completed"
    source = {int(r[0]): r[1] for r in env.sf_rows("SELECT ID, V FROM EVENTS")}
    with env.pg() as conn:  # damage one chunk's worth of rows near a day's edge
        conn.execute("UPDATE public.events SET v = 'damaged' WHERE id IN (40, 41, 42, 43)")

    first, again, refused = verify_and_repair(config, 1, None, None, repair=True, threads=2)

    assert sum(len(r.differing) for r in first) >= 1
    assert again is not None and all(r.clean for r in again), again
    assert not refused
    target = dict(env.pg_rows("SELECT id, v FROM public.events"))
    assert env.pg_value("SELECT count(*) FROM public.events") == 200, "a row was doubled or lost"
    assert target == source
    # the chunks cut by Snowflake's days are PostgreSQL's days: every chunk holds exactly its planned rows
    per_chunk = env.pg_rows(f"SELECT chunk_no, expected_rows, rows_copied FROM {status.SCHEMA}.migration_chunk_status "
                            "WHERE status = 'done' ORDER BY chunk_no")
    assert all(expected == copied for _, expected, copied in per_chunk), per_chunk


NUMERIC = {"chunking_columns": ["ID"], "chunking_column_types": ["numeric"]}


def _two_configs_fill_one_target(env):
    env.sf_execute("CREATE TABLE ITEMS (ID NUMBER(18,0) PRIMARY KEY, NAME VARCHAR)",
                   "INSERT INTO ITEMS SELECT SEQ8(), 'item ' || SEQ8() FROM TABLE(GENERATOR(ROWCOUNT => 2000))")
    first = env.config([{"source": "ITEMS", "source_filter": "ID < 1000", **NUMERIC}], chunk_rows=300)
    assert run(first).status == "completed"
    second = env.config([{"source": "ITEMS", "source_filter": "ID >= 1000", **NUMERIC}], chunk_rows=400)
    assert run(second).status == "completed"  # a catch-up into the target the first one made
    assert env.pg_value("SELECT count(*) FROM public.items") == 2000
    return first, second


def test_a_repair_deletes_only_what_it_copies_again_not_the_rows_another_config_loaded(env) -> None:
    first, _ = _two_configs_fill_one_target(env)
    with env.pg() as conn:  # damage a row in the first load's last chunk, whose range is open above
        conn.execute("UPDATE public.items SET name = 'damaged' WHERE id = 999")

    results, again, refused = verify_and_repair(first, 1, None, None, repair=True, threads=2)

    assert [r.differing for r in results] == [[3]] and not refused
    assert again is not None and all(r.clean for r in again), again
    source = {int(r[0]): r[1] for r in env.sf_rows("SELECT ID, NAME FROM ITEMS")}
    assert dict(env.pg_rows("SELECT id, name FROM public.items")) == source
    assert env.pg_value("SELECT count(*) FROM public.items") == 2000
    # and the first run's report is true of what its target holds: the rows of both filters
    row = env.pg_rows(f"SELECT source_count, target_count, reconcile_status FROM {status.SCHEMA}.migration_table_status "
                      "WHERE run_id = 1")
    assert row == [(2000, 2000, "match")]


def test_a_repair_is_refused_while_another_run_loads_the_target(env) -> None:
    first, _ = _two_configs_fill_one_target(env)
    with env.pg() as conn:
        conn.execute("UPDATE public.items SET name = 'damaged' WHERE id = 5")
        # a third config's run owns the target now (planned, not finished)
        conn.execute(f"INSERT INTO {status.SCHEMA}.migration_runs (config_hash, source_name, status) "
                     "VALUES ('other', 'other', 'running')")
        conn.execute(f"INSERT INTO {status.SCHEMA}.migration_table_status (run_id, table_name, target_table, status, "
                     "planned_chunks) VALUES (3, 'X.PUBLIC.ITEMS', 'public.items', 'running', 1)")

    results, again, refused = verify_and_repair(first, 1, None, None, repair=True, threads=2)

    assert results[0].differing == [0]
    assert again is None
    assert refused and "is being loaded by run 3" in refused[0]
    assert env.pg_value("SELECT name FROM public.items WHERE id = 5") == "damaged"
