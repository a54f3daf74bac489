"""The memory budget's promise: threads × what one thread really holds fits memory_budget_mb.

What a thread holds depends on how the source answers a chunk: in one whole result (the local stand-in)
or as result parts downloaded while they are read (Snowflake). Both are exercised for real: the
project's fakesnow launcher can answer like Snowflake does (--result-chunk-mb), and the real connector
downloads the parts from it.
"""

from __future__ import annotations

import gc
import json
import re
import threading
import uuid
import weakref
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest

from lib.config import ConfigError, load_config
from lib.config.connections import RESULT_CHUNK_MB_KEY
from lib.models import Bounds
from lib.plan.budget import MIB, WORKER_MEMORY_ENV, ReadShape, estimate_bytes, fit_chunk_rows, fit_threads, memory_budget_bytes
from lib.run.orchestrator import run, start_run, thread_count, work_plan
from lib.source.prefetch import Prefetcher
from lib.source.snowflake import SnowflakeSource
from lib.typemap import columns_from_description
from scripts.local_stack import LocalStack
from tests.helpers import cli

ROWS = 6000
TABLE = [{"source": "EVENTS", "chunking_columns": ["ID"], "chunking_column_types": ["numeric"]}]
EVENTS = (f"CREATE TABLE EVENTS AS SELECT SEQ8()::NUMBER(18,0) AS ID, REPEAT('x', 1000) AS BODY, "
          f"DATEADD(day, SEQ8() * 397, '0001-01-01'::TIMESTAMP_NTZ) AS EVENT_TS FROM TABLE(GENERATOR(ROWCOUNT => {ROWS}))")


# --- the model ------------------------------------------------------------------------------------
def test_a_streamed_read_costs_the_same_whatever_the_chunk_size() -> None:
    streamed = ReadShape.planned("streamed", 200, 1_000_000, 50_000, result_prefetch=1, result_chunk_mb=48)
    huge = ReadShape.planned("streamed", 200, 50_000_000, 50_000, result_prefetch=1, result_chunk_mb=48)
    whole = ReadShape.planned("whole", 200, 1_000_000, 50_000, result_prefetch=1, result_chunk_mb=48)
    assert streamed.per_thread() == huge.per_thread() < whole.per_thread() / 3
    assert huge.per_thread() == ReadShape.planned("streamed", 200, 10_000_000, 50_000, 1, 48).per_thread()
    assert huge.part_bytes == 48 * MIB  # a part, never the chunk
    deeper = ReadShape.planned("streamed", 200, 50_000_000, 50_000, result_prefetch=4, result_chunk_mb=48)
    assert deeper.per_thread() > huge.per_thread()  # every part downloaded ahead is held too


def test_threads_are_clamped_to_the_memory_budget_and_the_message_says_why() -> None:
    narrow = ReadShape.planned("streamed", 100, 250_000, 10_000, 1, 48)
    assert fit_threads(4, [narrow], budget_mb=4096) == (4, None)
    wide = ReadShape.planned("whole", 2_000, 250_000, 100_000, 1, 48)
    threads, why = fit_threads(8, [narrow, wide], budget_mb=4096)
    assert threads == 1 and why is not None
    assert "lowered from 8 to 1" in why and "whole result" in why and "memory_budget_mb" in why
    assert estimate_bytes(threads, [narrow, wide]) == wide.per_thread()


def test_whole_results_lower_chunk_rows_until_the_threads_fit() -> None:
    assert fit_chunk_rows(250_000, 50_000, 200, threads=2, budget_mb=4096) == (250_000, None)
    fitted, why = fit_chunk_rows(250_000, 50_000, 200, threads=4, budget_mb=1024)
    assert 50_000 <= fitted < 250_000 and why is not None and "chunk_rows lowered from 250,000" in why
    shape = ReadShape.planned("whole", 200, fitted, 50_000, 1, 48)
    assert 4 * shape.per_thread() <= 1024 * MIB
    assert fit_chunk_rows(250_000, 50_000, 200, threads=64, budget_mb=64)[0] == 50_000  # never below a batch


def test_result_settings_are_settings_not_connection_keys(env) -> None:
    with pytest.raises(ConfigError) as raised:
        env.config(TABLE, snowflake={"client_prefetch_threads": 4,
                                     "session_parameters": {"CLIENT_RESULT_CHUNK_SIZE": 160}})
    assert "'client_prefetch_threads' is set by the engine from the setting 'result_prefetch'" in str(raised.value)
    assert "'CLIENT_RESULT_CHUNK_SIZE' is set by the engine from the setting 'result_chunk_mb'" in str(raised.value)
    with pytest.raises(ConfigError, match="source_results must be one of auto, streamed, whole"):
        env.config(TABLE, defaults={"source_results": "chunked"})
    args = env.config(TABLE, defaults={"result_prefetch": 2, "result_chunk_mb": 64}).snowflake_connect_args()
    assert args["client_prefetch_threads"] == 2
    assert args[RESULT_CHUNK_MB_KEY] == 64  # set by ALTER SESSION on a session that streams (SnowflakeSource)


# --- whole results: the local stand-in ----------------------------------------------------------
def test_whole_results_lower_chunk_rows_at_planning_and_the_plan_says_so(env, caplog) -> None:
    env.sf_execute(EVENTS)
    # a sampled row is ~1 kB; 250k-row chunks held 6 times over would need ~1.4 GiB per thread
    config = env.config(TABLE, chunk_rows=250_000, batch_size=1000, parallel_threads=2, memory_budget_mb=100)
    result = run(config)
    assert result.status == "completed"
    assert env.pg_value("SELECT count(*) FROM public.events") == ROWS
    results, row_bytes, notes, largest = env.pg_rows(
        "SELECT t.source_results, t.row_bytes, t.plan_notes, max(c.expected_rows) FROM migration_status.migration_table_status t "
        "JOIN migration_status.migration_chunk_status c USING (run_id, table_name) GROUP BY 1, 2, 3")[0]
    assert results == "whole" and row_bytes >= 1000
    note = next(n for n in notes if n.startswith("chunk_rows lowered from 250,000 to "))
    fitted = int(re.match(r"chunk_rows lowered from 250,000 to ([\d,]+):", note).group(1).replace(",", ""))  # type: ignore[union-attr]
    assert largest <= fitted < ROWS
    assert 2 * ReadShape.planned("whole", row_bytes, largest, 1000, 1, 48).per_thread() <= 100 * MIB
    assert "chunk_rows lowered" in caplog.text


def test_rows_bigger_than_their_sample_lower_the_threads_while_copying(env, caplog) -> None:
    # the planning sample reads the first rows, which are narrow; the rest carry 4 kB of text each
    env.sf_execute("CREATE TABLE WIDE (ID NUMBER(18,0), BLOBBY VARCHAR)",
                   "INSERT INTO WIDE SELECT SEQ8(), 'x' FROM TABLE(GENERATOR(ROWCOUNT => 1000))",
                   "INSERT INTO WIDE SELECT 1000 + SEQ8(), REPEAT('x', 4000) FROM TABLE(GENERATOR(ROWCOUNT => 3000))")
    config = env.config([{"source": "WIDE", "chunking_columns": ["ID"], "chunking_column_types": ["numeric"]}],
                        chunk_rows=500, batch_size=500, parallel_threads=4, memory_budget_mb=170)
    start = start_run(config)
    plan = work_plan(config, start.run_id)
    assert thread_count(config, plan) == 4  # the plan's shape fits four threads
    result = run(config)
    assert result.status == "completed"
    assert env.pg_value("SELECT count(*) FROM public.wide") == 4000
    assert "measured " in caplog.text
    assert "parallel_threads lowered from 4 to" in caplog.text


# --- streamed results: the stand-in answering like Snowflake --------------------------------------
@pytest.fixture(scope="module")
def streamed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """A second stand-in that answers large results in ~64 KiB result chunks, downloaded by the connector."""
    stack = LocalStack(tmp_path_factory.mktemp("streamed"))
    stack.start_snowflake(persist=False, tied=True, result_chunk_mb=0.0625)
    yield stack
    stack.stop_snowflake()


def _streamed_source(env, streamed: LocalStack) -> dict[str, Any]:
    database = f"S_{uuid.uuid4().hex[:8]}".upper()
    with streamed.snowflake_connect() as conn, conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE {database}")
        cur.execute(f"CREATE SCHEMA {database}.PUBLIC")
        cur.execute(f"USE SCHEMA {database}.PUBLIC")
        cur.execute(EVENTS)
        cur.execute("UPDATE EVENTS SET EVENT_TS = NULL WHERE MOD(ID, 7) = 0")  # NULLs mixed with far dates in every part
    return {"port": streamed.snowflake_env()["SNOWFLAKE_PORT"], "database": database}


def test_a_streamed_chunk_arrives_in_parts_each_a_fraction_of_the_chunk(env, streamed: LocalStack) -> None:
    overrides = _streamed_source(env, streamed)
    config = env.config(TABLE, snowflake=overrides)
    source = SnowflakeSource(config.snowflake_connect_args())
    try:
        assert source.results_mode("auto") == "streamed"
        table = (overrides["database"], "PUBLIC", "EVENTS")
        columns = columns_from_description(source.describe(table))
        parts: list[int] = []
        rows = sum(b.num_rows for b in source.read(table, columns, Bounds("all"), None, 10_000,
                                                  on_part=lambda p: parts.append(p.nbytes)))
    finally:
        source.close()
    assert rows == ROWS
    assert len(parts) > 10 and max(parts) < sum(parts) / 10  # many parts, none near the whole chunk


def test_a_streamed_run_keeps_its_chunks_and_copies_every_value(env, streamed: LocalStack) -> None:
    overrides = _streamed_source(env, streamed)
    config = env.config(TABLE, snowflake=overrides, chunk_rows=3000, batch_size=1000, memory_budget_mb=100)
    result = run(config)
    assert result.status == "completed"
    results, largest = env.pg_rows(
        "SELECT t.source_results, max(c.expected_rows) FROM migration_status.migration_table_status t "
        "JOIN migration_status.migration_chunk_status c USING (run_id, table_name) GROUP BY 1")[0]
    assert results == "streamed" and largest == 3000  # the same budget lowers whole-result chunks
    first_kept = date(1, 1, 1) + timedelta(days=397)  # ID 0 is a multiple of 7: NULL
    last = date(1, 1, 1) + timedelta(days=397 * (ROWS - 2))  # ID 5999 = 7 × 857: NULL too
    assert env.pg_rows("SELECT count(*), count(event_ts), min(event_ts)::date, max(event_ts)::date, max(id) FROM public.events") == [
        (ROWS, ROWS - ROWS // 7 - 1, first_kept, last, ROWS - 1)]


# --- released as soon as written --------------------------------------------------------------------
class _Item:
    pass


def test_read_ahead_keeps_no_batch_it_has_handed_over() -> None:
    release_second = threading.Event()
    first = _Item()
    watch = weakref.ref(first)

    def source() -> Iterator[_Item]:
        nonlocal first
        item, first = first, None  # type: ignore[assignment]
        yield item
        del item
        release_second.wait(10)  # the next read is slow: the first batch must not wait for it
        yield _Item()

    reader = Prefetcher(source())
    taken = next(reader)
    assert taken is not None
    del taken
    for _ in range(50):
        gc.collect()
        if watch() is None:
            break
        threading.Event().wait(0.02)
    alive = watch() is not None
    release_second.set()
    list(reader)
    reader.close()
    assert not alive, "the read-ahead thread still holds a batch the writer has finished with"


def test_planning_in_lambda_fits_the_workers_memory_not_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "1024")  # the Plan function
    assert memory_budget_bytes(2048) == int(1024 * 0.6 * MIB)
    monkeypatch.setenv(WORKER_MEMORY_ENV, "4096")  # what the stack tells every function
    assert memory_budget_bytes(2048) == 2048 * MIB
    template = (Path(__file__).resolve().parent.parent / "aws" / "template.yaml").read_text()
    assert f"{WORKER_MEMORY_ENV}: !Ref WorkMemorySize" in template


def test_the_dry_run_plan_shows_what_a_thread_holds_and_cuts_the_chunks_the_run_cuts(env) -> None:
    env.sf_execute(EVENTS)
    path = env.write_config(TABLE, defaults={"chunk_rows": 250_000, "batch_size": 1000, "parallel_threads": 2,
                                             "memory_budget_mb": 100})
    shown = cli(env.env, path, "plan")
    assert shown.returncode == 0, shown.stderr
    assert "memory: whole results, " in shown.stdout and "thread(s) fit memory_budget_mb" in shown.stdout
    dry = json.loads(cli(env.env, path, "plan", "--json").stdout)[0]
    assert dry["memory"]["source_results"] == "whole" and dry["memory"]["row_bytes"] >= 1000
    assert run(load_config("test", {}, path)).status == "completed"
    assert env.pg_value("SELECT count(*) FROM migration_status.migration_chunk_status") == dry["chunks"] > 1
