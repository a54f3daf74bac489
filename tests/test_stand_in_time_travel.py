"""The stand-in's Time Travel (scripts/fakesnow_server.py): a run's reads AT its snapshot all see one state of the
table, the first one included, whatever another session writes meanwhile. The engine's reconciliation of a
window read at a snapshot trusts that (lib/check/reconcile.py)."""

from __future__ import annotations

import duckdb

from scripts.fakesnow_server import TimeTravel

AT = "'2026-01-01 00:00:00.000000+00:00'::TIMESTAMP_TZ"


def test_the_first_read_at_a_snapshot_already_reads_the_state_every_later_read_sees() -> None:
    duck = duckdb.connect()
    duck.execute("ATTACH ':memory:' AS DB")
    duck.execute('CREATE SCHEMA "DB"."S"')
    duck.execute('CREATE TABLE "DB"."S"."T" AS SELECT range AS id FROM range(10)')
    travel = TimeTravel(duck)

    first = travel.read_sql(f'SELECT count(*) FROM "DB"."S"."T" AT(TIMESTAMP => {AT})')
    # another session writes after this read was rewritten and before it runs
    travel.before_write('INSERT INTO "DB"."S"."T" VALUES (10)', "DB")
    duck.execute('INSERT INTO "DB"."S"."T" VALUES (10)')
    later = travel.read_sql(f'SELECT count(*) FROM "DB"."S"."T" AT(TIMESTAMP => {AT})')

    assert duck.execute(first).fetchone()[0] == duck.execute(later).fetchone()[0] == 10
    assert duck.execute('SELECT count(*) FROM "DB"."S"."T"').fetchone()[0] == 11
