"""One source table feeding two targets (a full copy and a filtered one, chunked differently) is two table
entries in the ledger, each planned, copied, reconciled, reported and selectable on its own."""

from __future__ import annotations

from lib import ledger as status
from lib.run.orchestrator import run
from tests.helpers import cli

ENTRIES = [
    {"source": "ORDERS", "target": "orders_all", "chunking_columns": ["ID"], "chunking_column_types": ["numeric"]},
    {"source": "ORDERS", "target": "orders_recent", "source_filter": "CREATED >= '2024-06-01'",
     "chunking_columns": ["CREATED"], "chunking_column_types": ["date"]},
]


def test_one_source_table_into_two_targets_is_two_ledger_entries(env) -> None:
    env.sf_execute("CREATE TABLE ORDERS AS SELECT SEQ8()::NUMBER(18,0) AS ID, "
                   "DATEADD(hour, SEQ8(), '2024-01-01'::TIMESTAMP_NTZ) AS CREATED FROM TABLE(GENERATOR(ROWCOUNT => 9000))")
    result = run(env.config(ENTRIES, chunk_rows=1000))

    assert result.status == "completed", result.tables
    names = {t["table"]: t for t in result.tables}
    full, recent = f"{env.sf_database}.PUBLIC.ORDERS → public.orders_all", f"{env.sf_database}.PUBLIC.ORDERS → public.orders_recent"
    assert set(names) == {full, recent}
    assert names[full]["strategy"] == "numeric" and names[recent]["strategy"] == "date"
    assert env.pg_value("SELECT count(*) FROM public.orders_all") == 9000
    recent_rows = env.pg_value("SELECT count(*) FROM public.orders_all WHERE created >= '2024-06-01'")
    assert env.pg_value("SELECT count(*) FROM public.orders_recent") == recent_rows == names[recent]["source_count"]
    assert dict(env.pg_rows(f"SELECT table_name, reconcile_status FROM {status.SCHEMA}.reconciliation")) == {
        full: "match", recent: "match"}

    path = env.write_config(ENTRIES, defaults={"chunk_rows": 1000})
    shown = cli(env.env, path, "status").stdout
    assert "ORDERS → public.orders_all" in shown and "ORDERS → public.orders_recent" in shown
    planned = cli(env.env, path, "plan", "--table", "public.orders_recent").stdout
    assert "orders_recent" in planned and "orders_all" not in planned
