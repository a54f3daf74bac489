#!/usr/bin/env python3
"""Snowflake → PostgreSQL migration CLI.

    python migrate.py --source demo                 run (resume by default)
    python migrate.py run --source demo --no-resume start a fresh run
    python migrate.py plan --source demo            print the chunk plan, copy nothing
    python migrate.py status --source demo          the latest run of this config
    python migrate.py reconcile --source demo       re-count source and target now, store the result
    python migrate.py verify --source demo [--sample F] [--repair]  compare content checksums per chunk
    python migrate.py cleanup --source demo [--yes] ledger rows of abandoned runs past the retention
    python migrate.py abandon --source demo --run-id N [--yes]  give a run up: it is never resumed and
                                                    releases the target tables it was loading
    python migrate.py rollback --source demo --table T   swap the newest backup of T (load_mode swap) back in
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import signal
import sys
import threading
from typing import Any, NoReturn

from lib.config import LOAD_MODES, SETTING_NAMES, TABLE_OVERRIDE_KEYS, Settings, SourceConfig, load_config
from lib.errors import ConfigError, MigrationError
from lib.log import get_logger

# 3: the run is not finished and nothing failed: it goes on in another process (this start joined it), or waits
# for something the next start does (a swap that could not get its lock)
EXIT_OK, EXIT_ERRORS, EXIT_CONFIG, EXIT_UNFINISHED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="migrate.py", description="Resumable Snowflake → PostgreSQL migration")
    sub = parser.add_subparsers(dest="command")
    for name in ("run", "plan", "status", "reconcile", "verify", "cleanup", "abandon", "rollback"):
        # SUPPRESS: flags given before the sub-command are not reset by the sub-parser's defaults
        p = sub.add_parser(name, argument_default=argparse.SUPPRESS)
        _common(p)
        if name == "status":
            p.add_argument("--run-id", type=int, help="a specific run (default: the latest of this config)")
            p.add_argument("--watch", type=float, nargs="?", const=5.0, help="refresh every N seconds (default 5)")
        if name == "cleanup":
            p.add_argument("--older-than-days", type=float, default=30.0, help="retention (default 30 days)")
            p.add_argument("--yes", action="store_true", default=False, help="really delete")
        if name == "verify":
            p.add_argument("--sample", type=float, default=None, help="verify a random fraction of the chunks (0-1)")
            p.add_argument("--repair", action="store_true", default=False,
                           help="copy every differing chunk again (in one transaction each), then verify again")
            p.add_argument("--run-id", type=int, help="a specific run (default: the latest of this config)")
        if name == "rollback":
            p.add_argument("--yes", action="store_true", default=False, help="roll back every selected table")
        if name == "abandon":
            p.add_argument("--run-id", type=int, required=True, help="the run to give up")
            p.add_argument("--yes", action="store_true", default=False, help="really abandon it")
    _common(parser)
    return parser


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", help="source name in config.json")
    p.add_argument("--config", help="path to config.json (default: ./config.json or $MIGRATION_CONFIG)")
    p.add_argument("--table", action="append", dest="tables", help="only this table (repeatable)")
    p.add_argument("--no-resume", action="store_true", default=None, help="start a fresh run")
    p.add_argument("--abandon-live", action="store_true", default=None, dest="abandon_live",
                   help="with --no-resume: abandon the run even while its workers are alive")
    p.add_argument("--json", action="store_true", default=None, help="print the result as JSON")
    # every setting that a Step Functions execution may override is a flag too
    for name in SETTING_NAMES:
        default = getattr(Settings(), name)
        kind: Any = type(default)
        if isinstance(default, bool):
            kind = str  # "true" or "false", parsed with the config's one boolean rule
        p.add_argument(f"--{name.replace('_', '-')}", type=kind, dest=name,
                       help=f"override the {name} setting (default {str(default).lower() if isinstance(default, bool) else default})")
    # table options an execution may override, for every selected table
    p.add_argument("--load-mode", choices=LOAD_MODES, dest="load_mode",
                   help="in_place (default) or swap: load a shadow table and swap it in, keeping a backup")
    p.add_argument("--insert-only-mode", choices=("true", "false"), dest="insert_only_mode",
                   help="true: insert new rows only (catch-up); false: merge changed rows by key")


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    keys = ("tables", "no_resume", "abandon_live", *SETTING_NAMES, *TABLE_OVERRIDE_KEYS)
    return {key: getattr(args, key) for key in keys if getattr(args, key, None) is not None}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    log = get_logger()
    try:
        config = load_config(args.source, overrides_from_args(args), args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    signal.signal(signal.SIGTERM, _raise_interrupt)
    command = args.command or "run"
    try:
        if config.patterns and command not in ("plan", "run"):  # those two list Snowflake's tables themselves
            config = with_run_tables(config, getattr(args, "run_id", None))
        if command == "plan":
            return cmd_plan(config, bool(args.json))
        if command == "status":
            return cmd_status(config, bool(args.json), getattr(args, "run_id", None), getattr(args, "watch", None))
        if command == "cleanup":
            return cmd_cleanup(config, args.older_than_days, args.yes)
        if command == "reconcile":
            return cmd_reconcile(config, bool(args.json))
        if command == "verify":
            return cmd_verify(config, getattr(args, "sample", None), getattr(args, "repair", False),
                              getattr(args, "run_id", None), bool(args.json))
        if command == "abandon":
            return cmd_abandon(config, args.run_id, args.yes)
        if command == "rollback":
            return cmd_rollback(config, args.yes)
        return cmd_run(config, bool(args.json))
    except KeyboardInterrupt:
        log.warning("interrupted: the run stays resumable; to continue it: %s", resume_command(argv))
        return EXIT_INTERRUPTED
    except MigrationError as exc:
        log.error("%s", exc)
        return EXIT_ERRORS


def resume_command(argv: list[str] | None) -> str:
    """The command that resumes the interrupted one: the same, without the flags that would start afresh."""
    import shlex

    kept = [a for a in (sys.argv[1:] if argv is None else argv) if a not in ("--no-resume", "--abandon-live")]
    return shlex.join([sys.executable, sys.argv[0], *kept])


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def cmd_run(config: SourceConfig, as_json: bool) -> int:
    from lib.run.orchestrator import run

    result = run(config)
    stale = [t for t in result.tables if t.get("changed_by")] if result.mode == "nothing_to_do" else []
    if as_json:
        print(json.dumps(result.__dict__, default=str, indent=2))
    else:
        print(f"\n{result.message}")
        print_summary(result.run_id, result.status, result.tables, result.seconds)
        for t in stale:
            print(f"  ! {t['target']} was loaded by {t['changed_by']} after run {result.run_id} completed: the counts "
                  f"above are run {result.run_id}'s, not what the table holds now. To copy it again: --no-resume")
        if result.status == "running" and not any(t["chunks_failed"] for t in result.tables):
            print(f"run {result.run_id} is not finished and nothing failed: it goes on in another process, or the "
                  f"next start finishes it (migrate.py status --source {config.name} shows which)")
    if result.status == "completed":
        return EXIT_ERRORS if stale else EXIT_OK
    failed = result.status != "running" or any(t["chunks_failed"] or t["status"] == "failed" for t in result.tables)
    return EXIT_ERRORS if failed else EXIT_UNFINISHED


def print_summary(run_id: int, run_status: str, tables: list[dict[str, Any]], seconds: float) -> None:
    headers = ["table", "target", "status", "chunks done", "expected", "rows copied", "source", "target rows", "reconcile",
               "rows/s", "MB/s"]
    rows = [
        [t["table"], t["target"], t["status"], f"{t['chunks_done']}/{t['chunks']}",
         _num(t["expected_rows"]), f"{t['rows_copied']:,}", _num(t["source_count"]), _num(t["target_count"]), t["reconcile"],
         f"{t['rows_per_s']:,}" if t["rows_copied_now"] else "-", f"{t['mb_per_s']}" if t["rows_copied_now"] else "-"]
        for t in tables
    ]
    for row, t in zip(rows, tables, strict=True):
        if t.get("changed_by"):
            row[8] = f"{t['reconcile']}, then changed by {t['changed_by']}"
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=False)]
    print(f"run {run_id}: {run_status} in {seconds:.1f}s" if run_status != "running"
          else f"run {run_id}: running for {seconds:.1f}s")
    for line in [headers, *rows]:
        print("  " + "  ".join(str(v).ljust(w) for v, w in zip(line, widths, strict=True)))
    for t in tables:
        if t.get("load_mode") not in (None, "copy"):
            how = t["load_mode"] + (f" on ({', '.join(t['merge_key'])})" if t.get("merge_key") else "")
            window = t.get("window")
            if window:
                how += f", window {window['column']} >= {window['lo']} and <= {window['hi']}"
            print(f"  {t['table']}: {how}: {t['rows_copied']:,} read, {t['rows_inserted']:,} inserted, "
                  f"{t['rows_updated']:,} updated")
        if t.get("values_changed"):
            print(f"  {t['table']}: {t['values_changed']:,} value(s) changed by nul_bytes (see the chunks' notes)")
        if t.get("error"):
            print(f"  ! {t['table']}: {t['error']}")


def _duration(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def _num(value: Any) -> str:
    return "-" if value is None else f"{value:,}"


def with_run_tables(config: SourceConfig, run_id: int | None) -> SourceConfig:
    """The config with the tables its patterns matched for a run (default: the latest of the config)."""
    from lib import ledger
    from lib.ledger import schema as ledger_schema
    from lib.plan import discover
    from lib.target import postgres as pg

    with pg.connect(config.postgres_connect_args(), autocommit=True) as conn:
        ledger_schema.apply_migrations(conn)
        if run_id is None:
            latest = ledger.find_latest_run(conn, config.fingerprint())
            run_id = latest.run_id if latest else None
        return discover.pinned(config, conn, run_id)


def cmd_plan(config: SourceConfig, as_json: bool) -> int:
    """Plan every table as a run would (reads, checks, load mode, key, window, chunks), changing nothing; list
    every table's problem at once."""
    from lib.ledger import schema as ledger_schema
    from lib.plan import discover
    from lib.plan.budget import MIB, ReadShape, fit_threads, requested_threads
    from lib.plan.render import plan_summary, render_plan
    from lib.plan.tables import preview
    from lib.source.snowflake import SnowflakeSource
    from lib.target import postgres as pg

    source = SnowflakeSource(config.snowflake_connect_args(), config.retry_policy())
    problems: list[str] = []
    out: list[dict[str, Any]] = []
    try:
        with pg.connect(config.postgres_connect_args(), autocommit=True) as conn:
            ledger_schema.apply_migrations(conn)
            config = discover.discovered(config, source, conn, None)
            for spec in config.tables:
                try:
                    planned = preview(conn, source, config, spec)
                except MigrationError as exc:
                    problems.append(f"{spec.name}: {exc}")
                    out.append({"table": spec.name, "target": spec.target_name, "error": str(exc)})
                    if not as_json:
                        print(f"{spec.name} → {spec.target_name}: ERROR {exc}\n")
                    continue
                plan, load = planned.plan, planned.load
                largest = max((c.expected_rows for c in plan.chunks), default=1)
                shape = ReadShape.for_settings(plan.source_results or "whole", plan.row_bytes or 1, max(largest, 1),
                                               config.settings)
                threads, _ = fit_threads(requested_threads(config.settings.parallel_threads), [shape],
                                         config.settings.memory_budget_mb)
                window = load.window
                how = {"mode": load.mode, "key": list(load.key) or None,
                       "window": None if window is None else {"column": window.column, "lo": window.lo, "hi": window.hi,
                                                             "lo_from": window.lo_from},
                       "reads_at": planned.read_at}
                if not as_json:
                    print(render_plan(spec.name, spec.target_name, plan))
                    print(f"  load: {load.mode}" + (f" on ({', '.join(load.key)})" if load.key else "")
                          + (f"; window {window.column} >= {window.lo} and <= {window.hi}" if window and window.lo
                             else f"; first window {window.column} <= {window.hi}" if window else "")
                          + f"; reads {'AT ' + planned.read_at if planned.read_at else 'live'}")
                    print(f"  memory: {plan.source_results} results, {plan.row_bytes} bytes a row (sampled); a thread "
                          f"holds {shape.describe()}; {threads} thread(s) fit memory_budget_mb\n")
                out.append({"memory": {"source_results": plan.source_results, "row_bytes": plan.row_bytes,
                                       "per_thread_mb": round(shape.per_thread() / MIB, 1), "threads": threads},
                            "table": spec.name, "target": spec.target_name, "load": how, "strategy": plan.strategy,
                            "reason": plan.reason, "chunks": len(plan.chunks), "rows": plan.expected_rows,
                            "queries": plan.queries, "seconds": plan.seconds, **plan_summary(plan), "notes": plan.notes,
                            "bounds": [{"chunk": c.chunk_no, "where": c.bounds.describe(), "rows": c.expected_rows}
                                       for c in plan.chunks]})
    finally:
        source.close()
    if as_json:
        print(json.dumps(out, indent=2, default=str))
    elif problems:
        print(f"{len(problems)} of {len(config.tables)} table(s) would fail:")
        for problem in problems:
            print(f"  ! {problem}")
    return EXIT_ERRORS if problems else EXIT_OK


def status_report(config: SourceConfig, run_id: int | None) -> dict[str, Any] | None:
    """Everything an operator asks about one run (default: the latest of this config)."""
    from lib import ledger
    from lib.ledger import schema as ledger_schema
    from lib.run.orchestrator import summarize
    from lib.target import postgres as pg
    from lib.target import swap

    with pg.connect(config.postgres_connect_args(), autocommit=True) as conn:
        ledger_schema.apply_migrations(conn)
        if run_id is None:
            latest = ledger.find_run_for(conn, config.fingerprint(), config.name, [t.name for t in config.tables])
            if latest is None:
                return None
            run_id = latest.run_id
        s = ledger.SCHEMA
        run = conn.execute(
            f"SELECT run_id, status, started_at, completed_at, hours, resume_max_age_hours, error, "
            f"extract(epoch FROM coalesce(completed_at, now()) - started_at) FROM {s}.run_summary "
            "WHERE run_id = %s", (run_id,)).fetchone()
        if run is None:
            return None
        failed = conn.execute(f"SELECT table_name, chunk_no, predicate, attempts, error FROM {s}.failed_chunks "
                              "WHERE run_id = %s ORDER BY table_name, chunk_no LIMIT 20", (run_id,)).fetchall()
        stalled = conn.execute(f"SELECT table_name, chunk_no, worker, lease_expires_at FROM {s}.stalled_leases "
                               "WHERE run_id = %s", (run_id,)).fetchall()
        managed = [m for m in swap.cleanup_candidates(conn, config.settings.keep_backups)
                   if m.target in {t.target_name for t in config.tables}]
        recent = dict(conn.execute(  # rows per second over the last five minutes, per table
            f"SELECT table_name, sum(rows_copied) / 300.0 FROM {s}.migration_chunk_status WHERE run_id = %s "
            "AND status = 'done' AND completed_at > now() - interval '5 minutes' GROUP BY 1", (run_id,)).fetchall())
        live = ledger.live_sessions(conn, run_id)
        changes = ledger.schema_changes(conn, run_id)
        last_activity = conn.execute(
            f"SELECT greatest((SELECT max(greatest(started_at, completed_at)) FROM {s}.migration_chunk_status "
            f"WHERE run_id = %s), (SELECT updated_at FROM {s}.migration_runs WHERE run_id = %s))",
            (run_id, run_id)).fetchone()[0]
    no_worker = run[1] == "running" and live == 0
    selected = {t.name for t in config.tables}
    tables = [t for t in summarize(config, run_id, None) if t["table"] in selected]
    for t in tables:
        remaining = max((t["expected_rows"] or 0) - t["rows_copied"], 0)
        rate = float(recent.get(t["table"]) or 0) if not no_worker else 0.0
        t["recent_rows_per_s"] = round(rate)
        t["eta_seconds"] = round(remaining / rate) if rate and remaining else (0 if not remaining else None)
    active = run[1] in ("running", "completed_with_errors", "failed")
    return {
        "run_id": run[0], "status": run[1], "started_at": run[2], "completed_at": run[3], "hours": float(run[4]),
        "seconds": round(float(run[7]), 1), "live_workers": live, "stalled_since": last_activity if no_worker else None,
        "resume_window_hours_left": round(float(run[5]) - float(run[4]), 1) if active else None,
        "error": run[6], "tables": tables,
        "failed_chunks": [dict(zip(("table", "chunk", "predicate", "attempts", "error"), f, strict=True)) for f in failed],
        "stalled_leases": [dict(zip(("table", "chunk", "worker", "lease_expired_at"), x, strict=True)) for x in stalled],
        "managed_tables": [{"target": m.target, "kind": m.kind, "table": f"{m.schema}.{m.name}", "run_id": m.run_id,
                            "status": m.status, "created_at": m.created_at, "cleanup_would_drop": m.why or None}
                           for m in managed],
        "schema_changes": [{"table": c["table_name"], "target": c["target_table"], "column": c["column_name"],
                            "change": c["change"], "from_type": c["from_type"], "to_type": c["to_type"],
                            "ddl": c["ddl"], "note": c["note"], "applied_at": c["applied_at"]} for c in changes],
    }


def print_report(report: dict[str, Any]) -> None:
    window = report["resume_window_hours_left"]
    print(f"run {report['run_id']}: {report['status']}, started {report['started_at']:%Y-%m-%d %H:%M:%S %Z} "
          f"({_duration(report['seconds'])})" + (f", {window} h left in the resume window" if window is not None else ""))
    if report["stalled_since"] is not None:
        print(f"  stalled: no live worker since {report['stalled_since']:%Y-%m-%d %H:%M:%S %Z} (the process that ran it "
              "stopped); start the same command again to resume it")
    elif report["status"] == "running":
        print(f"  {report['live_workers']} session(s) working on it now")
    if report["error"]:
        print(f"  error: {report['error']}")
    print_summary(report["run_id"], report["status"], report["tables"], report["seconds"])
    for t in report["tables"]:
        if t["eta_seconds"]:
            print(f"  {t['table']}: {t['recent_rows_per_s']:,} rows/s over the last 5 min, ETA {t['eta_seconds']} s")
    for f in report["failed_chunks"]:
        print(f"  failed: {f['table']} chunk {f['chunk']} ({f['predicate']}), {f['attempts']} attempt(s): {f['error']}")
    for x in report["stalled_leases"]:
        print(f"  stalled: {x['table']} chunk {x['chunk']} held by {x['worker']}, lease expired {x['lease_expired_at']}")
    for m in report["managed_tables"]:
        fate = f"; cleanup drops it ({m['cleanup_would_drop']})" if m["cleanup_would_drop"] else ""
        print(f"  {m['kind']} of {m['target']}: {m['table']} (run {m['run_id']}, {m['status']}, "
              f"created {m['created_at']:%Y-%m-%d %H:%M}){fate}")
    for c in report["schema_changes"]:
        types = " → ".join(t for t in (c["from_type"], c["to_type"]) if t)
        print(f"  schema: {c['target']} column {c['column']} {c['change']} ({types})"
              + (f": {c['ddl']}" if c["ddl"] else "") + ("" if c["applied_at"] else " (not applied)"))


def cmd_status(config: SourceConfig, as_json: bool, run_id: int | None = None, watch: float | None = None) -> int:
    import time

    while True:
        report = status_report(config, run_id)
        if report is None:
            print("no run of this config or of these tables yet" if run_id is None else f"no run {run_id}")
            return EXIT_OK if run_id is None else EXIT_ERRORS
        if as_json:
            print(json.dumps(report, default=str, indent=2))
        else:
            print_report(report)
        if not watch or report["status"] != "running":
            return EXIT_OK
        time.sleep(watch)
        print()


def cmd_cleanup(config: SourceConfig, older_than_days: float, yes: bool) -> int:
    """List (and with --yes remove) what the engine keeps beyond its use: backups of this source's targets
    beyond `keep_backups`, shadow tables no live run will swap in, and ledger rows of abandoned runs
    older than the retention. Target tables themselves are never touched."""
    from lib import ledger
    from lib.ledger import schema as ledger_schema
    from lib.target import postgres as pg
    from lib.target import swap

    with pg.connect(config.postgres_connect_args(), autocommit=True) as conn:
        ledger_schema.apply_migrations(conn)
        targets = {t.target_name for t in config.tables}
        tables = [m for m in swap.cleanup_candidates(conn, config.settings.keep_backups) if m.why and m.target in targets]
        for m in tables:
            print(f"{m.kind} {m.schema}.{m.name} of {m.target} (run {m.run_id}, created {m.created_at:%Y-%m-%d %H:%M}): {m.why}")
        rows = conn.execute(
            f"SELECT run_id, source_name, started_at, metadata ->> 'abandoned_because' FROM {ledger.SCHEMA}.migration_runs "
            "WHERE status = 'abandoned' AND source_name = %s AND started_at < now() - %s * interval '1 day' "
            "ORDER BY run_id", (config.name, older_than_days)).fetchall()
        for run_id, source, started, why in rows:
            print(f"run {run_id} ({source}, started {started:%Y-%m-%d}): abandoned, {why}")
        if not rows and not tables:
            print(f"nothing to clean up: no backup beyond keep_backups={config.settings.keep_backups}, no unused "
                  f"shadow table, no abandoned run of {config.name} older than {older_than_days:g} days")
        elif yes:
            for m in tables:
                swap.drop(conn, m)
            conn.execute(f"DELETE FROM {ledger.SCHEMA}.migration_runs WHERE run_id = ANY(%s)", ([r[0] for r in rows],))
            print(f"dropped {len(tables)} table(s); deleted the ledger rows of {len(rows)} abandoned run(s)")
        else:
            print(f"{len(tables)} table(s) would be dropped and {len(rows)} run(s) deleted; add --yes to do it")
    return EXIT_OK


def cmd_rollback(config: SourceConfig, yes: bool) -> int:
    """Swap the newest backup of each selected table (--table) back in, each in one transaction."""
    from lib.ledger import schema as ledger_schema
    from lib.target import postgres as pg
    from lib.target import swap

    if len(config.tables) != 1 and not yes:
        print(f"rollback acts on {len(config.tables)} tables; name one with --table, or add --yes for all of them")
        return EXIT_ERRORS
    with pg.connect(config.postgres_connect_args(), autocommit=True) as conn:
        ledger_schema.apply_migrations(conn)
        for spec in config.tables:
            backup = swap.rollback(conn, spec.target, config.settings.swap_lock_timeout_seconds)
            print(f"{spec.target_name}: backup {'.'.join(backup)} swapped back in; the table it replaced is now "
                  f"{'.'.join(backup)} (rollback again to undo)")
    return EXIT_OK


def cmd_verify(config: SourceConfig, sample: float | None, repair: bool, run_id: int | None, as_json: bool) -> int:
    """Checksum every done chunk (or a sample) on both sides; with --repair, copy the differing ones again."""
    from lib import ledger
    from lib.ledger import schema as ledger_schema
    from lib.run.repair import verify_and_repair
    from lib.target import postgres as pg

    if sample is not None and not 0 < sample <= 1:
        print("--sample must be a fraction above 0 and at most 1", file=sys.stderr)
        return EXIT_CONFIG
    with pg.connect(config.postgres_connect_args(), autocommit=True) as conn:
        ledger_schema.apply_migrations(conn)
        if run_id is None:
            latest = ledger.find_run_for(conn, config.fingerprint(), config.name, [t.name for t in config.tables])
            if latest is None:
                print("no run of this config or of these tables yet: nothing to verify")
                return EXIT_ERRORS
            run_id = latest.run_id
    threads = config.settings.parallel_threads or 2
    first, after, refused = verify_and_repair(config, run_id, {t.name for t in config.tables}, sample, repair, threads)
    final = after if after is not None else first
    if as_json:
        print(json.dumps({"run_id": run_id, "verified": [r.__dict__ for r in first],
                          "after_repair": None if after is None else [r.__dict__ for r in after],
                          "not_repairable": refused}, indent=2, default=str))
    else:
        _print_verification(run_id, first, "verified")
        if after is not None:
            _print_verification(run_id, after, "after repair")
        for line in refused:
            print(f"  ! {line}")
    return EXIT_OK if all(r.clean for r in final) and not refused else EXIT_ERRORS


def _print_verification(run_id: int, results: list[Any], label: str) -> None:
    headers = ["table", "chunks checked", "matched", "differing", "errors", "compared for NULLs only"]
    rows = [[r.table + (" (whole table)" if r.whole_table else ""), f"{r.checked:,}", f"{r.matched:,}",
             f"{len(r.differing):,}", f"{len(r.errors):,}", ", ".join(r.nulls_only) or "-"] for r in results]
    widths = [max(len(x) for x in col) for col in zip(headers, *rows, strict=False)]
    print(f"run {run_id}: {label}")
    for line in [headers, *rows]:
        print("  " + "  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)))
    for r in results:
        if r.differing:
            chunks = ", ".join("the whole table" if c is None else f"#{c}" for c in r.differing[:20])
            more = f" and {len(r.differing) - 20} more" if len(r.differing) > 20 else ""
            print(f"  differing chunks of {r.table}: {chunks}{more}")
        for error in r.errors[:5]:
            print(f"  ! {r.table}: {error}")
    if any(r.differing for r in results):
        print("  A chunk differs when its rows are not the same on both sides: a row changed or deleted in Snowflake "
              "after it was copied, or changed in PostgreSQL. `verify --repair` copies such chunks again (a plain copy "
              "deletes the chunk's rows first; a catch-up or merge merges and deletes nothing, so a row deleted in "
              "Snowflake stays: reload those tables with --no-resume --load-mode swap). "
              "migration_status.verification shows each chunk's counts on both sides.")


def cmd_abandon(config: SourceConfig, run_id: int, yes: bool) -> int:
    """Give a run of this source up: it is never resumed, its workers can no longer commit, and the
    target tables it was loading can be loaded by another run. Rows it already copied stay."""
    from lib import ledger
    from lib.ledger import schema as ledger_schema
    from lib.target import postgres as pg

    with pg.connect(config.postgres_connect_args(), autocommit=True) as conn:
        ledger_schema.apply_migrations(conn)
        row = conn.execute(f"SELECT status, source_name FROM {ledger.SCHEMA}.migration_runs WHERE run_id = %s",
                           (run_id,)).fetchone()
        if row is None or row[1] != config.name:
            print(f"no run {run_id} of source {config.name}")
            return EXIT_ERRORS
        if row[0] in ("completed", "abandoned"):
            print(f"run {run_id} is {row[0]}: nothing to abandon")
            return EXIT_ERRORS
        targets = [r[0] for r in conn.execute(
            f"SELECT target_table FROM {ledger.SCHEMA}.migration_table_status WHERE run_id = %s "
            "AND planned_chunks IS NOT NULL AND status <> 'completed' ORDER BY 1", (run_id,)).fetchall()]
        print(f"run {run_id} ({row[0]}) loads {', '.join(targets) or 'no table'}; rows it copied stay in place")
        if not yes:
            print("add --yes to abandon it")
            return EXIT_OK
        ledger.abandon_run(conn, run_id, "abandoned by an operator (migrate.py abandon)")
        print(f"run {run_id} abandoned: its targets are free for another run")
    return EXIT_OK


def cmd_reconcile(config: SourceConfig, as_json: bool) -> int:
    """Re-count source and target of every configured table of the latest run, store and print it."""
    from lib import ledger
    from lib.ledger import schema as ledger_schema
    from lib.run.orchestrator import finalize_run, reconcile_tables
    from lib.target import postgres as pg

    def skipped(name: str, chunks: dict[str, int]) -> None:
        print(f"{name}: still copying ({chunks['pending']} pending, {chunks['running']} running): skipped")

    with pg.connect(config.postgres_connect_args(), autocommit=True) as conn:
        ledger_schema.apply_migrations(conn)
        latest = ledger.find_run_for(conn, config.fingerprint(), config.name, [t.name for t in config.tables])
        if latest is None:
            print("no run of this config or of these tables yet: nothing to reconcile")
            return EXIT_ERRORS
        results = reconcile_tables(conn, config, latest.run_id, only_running=False, skipped=skipped)
        states = {t["table_name"]: (t["status"], t["error"]) for t in ledger.table_rows(conn, latest.run_id)}

    final = finalize_run(config, latest.run_id)  # a mismatch found now makes a completed run completed_with_errors
    if as_json:
        print(json.dumps({"run_id": latest.run_id, "status": final, "tables": [
            {**r.__dict__, "table_status": states[r.table][0], "table_error": states[r.table][1]} for r in results]},
            indent=2))
    for r in results if not as_json else []:
        table_status, table_error = states[r.table]
        verdict = "match" if r.ok else f"MISMATCH: {r.error}"
        if r.ok and table_status != "completed":
            verdict += f", but the table is {table_status}: {table_error}"
        print(f"{r.table}: source {_num(r.source_count)}, target {_num(r.target_count)} — {verdict}")
    completed = results and all(states[r.table][0] == "completed" for r in results)
    return EXIT_OK if completed else EXIT_ERRORS


def exit_without_teardown(code: int) -> NoReturn:
    """Exit with `code` once everything registered to run at exit has run and the output is flushed, without the
    interpreter's teardown of the ~1,000 modules the engine imports: 0.15 s of CPU on every command, which a
    finished command does not need (its connections are closed, its files written). With a thread of our own still
    running, the normal exit waits for it instead."""
    if any(t is not threading.main_thread() and not t.daemon and t.is_alive() for t in threading.enumerate()):
        sys.exit(code)
    atexit._run_exitfuncs()  # logging's flush, weakref finalizers, whatever a library registered
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:  # None: the descriptor was closed before the interpreter started
                stream.flush()
        except (OSError, ValueError):  # a closed pipe: what the interpreter would report as an exit status of 120
            code = code or 120
    os._exit(code)


if __name__ == "__main__":
    exit_without_teardown(main())
