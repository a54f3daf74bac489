"""String keys: a text column is a chunking column, cut at real key values in Snowflake's order (code points, no
collation), and PostgreSQL selects the same rows of every chunk whatever its own order of text, when verifying and
when repairing.

The test database's collation is C.UTF-8 (code point order, like Snowflake) and this PostgreSQL has neither ICU nor
an en_US locale, so the target key columns here are citext: case-insensitive, a different order than Snowflake's.
Compared in the column's own order, the chunks would select other rows in PostgreSQL than Snowflake read."""

from __future__ import annotations

from typing import Any

import pytest

from lib import ledger as status
from lib.config import TableSpec
from lib.errors import FatalError
from lib.models import Bounds
from lib.plan.strategy import Choice, _plan
from lib.run.orchestrator import run
from lib.run.repair import verify_and_repair
from lib.typemap import map_column

STRING_CHUNKS = {"chunking_columns": ["K"], "chunking_column_types": ["string"]}

# Keys that order differently by code point, by case-insensitive comparison and by a language's collation
# (en_US puts 'a' before 'B', ignores '-' and ' ' at first, sorts 'é' next to 'e'); '' is a key, not NULL;
# trailing spaces make other keys; a quote, a backslash, a percent sign, a tab and a newline must survive binding.
HOSTILE = ["", " ", "  ", "a", "a ", "a  ", "A", "Ab", "aB", "ab", "b", "B", "Z", "z", "_", "-", "~", "a-b", "a b",
           "co-op", "coop", "Co-op", "é", "e\u0301", "E", "e", "ß", "ss", "SS", "日本", "😀", "Ω", "0", "9",
           "it's", "back\\slash", "[", "`", "MiXeD", "mixed", "100%", "tab\there", "new\nline"]


def _insert(env, table: str, rows: list[tuple[Any, ...]]) -> None:
    with env.sf() as conn, conn.cursor() as cur:
        cur.executemany(f"INSERT INTO {table} VALUES (%s, %s, %s)", rows)


def _keyed_table(env) -> None:
    """K not unique: the hostile keys, 2,000 generated ones in two cases, one key in 400 rows, and NULL keys."""
    env.sf_execute("CREATE TABLE T (ID NUMBER(18,0), K VARCHAR, V VARCHAR)",
                   "INSERT INTO T SELECT 1000 + SEQ8(), IFF(SEQ8() % 2 = 0, 'key-', 'KEY_') || LPAD(SEQ8()::VARCHAR, 5, '0'), "
                   "'g' || SEQ8() FROM TABLE(GENERATOR(ROWCOUNT => 2000))",
                   "INSERT INTO T SELECT 5000 + SEQ8(), 'heavy', 'h' || SEQ8() FROM TABLE(GENERATOR(ROWCOUNT => 400))")
    _insert(env, "T", [(i, k, f"v{i}") for i, k in enumerate(HOSTILE)] + [(900 + i, None, f"n{i}") for i in range(5)])


def _citext_target(env) -> None:
    with env.pg() as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS citext")
        conn.execute("CREATE TABLE public.t (id bigint, k citext, v text)")


def _rows(env) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """(source, target) rows as (id, key, value), in one order."""
    source = sorted((int(i), k, v) for i, k, v in env.sf_rows("SELECT ID, K, V FROM T"))
    target = sorted((int(i), k, v) for i, k, v in env.pg_rows("SELECT id, k::text, v FROM public.t"))
    return source, target


def _chunks(env) -> list[tuple[int, Bounds, int, int]]:
    return [(no, Bounds.from_json(b), expected, copied) for no, b, expected, copied in env.pg_rows(
        f"SELECT chunk_no, bounds, expected_rows, rows_copied FROM {status.SCHEMA}.migration_chunk_status "
        "WHERE run_id = 1 ORDER BY chunk_no")]


def _holds(bounds: Bounds, key: str | None) -> bool:
    """Python twin of the chunk predicate: code point order, as Snowflake compares text without a collation."""
    if bounds.kind == "null" or key is None:
        return bounds.kind == "null" and key is None
    return (bounds.lo is None or key >= bounds.lo) and (bounds.hi is None or key < bounds.hi)


def test_a_text_primary_key_is_chunked_by_string_ranges_and_copied_exactly(env) -> None:
    env.sf_execute("CREATE TABLE CODES (CODE VARCHAR PRIMARY KEY, N NUMBER(9,0))")
    with env.sf() as conn, conn.cursor() as cur:
        cur.executemany("INSERT INTO CODES VALUES (%s, %s)", [(k, i) for i, k in enumerate(HOSTILE)])
    env.sf_execute("INSERT INTO CODES SELECT 'c' || SEQ8(), SEQ8() FROM TABLE(GENERATOR(ROWCOUNT => 300))")
    config = env.config([{"source": "CODES"}], chunk_rows=40)
    result = run(config)
    table = result.tables[0]
    assert result.status == "completed", result
    assert table["strategy"] == "string" and table["chunks"] >= 6
    assert sorted(env.sf_rows("SELECT CODE, N FROM CODES")) == sorted(env.pg_rows("SELECT code, n FROM public.codes"))
    first, again, _ = verify_and_repair(config, 1, None, None, repair=False, threads=2)
    assert again is None and all(r.clean for r in first) and first[0].checked == table["chunks"], first


def test_string_chunks_select_the_same_rows_in_postgresql_whatever_its_order_of_text(env) -> None:
    _keyed_table(env)
    _citext_target(env)
    config = env.config([{"source": "T", **STRING_CHUNKS}], chunk_rows=150)
    result = run(config)
    assert result.status == "completed", result
    source, target = _rows(env)
    assert target == source and len(source) == 2000 + 400 + len(HOSTILE) + 5
    chunks = _chunks(env)
    assert len(chunks) >= 10 and chunks[-1][1].kind == "null"
    assert any(b.lo == "heavy" for _, b, _, _ in chunks), "the heavy key is a chunk of its own"
    for no, bounds, expected, copied in chunks:  # every key in exactly one chunk, the one Snowflake read it in
        assert expected == copied == sum(_holds(bounds, k) for _, k, _ in source), no

    first, again, _ = verify_and_repair(config, 1, None, None, repair=False, threads=2)

    assert again is None and first[0].checked == len(chunks), first
    assert first[0].clean, f"chunks differing between Snowflake and PostgreSQL: {first[0].differing}"


def test_a_repair_of_one_string_chunk_reloads_exactly_that_chunks_rows(env) -> None:
    _keyed_table(env)
    _citext_target(env)
    config = env.config([{"source": "T", **STRING_CHUNKS}], chunk_rows=150)
    assert run(config).status == "completed"
    chunk_no, damaged = next((no, b) for no, b, _, _ in _chunks(env) if _holds(b, "a"))
    assert _holds(damaged, "aB") and _holds(damaged, "a ")
    with env.pg() as conn:  # one value changed, one row lost, one stray row: all of them in that chunk only
        conn.execute("UPDATE public.t SET v = 'damaged' WHERE k::text = 'a'")
        conn.execute("DELETE FROM public.t WHERE k::text = 'aB'")
        conn.execute("INSERT INTO public.t VALUES (-1, 'a ', 'stray')")
    others = _untouched(env, damaged)

    first, again, refused = verify_and_repair(config, 1, None, None, repair=True, threads=2)

    assert [r.differing for r in first] == [[chunk_no]] and not refused
    assert again is not None and all(r.clean for r in again), again
    source, target = _rows(env)
    assert target == source
    assert _untouched(env, damaged) == others, "a row of another chunk was deleted or written again"


def _untouched(env, damaged: Bounds) -> dict[int, str]:
    """The target rows outside the damaged chunk, with the transaction that wrote each one."""
    rows = env.pg_rows("SELECT id, k::text, xmin::text FROM public.t")
    return {int(i): xmin for i, k, xmin in rows if not _holds(damaged, k)}


def test_a_column_with_a_collation_is_refused_as_a_string_chunking_column() -> None:
    spec = TableSpec(("DB", "PUBLIC", "T"), ("public", "t"), ("K",), ("string",))
    columns = [map_column("K", "TEXT", collation="en-ci"), map_column("N", "NUMBER", 18, 0)]
    with pytest.raises(FatalError, match=r"collation 'en-ci'.*PostgreSQL cannot repeat"):
        _plan(None, spec, columns, 100, Choice("string", "K", "configured"))  # type: ignore[arg-type]
    with pytest.raises(FatalError, match="not text"):
        _plan(None, spec, columns, 100, Choice("string", "N", "configured"))  # type: ignore[arg-type]
    with pytest.raises(FatalError, match=r"not numeric \(chunk it as string\)"):
        _plan(None, spec, columns, 100, Choice("numeric", "K", "configured"))  # type: ignore[arg-type]
