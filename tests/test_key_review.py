"""A hostile review of the key checks, the new-key-range probe and the window at its lower end (01d5d9e, 532d04f,
15cd0c9). `test_finding_*` failed when written: keys that meet on the wire, key arrays of several integer widths, a key
repeated across chunks; they pass since every stage is checked as written and a keyed load read live in chunks
not cut on its key is checked again at reconcile. `test_held_*` are attacks that held."""

from __future__ import annotations

import pytest

from lib import ledger as status
from lib.run.orchestrator import run
from tests.helpers import at_fault_point_once, first_live_window, twin_after_first_chunk

NUMERIC = {"chunking_columns": ["ID"], "chunking_column_types": ["numeric"]}


def _table(env) -> tuple:
    return env.pg_rows(f"SELECT status, error, reconcile_status FROM {status.SCHEMA}.migration_table_status "
                       "ORDER BY run_id DESC LIMIT 1")[0]


# ---------------------------------------------------------------------------------------------------------------
# 532d04f: the key check of a key of several columns moved from the stage (PostgreSQL, the target's types, AFTER the
# wire's normalisation) to Arrow (the source's raw values, BEFORE it). Two source rows whose keys differ in Snowflake
# but become one key on the way (nul_bytes strip: 'x\0' -> 'x'; a VARCHAR key into an integer column: '01' -> 1) pass
# the Arrow check, the stage check is skipped, and a catch-up's ON CONFLICT DO NOTHING keeps one of them: 2 rows read,
# 2 counted, 1 written -> `match`. Before 532d04f a key of several columns always went through stage_key_problems,
# which saw the normalised values and failed the chunk naming the repeat.
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["nul_strip", "varchar_into_integer"])
def test_finding_a_catch_up_keyed_on_two_columns_keeps_every_row_or_fails_when_keys_meet_on_the_wire(env, case) -> None:
    code_type = "integer" if case == "varchar_into_integer" else "text"
    env.sf_execute("CREATE TABLE ITEMS (ID NUMBER(18,0), CODE VARCHAR, NAME VARCHAR)",
                   "INSERT INTO ITEMS SELECT SEQ8(), TO_VARCHAR(SEQ8() + 10), 'item ' || SEQ8() "
                   "FROM TABLE(GENERATOR(ROWCOUNT => 1000))")
    if case == "nul_strip":
        env.sf_execute("INSERT INTO ITEMS VALUES (5000, '7' || CHR(0), 'with a NUL'), (5000, '7', 'without')")
    else:
        env.sf_execute("INSERT INTO ITEMS VALUES (5000, '07', 'leading zero'), (5000, '7', 'without')")
    with env.pg() as conn:
        conn.execute(f"CREATE TABLE public.items (id bigint, code {code_type}, name text, PRIMARY KEY (id, code))")
        conn.execute("INSERT INTO public.items SELECT g, (g + 10)::text::" + code_type + ", 'kept ' || g "
                     "FROM generate_series(0, 99) g")
    table = [{"source": "ITEMS", "merge_key": ["ID", "CODE"], "nul_bytes": "strip", **NUMERIC}]

    result = run(env.config(table, snapshot=False, chunk_rows=300))

    source_rows = env.sf_rows("SELECT COUNT(*) FROM ITEMS")[0][0]
    target_rows = env.pg_value("SELECT count(*) FROM public.items")
    state, error, reconciled = _table(env)
    assert state == "failed" or target_rows == source_rows, (
        f"{state} / reconcile {reconciled!r}: source {source_rows} rows, target {target_rows}; "
        f"rows of key 5000 in target: {env.pg_rows('SELECT * FROM public.items WHERE id = 5000')}; tables {result.tables}")
    assert "the source repeats keys" in error and "5000, 7 in 2 rows" in error, error  # checked after the wire


def _narrowest_int_key(monkeypatch) -> None:
    """Make the source read behave like real Snowflake for a NUMBER(p,0) column: the server sends each result part
    with the narrowest integer type its values fit (int8/int16/int32/int64: snowflake-connector-python #1170 and #1133,
    arrow-adbc #3008), and arrow_number_to_decimal converts only scale > 0. fakesnow always sends decimal128, so the
    width is chosen here per batch for the first column (ID)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from lib.source.snowflake import SnowflakeSource

    real = SnowflakeSource.read

    def narrowed(self, *args, **kwargs):
        for batch in real(self, *args, **kwargs):
            ids = batch.column(0)
            if batch.num_rows and pa.types.is_decimal(ids.type):
                top = max(abs(int(pc.min(ids).as_py())), abs(int(pc.max(ids).as_py())))
                narrow = next(t for t, limit in ((pa.int8(), 127), (pa.int16(), 32767), (pa.int32(), 2**31 - 1),
                                                  (pa.int64(), 2**63 - 1)) if top <= limit)
                batch = pa.RecordBatch.from_arrays([ids.cast(narrow), *batch.columns[1:]], names=batch.schema.names)
            yield batch

    monkeypatch.setattr(SnowflakeSource, "read", narrowed)


# ---------------------------------------------------------------------------------------------------------------
# _KeySeen keeps each batch's key array as it comes and builds pa.chunked_array(kept): batches of one chunk whose key
# column arrived with different integer widths (as real Snowflake sends NUMBER(p,0), per result part) raise
# ArrowInvalid, and a live catch-up or merge fails its chunk with Arrow's words, though the wire itself casts every
# batch to its type and would have written them. One key column: as before today (the old single-column check built
# the same chunked_array). Several key columns: new in 532d04f (they went to the stage check in PostgreSQL before).
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("key", [["ID"], ["ID", "CODE"]])
def test_finding_a_live_catch_up_whose_key_arrives_in_two_integer_widths_is_loaded(env, monkeypatch, key) -> None:
    env.sf_execute("CREATE TABLE ITEMS (ID NUMBER(18,0), CODE VARCHAR, NAME VARCHAR)",
                   "INSERT INTO ITEMS SELECT SEQ8(), 'c' || SEQ8(), 'item ' || SEQ8() FROM TABLE(GENERATOR(ROWCOUNT => 1000))")
    with env.pg() as conn:
        conn.execute(f"CREATE TABLE public.items (id bigint, code text, name text, PRIMARY KEY ({', '.join(key)}))")
        # rows in the first chunk's key range: it goes through the stage (not the direct copy of a new range)
        conn.execute("INSERT INTO public.items SELECT g, 'c' || g, 'kept ' || g FROM generate_series(0, 9) g")
    _narrowest_int_key(monkeypatch)

    # one chunk of ids 0-299 read in batches of 100: 0-99 fit int8, 100-199 and 200-299 need int16
    result = run(env.config([{"source": "ITEMS", "merge_key": key, **NUMERIC}], {"batch_size": 100},
                            snapshot=False, chunk_rows=300, max_attempts=1))

    errors = env.pg_rows(f"SELECT chunk_no, error FROM {status.SCHEMA}.migration_chunk_status WHERE status = 'failed'")
    assert result.status == "completed" and not errors, errors
    assert env.pg_value("SELECT count(*) FROM public.items") == 1000


# ---------------------------------------------------------------------------------------------------------------
# Not today's: the per-chunk check sees one chunk. Chunks cut on another column than the key (GRP here), a key repeated
# after planning in a chunk not yet read meets the first row only in the target: the catch-up's DO NOTHING keeps the
# row already written, rows read = source count, `match`, one source row short. (Predates today; 532d04f's "always
# refuses repeated keys" is per chunk.)
# ---------------------------------------------------------------------------------------------------------------
def test_finding_a_key_repeated_after_planning_in_another_chunk_than_its_twin_is_not_reported_as_a_match(
        env, monkeypatch) -> None:
    twin = twin_after_first_chunk(env, monkeypatch)  # after the first chunk (GRP < 250): key 5 again, GRP 990

    result = run(env.config([{"source": "ITEMS", "merge_key": ["ID"], "chunking_columns": ["GRP"],
                              "chunking_column_types": ["numeric"]}], snapshot=False, chunk_rows=250,
                            parallel_threads=1))

    source_rows = env.sf_rows("SELECT COUNT(*) FROM ITEMS")[0][0]
    target_rows = env.pg_value("SELECT count(*) FROM public.items")
    state, error, reconciled = _table(env)
    assert twin and state == "failed" and "repeating another row's key (ID), e.g. 5 in 2 rows" in error, error
    assert twin and (state == "failed" or reconciled != "match" or target_rows == source_rows), (
        f"{state} / reconcile {reconciled!r}: source {source_rows} rows ({env.sf_rows('SELECT COUNT(*) FROM ITEMS WHERE ID = 5')[0][0]} "
        f"with key 5), target {target_rows}; rows_copied {result.tables[0]['rows_copied']}, "
        f"source_count {result.tables[0]['source_count']}")


WINDOW = [{"source": "ITEMS", "source_watermark": "UPDATED_AT", **NUMERIC}]


def _window_source(env) -> None:
    """1000 rows, the last five at one watermark (the window's end after the first run)."""
    env.sf_execute("CREATE TABLE ITEMS (ID NUMBER(18,0) PRIMARY KEY, NAME VARCHAR, UPDATED_AT TIMESTAMP_NTZ)",
                   "INSERT INTO ITEMS SELECT SEQ8(), 'item ' || SEQ8(), DATEADD(second, LEAST(SEQ8(), 995), "
                   "'2024-01-01'::TIMESTAMP_NTZ) FROM TABLE(GENERATOR(ROWCOUNT => 1000))")


def _same(env) -> None:
    source = {int(r[0]): (r[1], str(r[2])) for r in env.sf_rows("SELECT ID, NAME, UPDATED_AT FROM ITEMS")}
    target = {int(r[0]): (r[1], str(r[2])) for r in env.pg_rows("SELECT id, name, updated_at FROM public.items")}
    assert set(source) - set(target) == set(), "source rows missing from the target"
    assert target == source


# ---------------------------------------------------------------------------------------------------------------
# 15cd0c9 held: a window at its lower end (nothing newer than the last window's end: five rows at lo) is not counted
# again. After the query that found hi (early: its rows are written with the plan; live: the chunk reads the
# window itself, as a Step Functions chunk step does), a boundary row is updated in place (same watermark, new name),
# another moves above lo, and a new row arrives at lo, which keeps the count equal. Whatever this run reports, the next
# window starts at lo again and the target ends equal to the source.
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("reads", ["early", "live"])
def test_held_a_window_at_its_lower_end_changed_after_its_one_query_loses_nothing(env, monkeypatch, reads) -> None:
    from lib.plan import probe

    _window_source(env)
    assert run(env.config(WINDOW, snapshot=False)).status == "completed"
    if reads == "live":
        monkeypatch.setattr(probe, "EARLY_BYTES", 0)  # the probe returns no rows: the chunk reads the window itself
    edge = "2024-01-01 00:16:35"  # 995 s: the last window's hi, where rows 995-999 are
    # after the one query: in the write of its rows with the plan (early), or once the chunk is claimed (live)
    changed = at_fault_point_once(monkeypatch, "during_read" if reads == "early" else "after_claim", lambda: env.sf_execute(
        "UPDATE ITEMS SET NAME = 'changed in place' WHERE ID = 997",
        "UPDATE ITEMS SET NAME = 'moved up', UPDATED_AT = '2024-02-01' WHERE ID = 998",
        f"INSERT INTO ITEMS VALUES (5000, 'arrived at lo', '{edge}')"))

    quiet = run(env.config(WINDOW, snapshot=False))

    assert changed and quiet.status == "completed", quiet.tables
    window = quiet.tables[0]["window"]
    assert quiet.tables[0]["source_count"] == 5, quiet.tables  # the probe's count of the five rows at lo
    after = run(env.config(WINDOW, snapshot=False))
    assert after.status == "completed" and after.tables[0]["reconcile"] == "match", after.tables
    _same(env)
    assert quiet.tables[0]["reconcile"] in ("match", "source_changed"), (window, quiet.tables)


# ---------------------------------------------------------------------------------------------------------------
# 01d5d9e held: the ORDER BY ... LIMIT 1 probe answers as EXISTS did at the range's ends (lo inclusive, hi exclusive)
# and walks the key's index also for a numeric(20,0) key (NUMBER(20,0)), on a table never analysed, for a range the
# planner must expect to be nearly the whole table, and for a unique index in descending order.
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("index", ["primary key", "unique desc"])
def test_held_the_new_key_range_probe_is_exact_at_its_ends_and_reads_the_index(env, index) -> None:
    import pyarrow as pa

    from lib.models import Bounds
    from lib.target import postgres as postgres_target
    from lib.typemap import Column

    with env.pg() as conn:
        conn.execute("CREATE TABLE public.items (id numeric(20,0) NOT NULL, name text)")
        conn.execute("ALTER TABLE public.items ADD PRIMARY KEY (id)" if index == "primary key"
                     else "CREATE UNIQUE INDEX ON public.items (id DESC)")
        conn.execute("INSERT INTO public.items SELECT g, repeat('x', 40) FROM generate_series(1, 200000) g")
    key = Column("ID", "NUMBER(20,0)", "numeric(20,0)", pa.decimal128(20, 0))
    ranges = {("1", None): True, ("150000", "400000"): True, ("200000", "200001"): True, ("200001", None): False,
              ("0", "1"): False, (None, "1"): False, (None, "2"): True, ("99999.5", "100000.5"): True}

    with env.pg() as conn:
        answers = {r: postgres_target.has_rows_in_range(conn, ("public", "items"), Bounds("range", "ID", "numeric", *r),
                                                        [key]) for r in ranges}
        scans = conn.execute("SELECT seq_scan, coalesce(seq_tup_read, 0), idx_scan, idx_tup_fetch "
                             "FROM pg_stat_xact_user_tables WHERE relid = 'public.items'::regclass").fetchone()

    assert answers == ranges
    assert scans[:2] == (0, 0) and scans[2] >= len(ranges) and scans[3] <= len(ranges), scans


# ---------------------------------------------------------------------------------------------------------------
# 532d04f held: a one-chunk live window keyed on two columns is no longer key-checked at planning; its stage check in
# Arrow refuses (a) a second row of the boundary row's key, the boundary row being equal to the target's (the upsert
# alone would let the twin update it silently), (b) a NULL in the key's second column (a nullable unique index, where
# ON CONFLICT never matches NULL). The target is left as it was.
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("bad", "message"), [
    ("(999, 'item 999', '2025-01-01')", "999, item 999 in 2 rows"),
    ("(5000, NULL, '2025-01-01'), (5001, 'new', '2025-01-01')", "1 row(s) of the chunk have a NULL in the key (id, name)"),
])
def test_held_a_small_live_window_keyed_on_two_columns_refuses_a_twin_of_its_boundary_row_and_a_null(
        env, bad, message) -> None:
    table = first_live_window(env, "CREATE TABLE public.items (id bigint, name text, updated_at timestamp, "
                              "UNIQUE (id, name))", ["ID", "NAME"])
    before = env.pg_rows("SELECT * FROM public.items ORDER BY id, name")

    env.sf_execute(f"INSERT INTO ITEMS VALUES {bad}")
    result = run(env.config(table, snapshot=False))

    state, error, _ = _table(env)
    assert result.status == "completed_with_errors" and state == "failed" and message in (error or ""), (state, error)
    notes = env.pg_value(f"SELECT plan_notes::text FROM {status.SCHEMA}.migration_table_status ORDER BY run_id DESC LIMIT 1")
    assert "the window is one chunk read live, whose stage is checked" in notes
    assert env.pg_rows("SELECT * FROM public.items ORDER BY id, name") == before


def test_held_a_key_of_one_instant_written_in_two_offsets_is_one_key(env) -> None:
    """TIMESTAMP_TZ keys are compared as instants, as PostgreSQL's timestamptz holds them: two source rows at the same
    instant in two offsets are one key, refused, not one row kept behind a `match`."""
    env.sf_execute("CREATE TABLE EVENTS (ID NUMBER(18,0), HAPPENED TIMESTAMP_TZ, NAME VARCHAR)",
                   "INSERT INTO EVENTS SELECT SEQ8(), DATEADD(second, SEQ8(), '2024-01-01 00:00:00 +00:00'::TIMESTAMP_TZ), "
                   "'event ' || SEQ8() FROM TABLE(GENERATOR(ROWCOUNT => 500))",
                   "INSERT INTO EVENTS VALUES (7000, '2024-03-01 00:00:00 +00:00'::TIMESTAMP_TZ, 'utc'), "
                   "(7000, '2024-03-01 05:00:00 +05:00'::TIMESTAMP_TZ, 'at +05:00')")
    with env.pg() as conn:
        conn.execute("CREATE TABLE public.events (id bigint, happened timestamptz, name text, PRIMARY KEY (id, happened))")
        conn.execute("INSERT INTO public.events VALUES (0, '2024-01-01 00:00:00+00', 'event 0')")

    result = run(env.config([{"source": "EVENTS", "merge_key": ["ID", "HAPPENED"], **NUMERIC}], snapshot=False))

    state, error, _ = _table(env)
    assert result.status == "completed_with_errors" and state == "failed", (state, error)
    assert "repeat" in error and "7000" in error, error
    assert env.pg_value("SELECT count(*) FROM public.events WHERE id = 7000") == 0
