"""What the engine tells an operator is true at the moments that matter: after an interruption, when another
process works on the run, when a later run changed a target, when planning would fail, when verify differs."""

from __future__ import annotations

import json
import signal
import sys
import time

from lib import ledger as status
from lib.config import load_config
from lib.run.orchestrator import start_run
from tests.helpers import cli, cli_popen

NUMERIC = {"chunking_columns": ["ID"], "chunking_column_types": ["numeric"]}
ITEMS = [{"source": "ITEMS", "truncate_onstart": True, **NUMERIC}]


def _items(env, rows: int = 3000) -> None:
    env.sf_execute("CREATE TABLE ITEMS (ID NUMBER(18,0) PRIMARY KEY, NAME VARCHAR)",
                   f"INSERT INTO ITEMS SELECT SEQ8(), 'item ' || SEQ8() FROM TABLE(GENERATOR(ROWCOUNT => {rows}))")


def test_a_finished_runs_report_says_when_a_later_run_changed_its_target(env) -> None:
    _items(env)
    path = env.write_config(ITEMS, defaults={"chunk_rows": 1000})
    assert cli(env.env, path).returncode == 0
    # another config (other chunk size) empties the target when it plans it, and is interrupted before copying
    start_run(load_config("test", {}, env.write_config(ITEMS, defaults={"chunk_rows": 500}, filename="other.json")))
    assert env.pg_value("SELECT count(*) FROM public.items") == 0

    again = cli(env.env, path)

    assert again.returncode == 1, again.stdout + again.stderr
    assert "already completed" in again.stdout
    assert "match, then changed by run 2 (source test)" in again.stdout
    assert "public.items was loaded by run 2 (source test) after run 1 completed" in again.stdout
    seconds = float(again.stdout.split("run 1: completed in ")[1].split("s")[0])
    took = env.pg_value(f"SELECT extract(epoch FROM completed_at - started_at) FROM {status.SCHEMA}.migration_runs "
                        "WHERE run_id = 1")
    assert seconds > 0 and abs(seconds - float(took)) < 0.11, (seconds, took)


def _held_by_another_process(env, config) -> list:
    """A run whose chunks another live process holds: one session per chunk, each working on the run and holding
    its claim (a session would take its own claim again)."""
    run_id = start_run(config).run_id
    sessions = []
    while True:
        session = env.pg()
        status.hold_run(session, run_id)
        if status.claim_chunk(session, run_id, "elsewhere", 600, 3) is None:
            session.close()
            return sessions
        sessions.append(session)


def test_a_start_that_joins_a_run_another_process_works_on_exits_3_and_no_resume_will_not_abandon_it(env) -> None:
    _items(env)
    path = env.write_config(ITEMS, defaults={"chunk_rows": 1000})
    holders = _held_by_another_process(env, load_config("test", {}, path))
    assert len(holders) == 3

    joined = cli(env.env, path)
    shown = cli(env.env, path, "status")
    refused = cli(env.env, path, "run", "--no-resume")

    assert joined.returncode == 3, joined.stdout + joined.stderr
    assert "not finished and nothing failed: it goes on in another process" in joined.stdout
    assert "3 session(s) working on it now" in shown.stdout and "stalled" not in shown.stdout
    assert refused.returncode == 1
    assert "is being worked on now (3 live session(s)): --no-resume would abandon it" in refused.stderr
    assert env.pg_value(f"SELECT status FROM {status.SCHEMA}.migration_runs WHERE run_id = 1") == "running"

    for holder in holders:  # the other process dies: its chunks are free, the run stalls
        holder.close()
    stalled = cli(env.env, path, "status")
    assert "stalled: no live worker since" in stalled.stdout and "ETA" not in stalled.stdout
    assert cli(env.env, path).returncode == 0  # and the same command resumes it


def test_after_ctrl_c_the_message_gives_the_command_that_resumes_without_no_resume(env) -> None:
    _items(env, 100_000)
    path = env.write_config(ITEMS, defaults={"chunk_rows": 2000, "batch_size": 1000, "parallel_threads": 1})
    proc = cli_popen(env.env, path, "run", "--no-resume")
    deadline = time.monotonic() + 120
    while _done(env) < 3:
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=120)

    assert proc.returncode == 130, output
    line = next(x for x in output.splitlines() if "to continue it:" in x)
    command = line.split("to continue it: ", 1)[1]
    assert "--no-resume" not in command and command.startswith(sys.executable), command
    assert " run --source test --config " in command


def _done(env) -> int:
    try:
        return int(env.pg_value(f"SELECT count(*) FROM {status.SCHEMA}.migration_chunk_status WHERE status = 'done'"))
    except Exception:  # noqa: BLE001 - the ledger may not exist yet
        return 0


def test_status_verify_and_reconcile_with_a_table_find_the_run_that_holds_it(env) -> None:
    _items(env)
    env.sf_execute("CREATE TABLE OTHER AS SELECT SEQ8()::NUMBER(18,0) AS ID FROM TABLE(GENERATOR(ROWCOUNT => 10))")
    path = env.write_config([*ITEMS, {"source": "OTHER", "truncate_onstart": True}], defaults={"chunk_rows": 1000})
    assert cli(env.env, path).returncode == 0

    shown = cli(env.env, path, "status", "--table", "ITEMS")
    verified = cli(env.env, path, "verify", "--table", "ITEMS")
    counted = cli(env.env, path, "reconcile", "--table", "ITEMS")

    assert shown.returncode == 0 and "run 1: completed" in shown.stdout and ".OTHER" not in shown.stdout, shown.stdout
    assert verified.returncode == 0 and "run 1: verified" in verified.stdout, verified.stdout + verified.stderr
    assert counted.returncode == 0 and "ITEMS: source 3,000, target 3,000 — match" in counted.stdout, counted.stdout


def test_plan_reports_load_mode_key_and_window_and_every_problem_at_once(env) -> None:
    _items(env)
    env.sf_execute("CREATE TABLE LOOSE (ID NUMBER(18,0), NAME VARCHAR, UPDATED_AT TIMESTAMP_NTZ)",
                   "INSERT INTO LOOSE SELECT SEQ8(), 'x', '2024-01-01'::TIMESTAMP_NTZ FROM TABLE(GENERATOR(ROWCOUNT => 5))")
    with env.pg() as conn:
        conn.execute("CREATE TABLE public.items (id bigint PRIMARY KEY, name text)")
        conn.execute("INSERT INTO public.items VALUES (1, 'there')")
        conn.execute("CREATE TABLE public.loose (id bigint, name text, updated_at timestamp)")
        conn.execute("INSERT INTO public.loose VALUES (1, 'there', NULL)")
    tables = [{"source": "ITEMS", "source_watermark": "NAME", **NUMERIC},  # a VARCHAR cannot order changes
              {"source": "LOOSE", "insert_only_mode": False, **NUMERIC},  # merge without a key
              {"source": "ITEMS", "target": "items_copy", "insert_only_mode": False, **NUMERIC}]
    path = env.write_config(tables, defaults={"chunk_rows": 1000})

    planned = cli(env.env, path, "plan")
    as_json = json.loads(cli(env.env, path, "plan", "--json").stdout)

    assert planned.returncode == 1, planned.stdout
    assert "2 of 3 table(s) would fail:" in planned.stdout
    assert "source_watermark NAME is VARCHAR, which cannot order changes" in planned.stdout
    assert "target public.loose holds rows and has no primary key or unique index" in planned.stdout
    good = next(t for t in as_json if t["target"] == "public.items_copy")
    assert good["load"]["mode"] == "copy" and good["chunks"] == 3
    assert env.pg_value("SELECT to_regclass('public.items_copy')") is None, "plan created a table"
    assert env.pg_value(f"SELECT count(*) FROM {status.SCHEMA}.migration_runs") == 0
    window = [{"source": "ITEMS", "source_watermark": "ID", "target": "items", **NUMERIC}]
    shown = cli(env.env, env.write_config(window, defaults={"chunk_rows": 1000}, filename="window.json"), "plan")
    assert "load: merge on (id); window ID >= 1 and <= 2999" in shown.stdout, shown.stdout


def test_verify_lists_differing_chunks_apart_from_the_counts_and_says_what_to_do(env) -> None:
    _items(env)
    path = env.write_config(ITEMS, defaults={"chunk_rows": 1000})
    assert cli(env.env, path).returncode == 0
    with env.pg() as conn:
        conn.execute("UPDATE public.items SET name = 'changed' WHERE id = 5")

    verified = cli(env.env, path, "verify")

    assert verified.returncode == 1
    table_line = next(x for x in verified.stdout.splitlines() if x.strip().startswith(f"{env.sf_database}.PUBLIC.ITEMS"))
    assert table_line.split()[1:5] == ["3", "2", "1", "0"], table_line  # checked, matched, differing, errors
    assert "differing chunks of" in verified.stdout and ": #0" in verified.stdout
    assert "verify --repair" in verified.stdout and "--load-mode swap" in verified.stdout


def test_an_unreachable_snowflake_fails_the_start_at_once_naming_where_it_looked(env) -> None:
    _items(env)
    path = env.write_config([*ITEMS, {"source": "OTHER"}], snowflake={"port": "1", "login_timeout": 5})

    began = time.monotonic()
    failed = cli(env.env, path)
    took = time.monotonic() - began

    assert failed.returncode == 1
    assert "Snowflake is unreachable" in failed.stderr and "://127.0.0.1:1" in failed.stderr, failed.stderr
    assert failed.stderr.count("Snowflake is unreachable") == 1
    assert took < 30, took
