"""The post-load step (primary key, ANALYZE) is recorded in the ledger: a crash during it is finished on
resume, two finishers at once build the key once, and a table whose key cannot be built never becomes
'completed', whoever reconciles it."""

from __future__ import annotations

import signal
import threading

from lib import ledger as status
from lib.run.orchestrator import finish_table
from lib.target import postgres as pg
from lib.target.load_modes import table_loads
from tests.helpers import cli

ROWS = 2000


def _killed_during_post_load(env):
    env.sf_execute("CREATE TABLE KEYED (ID NUMBER(18,0) PRIMARY KEY, V VARCHAR)",
                   f"INSERT INTO KEYED SELECT SEQ8(), 'v' || SEQ8() FROM TABLE(GENERATOR(ROWCOUNT => {ROWS}))")
    path = env.write_config([{"source": "KEYED"}], defaults={"chunk_rows": 500})
    killed = cli({**env.env, "MIGRATION_FAULTS": "post_load@1"}, path)
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    return path


def _table_state(env) -> tuple[str, bool]:
    state = env.pg_value(f"SELECT status FROM {status.SCHEMA}.migration_table_status")
    with env.pg() as conn:
        return state, pg.has_primary_key(conn, ("public", "keyed"))


def test_a_kill_while_the_primary_key_is_built_is_finished_on_resume(env) -> None:
    path = _killed_during_post_load(env)
    assert _table_state(env) == ("post_load", False)
    assert env.pg_value(f"SELECT status FROM {status.SCHEMA}.migration_runs") == "running"

    resumed = cli(env.env, path)

    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert _table_state(env) == ("completed", True)
    assert env.pg_value(f"SELECT primary_key_built_at IS NOT NULL AND analyzed_at IS NOT NULL "
                        f"FROM {status.SCHEMA}.migration_table_status")
    assert env.pg_value(f"SELECT status FROM {status.SCHEMA}.migration_runs") == "completed"


def test_two_finishers_at_once_build_the_key_once_and_neither_fails(env) -> None:
    path = _killed_during_post_load(env)
    from lib.config import load_config

    config = load_config("test", {}, path)
    with pg.connect(config.postgres_connect_args(), autocommit=True) as conn:
        [(spec, _, load)] = table_loads(conn, config, 1).values()
    outcomes: list[bool] = []

    def finish() -> None:
        with pg.connect(config.postgres_connect_args(), autocommit=True) as conn:
            outcomes.append(finish_table(conn, 1, spec, load))

    threads = [threading.Thread(target=finish) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == [False, True]
    assert _table_state(env) == ("completed", True)
    assert env.pg_value(f"SELECT error FROM {status.SCHEMA}.migration_table_status") is None


def test_a_table_whose_key_cannot_be_built_stays_failed_whoever_reconciles_it(env) -> None:
    path = _killed_during_post_load(env)
    with env.pg() as conn:  # a duplicate key, with the row count unchanged: counts alone cannot see it
        conn.execute("DELETE FROM public.keyed WHERE id = 7")
        conn.execute("INSERT INTO public.keyed VALUES (8, 'twin')")

    resumed = cli(env.env, path)
    assert resumed.returncode == 1
    assert _table_state(env) == ("failed", False)
    error = env.pg_value(f"SELECT error FROM {status.SCHEMA}.migration_table_status")
    assert "building the primary key of public.keyed" in error and "UniqueViolation" in error

    reconciled = cli(env.env, path, "reconcile")

    assert reconciled.returncode == 1, reconciled.stdout
    assert _table_state(env) == ("failed", False)
    assert env.pg_value(f"SELECT status FROM {status.SCHEMA}.migration_runs") == "completed_with_errors"


def test_a_reconcile_pass_claims_only_the_tables_that_wait_for_their_post_load_step(env, monkeypatch) -> None:
    """A Step Functions Reconcile step passes over every table of the run, thousands of them, each invocation: the
    completed ones cost no claim each."""
    import psycopg

    from lib.run.orchestrator import reconcile_tables, run

    for name in ("A", "B", "C"):
        env.sf_execute(f"CREATE TABLE {name} (ID NUMBER(18,0) PRIMARY KEY)",
                       f"INSERT INTO {name} SELECT SEQ8() FROM TABLE(GENERATOR(ROWCOUNT => 100))")
    config = env.config([{"source": name} for name in ("A", "B", "C")])
    done = run(config)
    assert done.status == "completed"
    sent: list[str] = []
    real = psycopg.Cursor.execute
    monkeypatch.setattr(psycopg.Cursor, "execute",
                        lambda self, query, params=None, **kw: sent.append(str(query)) or real(self, query, params, **kw))

    with env.pg() as conn:
        assert reconcile_tables(conn, config, done.run_id, only_running=True) == []

    assert not [s for s in sent if "'post_load' FOR UPDATE" in s], sent
