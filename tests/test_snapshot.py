"""Point-in-time reads (settings.snapshot): one Snowflake timestamp per run, recorded when the run starts,
carried by every statement that reads table data; the table's Time Travel retention is checked."""

from __future__ import annotations

import pytest

from lib import ledger as status
from lib.run.orchestrator import run
from lib.source.snowflake import SnowflakeSource, retention_by_table

NUMERIC = {"chunking_columns": ["ID"], "chunking_column_types": ["numeric"]}


def test_every_statement_that_reads_table_data_carries_the_runs_snapshot(env, sf_proxy, monkeypatch) -> None:
    monkeypatch.setattr(SnowflakeSource, "retention_days", lambda self, table: 7)
    env.sf_execute("CREATE TABLE SNAP AS SELECT SEQ8()::NUMBER(18,0) AS ID, DATEADD(hour, SEQ8(), '2024-01-01'::TIMESTAMP_NTZ) "
                   "AS TS, 'v' || SEQ8() AS V FROM TABLE(GENERATOR(ROWCOUNT => 3000))",
                   "CREATE TABLE SNAP2 AS SELECT * FROM SNAP")
    config = env.config([{"source": "SNAP", **NUMERIC}, {"source": "SNAP2", "source_watermark": "TS", "merge_key": ["ID"], **NUMERIC}],
                        chunk_rows=700, snapshot=True, verify=True, snowflake={"port": str(sf_proxy.port)})

    result = run(config)

    assert result.status == "completed", result.tables
    snapshot = env.pg_value(f"SELECT metadata ->> 'snapshot_at' FROM {status.SCHEMA}.migration_runs")
    assert snapshot and snapshot.endswith("+00:00")
    # statements that read table data (SHOW PRIMARY KEYS and information_schema read metadata: no history there)
    reading = [s for s in sf_proxy.seen if f'"{env.sf_database}"."PUBLIC"."SNAP' in s and s.startswith("SELECT")]
    kinds = {"stats": "RANK()", "read": 'SELECT "ID"', "count": "SELECT COUNT(*)", "watermark": "TO_VARCHAR(MAX(",
             "checksum": "MD5_NUMBER_LOWER64"}
    assert all(any(marker in s for s in reading) for marker in kinds.values()), "a kind of statement was not seen"
    at = f"AT(TIMESTAMP => '{snapshot}'::TIMESTAMP_TZ)"
    missing = [s for s in reading if at not in s]
    assert not missing, missing[:3]
    notes = env.pg_value(f"SELECT string_agg(plan_notes::text, ' ') FROM {status.SCHEMA}.migration_table_status")
    assert f"reads: AT(TIMESTAMP => {snapshot}), one point in time; Time Travel keeps 7 day(s)" in notes


def test_a_retention_shorter_than_the_resume_window_is_a_warning_with_the_numbers_and_none_fails(env, monkeypatch) -> None:
    env.sf_execute("CREATE TABLE SHORT AS SELECT SEQ8()::NUMBER(18,0) AS ID FROM TABLE(GENERATOR(ROWCOUNT => 100))",
                   "CREATE TABLE NONE_KEPT AS SELECT SEQ8()::NUMBER(18,0) AS ID FROM TABLE(GENERATOR(ROWCOUNT => 100))")
    monkeypatch.setattr(SnowflakeSource, "retention_days", lambda self, table: 1 if table[-1] == "SHORT" else 0)
    result = run(env.config([{"source": "SHORT"}, {"source": "NONE_KEPT"}], snapshot=True, resume_max_age=72))
    by_table = {t["table"].split(".")[-1]: t for t in result.tables}
    assert by_table["SHORT"]["status"] == "completed"
    assert "no Time Travel (DATA_RETENTION_TIME_IN_DAYS = 0)" in by_table["NONE_KEPT"]["error"]
    notes = env.pg_value(f"SELECT plan_notes::text FROM {status.SCHEMA}.migration_table_status WHERE table_name LIKE '%%SHORT'")
    assert "Time Travel keeps 1 day(s) (24 h)" in notes and "resumed for 72 h (resume_max_age)" in notes


@pytest.mark.parametrize(("rows", "expected"), [
    ([("2024-01-01", "SNAP", "DB", "PUBLIC", "TABLE", "", "", 10, 1024, "OWNER", "1")], 1),
    ([("2024-01-01", "SNAP_X", "DB", "PUBLIC", "TABLE", "", "", 10, 1024, "OWNER", "3"),
      ("2024-01-01", "SNAP", "DB", "PUBLIC", "TABLE", "", "", 10, 1024, "OWNER", "90")], 90),
    ([("2024-01-01", "SNAP", "DB", "PUBLIC", "TABLE", "", "", 10, 1024, "OWNER", "")], None),
    ([("2024-01-01", "OTHER", "DB", "PUBLIC", "TABLE", "", "", 10, 1024, "OWNER", "1")], None),
])
def test_the_retention_is_read_from_a_show_tables_answer(rows, expected) -> None:
    columns = ["created_on", "name", "database_name", "schema_name", "kind", "comment", "cluster_by", "rows", "bytes",
               "owner", "retention_time"]
    assert retention_by_table(columns, rows).get("SNAP") == expected
