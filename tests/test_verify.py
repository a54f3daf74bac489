"""verify: content checksums of every chunk computed inside Snowflake and PostgreSQL from one canonical form;
differences found in exactly the chunk that holds them; --repair copies that chunk again."""

from __future__ import annotations

import signal
import time

from lib import ledger as status
from lib.check.verify import verify_run
from lib.config import load_config
from lib.run.orchestrator import run
from lib.run.repair import verify_and_repair
from scripts.demo_data import ALL_TYPES_DDL, all_types_insert
from tests.helpers import cli
from tests.test_types_roundtrip import EXTREMES

ALL_TYPES = [{"source": '"AllTypes"', "target": 'public."AllTypes"', "chunking_columns": ["ID"],
              "chunking_column_types": ["numeric"]}]


def _copied(env, rows: int = 3000):
    env.sf_execute(ALL_TYPES_DDL, all_types_insert(rows), EXTREMES)
    path = env.write_config(ALL_TYPES, defaults={"chunk_rows": 500})
    copied = cli(env.env, path)
    assert copied.returncode == 0, copied.stdout + copied.stderr
    return path


def test_a_correct_copy_of_every_mapped_type_verifies_clean(env) -> None:
    path = _copied(env)
    verified = cli(env.env, path, "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    results = env.pg_rows(f"SELECT result, count(*) FROM {status.SCHEMA}.chunk_checksums GROUP BY 1")
    chunks = env.pg_value(f"SELECT count(*) FROM {status.SCHEMA}.migration_chunk_status")
    assert results == [("match", chunks)]
    assert "RATIO (FLOAT: NULLs only)" in verified.stdout


ROW = 1234  # the altered row; chunks of 500 rows put it in one chunk of several
# (description, statement altering one row from the given id on, is it a difference); each alteration in its own chunk
ALTERATIONS = [
    ("a decimal's last digit", 'UPDATE public."AllTypes" SET amount = amount + 0.01 WHERE id = %s', True),
    ("a timestamp by one microsecond", "UPDATE public.\"AllTypes\" SET created = created + interval '1 microsecond' "
                                       "WHERE id = %s", True),
    ("one character of a string", "UPDATE public.\"AllTypes\" SET name = 'X' || substr(name, 2) WHERE id = "
                                  "(SELECT min(id) FROM public.\"AllTypes\" WHERE id >= %s AND name NOT LIKE 'X%%')", True),
    ("a NULL turned into an empty string", "UPDATE public.\"AllTypes\" SET code = '' WHERE id = "
                                           "(SELECT min(id) FROM public.\"AllTypes\" WHERE code IS NULL AND id >= %s)", True),
    ("a JSON key order change", "UPDATE public.\"AllTypes\" SET doc = ('{' || (SELECT string_agg(format('%%s: %%s', "
                                "to_jsonb(k), v), ', ' ORDER BY k DESC) FROM jsonb_each(doc) AS e(k, v)) || '}')::jsonb "
                                "WHERE id = (SELECT min(id) FROM public.\"AllTypes\" WHERE id >= %s AND doc IS NOT NULL)", False),
]


def _chunk_of(env, row_id: int) -> int:
    return env.pg_value(
        f"SELECT chunk_no FROM {status.SCHEMA}.migration_chunk_status WHERE bounds->>'kind' = 'range' "
        "AND (bounds->>'lo' IS NULL OR (bounds->>'lo')::numeric <= %s) AND (bounds->>'hi' IS NULL OR %s < (bounds->>'hi')::numeric)",
        (row_id, row_id))


def test_each_altered_value_is_found_in_exactly_its_chunk_and_repaired(env) -> None:
    _copied(env)
    config = load_config("test", {}, env.tmp / "config.json")
    expected = set()
    with env.pg() as conn:
        for n, (what, statement, is_difference) in enumerate(ALTERATIONS):
            altered = conn.execute(statement + " RETURNING id", (200 + 500 * n,)).fetchall()
            assert len(altered) == 1, what
            if is_difference:
                expected.add(_chunk_of(env, altered[0][0]))
    assert len(expected) == 4

    first, after, refused = verify_and_repair(config, 1, None, None, repair=True, threads=2)

    assert set(first[0].differing) == expected, "a difference was missed, or a JSON key order counted as one"
    assert after is not None and after[0].clean and after[0].checked == 4 and not refused
    assert verify_run(config, 1)[0].clean
    assert env.pg_value(f"SELECT status FROM {status.SCHEMA}.migration_runs") == "completed"
    assert env.pg_value("SELECT count(*) FROM public.\"AllTypes\"") == env.pg_value(
        "SELECT count(DISTINCT id) FROM public.\"AllTypes\"") == 3001


def test_verify_exits_1_naming_the_chunk_and_repair_makes_it_exit_0(env) -> None:
    path = _copied(env)
    with env.pg() as conn:
        conn.execute('UPDATE public."AllTypes" SET amount = amount + 0.01 WHERE id = %s', (ROW,))
    found = cli(env.env, path, "verify")
    assert found.returncode == 1 and f"differing chunks of {env.sf_database}.PUBLIC.AllTypes: #{_chunk_of(env, ROW)}" \
        in found.stdout, found.stdout
    repaired = cli(env.env, path, "verify", "--repair")
    assert repaired.returncode == 0 and "after repair" in repaired.stdout, repaired.stdout + repaired.stderr


def test_a_crash_during_a_repair_leaves_the_chunk_old_or_new_never_half(env) -> None:
    path = _copied(env)
    with env.pg() as conn:
        conn.execute('UPDATE public."AllTypes" SET amount = amount + 0.01 WHERE id = %s', (ROW,))
    chunk = _chunk_of(env, ROW)
    before = env.pg_rows('SELECT id, amount FROM public."AllTypes" ORDER BY id')

    killed = cli({**env.env, "MIGRATION_FAULTS": "before_commit@1"}, path, "verify", "--repair")

    assert killed.returncode == -signal.SIGKILL
    assert env.pg_rows('SELECT id, amount FROM public."AllTypes" ORDER BY id') == before  # the old rows, all of them
    state = env.pg_rows(f"SELECT status, repair FROM {status.SCHEMA}.migration_chunk_status WHERE chunk_no = %s", (chunk,))
    assert state in ([("running", True)], [("pending", True)])  # claimed by the killed worker, or not yet
    resumed = cli(env.env, path)  # a plain run resumes the repair like any pending chunk
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert cli(env.env, path, "verify").returncode == 0


def test_a_sample_checks_a_fraction_of_the_chunks(env) -> None:
    path = _copied(env)
    sampled = cli(env.env, path, "verify", "--sample", "0.25")
    assert sampled.returncode == 0, sampled.stdout
    assert env.pg_value(f"SELECT count(*) FROM {status.SCHEMA}.chunk_checksums") == 2  # 8 chunks x 0.25


def test_a_table_chunked_by_hash_is_verified_whole_and_not_repaired_chunk_wise(env) -> None:
    env.sf_execute("CREATE TABLE NOKEY AS SELECT 'v' || SEQ8() AS V, MOD(SEQ8(), 7)::NUMBER(9,0) AS N "
                   "FROM TABLE(GENERATOR(ROWCOUNT => 3000))")
    path = env.write_config([{"source": "NOKEY"}], defaults={"chunk_rows": 500})
    assert cli(env.env, path).returncode == 0
    assert cli(env.env, path, "verify").returncode == 0
    assert env.pg_rows(f"SELECT chunk_no, result FROM {status.SCHEMA}.chunk_checksums") == [(None, "match")]
    with env.pg() as conn:
        conn.execute("UPDATE public.nokey SET n = n + 1 WHERE v = 'v7'")
    repaired = cli(env.env, path, "verify", "--repair")
    assert repaired.returncode == 1
    assert "cannot be repaired chunk-wise" in repaired.stdout


def test_verify_after_a_run_when_the_config_asks_for_it(env) -> None:
    env.sf_execute(ALL_TYPES_DDL, all_types_insert(1000))
    result = run(env.config(ALL_TYPES, chunk_rows=500, verify=True))
    assert result.status == "completed", result.tables
    assert env.pg_value(f"SELECT count(*) FROM {status.SCHEMA}.verification WHERE result = 'match'") == 3


def test_a_target_without_an_index_on_the_chunk_column_is_read_once_per_group_of_chunks(env) -> None:
    path = _copied(env, rows=4000)  # 8+ chunks; the target has no index at all (the source declares no key)
    assert env.pg_value("SELECT count(*) FROM pg_catalog.pg_indexes WHERE tablename = 'AllTypes'") == 0
    before = _settled_seq_scans(env)  # the copy's own backends may still be reporting theirs
    run_id = env.pg_value(f"SELECT max(run_id) FROM {status.SCHEMA}.migration_runs")
    results = verify_run(load_config("test", {}, path), run_id, threads=2)
    chunks = env.pg_value(f"SELECT count(*) FROM {status.SCHEMA}.migration_chunk_status")
    assert chunks >= 8 and [(r.checked, r.matched) for r in results] == [(chunks, chunks)]
    scans = before
    for _ in range(50):  # the verify backends report their scans as they exit
        scans = _seq_scans(env)
        if scans - before >= 2:
            break
        time.sleep(0.2)
    assert scans - before == 2  # two groups (one per thread), not one scan per chunk


def _settled_seq_scans(env) -> int:
    last = -1
    for _ in range(50):
        scans = _seq_scans(env)
        if scans == last:
            return scans
        last = scans
        time.sleep(0.3)
    raise AssertionError("the table's scan count never settled")


def _seq_scans(env) -> int:
    return env.pg_value("SELECT seq_scan FROM pg_catalog.pg_stat_user_tables WHERE relname = 'AllTypes'")
