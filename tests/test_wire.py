"""The wire (lib/wire.py): batches of one chunk with different Arrow types all reach the same wire types;
values PostgreSQL cannot hold fail with column, value and row; NUL bytes follow the table's policy; and
each kind of read or encoding error is classified by what it is."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal

import pyarrow as pa
import pytest
from psycopg import errors as pg_errors

from lib.errors import FatalError, classify, is_transient
from lib.target.wire import Wire
from lib.typemap import map_column

COLUMNS = [map_column("ID", "NUMBER", 18, 0), map_column("TS", "TIMESTAMP_NTZ"), map_column("DAY", "DATE"),
           map_column("AMOUNT", "NUMBER", 38, 10), map_column("NOTE", "VARCHAR"), map_column("DOC", "VARIANT")]


def _batch(ts: pa.Array, day: pa.Array, amount: pa.Array, note: pa.Array | None = None,
           doc: pa.Array | None = None, ids: list[int] | None = None) -> pa.RecordBatch:
    n = len(ts)
    return pa.record_batch([pa.array(ids or list(range(n)), pa.int8() if n < 100 else pa.int64()), ts, day, amount,
                            note if note is not None else pa.nulls(n, pa.string()),
                            doc if doc is not None else pa.nulls(n)],
                           names=["ID", "TS", "DAY", "AMOUNT", "NOTE", "DOC"])


def test_batches_of_one_chunk_with_different_types_reach_the_same_wire_types() -> None:
    wire = Wire(COLUMNS)
    first = _batch(pa.array([datetime(2024, 1, 1, 12, 0, 0, 123456)], pa.timestamp("ns")),
                   pa.array([date(2024, 1, 1)]), pa.array([Decimal("1.5")], pa.decimal128(5, 1)))
    second = _batch(pa.array([datetime(1, 1, 1), None], pa.timestamp("us")), pa.nulls(2),  # NULL-typed column
                    pa.array([Decimal("12345678901234567890123456.1234567890"), None], pa.decimal128(38, 10)))
    normalized = [wire.normalize(b) for b in (first, second)]
    assert normalized[0].schema == normalized[1].schema == wire.schema
    assert normalized[1].column(3)[0].as_py() == Decimal("12345678901234567890123456.1234567890")
    assert normalized[1].column(1)[0].as_py() == datetime(1, 1, 1)


def test_a_timestamp_or_date_postgres_cannot_hold_fails_with_column_value_and_row() -> None:
    wire = Wire(COLUMNS, key="ID")
    ancient = pa.array([0, -360_000_000_000], pa.timestamp("s"))  # about 9500 BC
    with pytest.raises(FatalError) as caught:
        wire.normalize(_batch(ancient, pa.nulls(2, pa.date32()), pa.nulls(2, pa.decimal128(38, 10)), ids=[7, 8]))
    message = str(caught.value)
    assert "column TS (timestamp)" in message and "row with ID = 8" in message and "outside PostgreSQL's range" in message
    far = pa.array([0, 2_146_000_000], pa.date32())  # year 5.877 million
    with pytest.raises(FatalError, match=r"column DAY .* row with ID = 3 .*outside PostgreSQL.s range"):
        wire.normalize(_batch(pa.nulls(2, pa.timestamp("us")), far, pa.nulls(2, pa.decimal128(38, 10)), ids=[2, 3]))


def test_a_value_too_big_for_an_existing_numeric_column_names_column_value_and_row() -> None:
    narrow = [*COLUMNS[:3], map_column("AMOUNT", "NUMBER", 38, 10, target_type="numeric(5,2)"), *COLUMNS[4:]]
    batch = _batch(pa.nulls(3, pa.timestamp("us")), pa.nulls(3, pa.date32()),
                   pa.array([Decimal("1.5"), Decimal("123456.25"), None], pa.decimal128(38, 10)), ids=[10, 11, 12])
    with pytest.raises(FatalError) as caught:
        Wire(narrow, key="ID").normalize(batch)
    assert "value does not fit the target column type: column AMOUNT (numeric(5,2)): the value 123456.2500000000 " \
           "in the row with ID = 11" in str(caught.value)


def _texts(note: list[str | None], doc: list[str | None]) -> pa.RecordBatch:
    n = len(note)
    return _batch(pa.nulls(n, pa.timestamp("us")), pa.nulls(n, pa.date32()), pa.nulls(n, pa.decimal128(38, 10)),
                  pa.array(note, pa.string()), pa.array(doc, pa.string()), ids=list(range(100, 100 + n)))


NOTES = ["plain", "a\x00b\x00", None, "\x00"]
DOCS = ['{"k": "x\\u0000y"}', '{"path": "C:\\\\u0000dir"}', None, '{"a": "\\u0000\\u0000"}']


def test_nul_bytes_fail_by_default_naming_column_and_row() -> None:
    with pytest.raises(FatalError) as caught:
        Wire(COLUMNS, key="ID").normalize(_texts(NOTES, [None] * 4))
    assert "column NOTE (text): the value 'a\\x00b\\x00' in the row with ID = 101 holds a NUL byte" in str(caught.value)
    assert "set nul_bytes to strip or replace:<char>" in str(caught.value)
    with pytest.raises(FatalError, match=r"column DOC .* row with ID = 100 holds the escape"):
        Wire(COLUMNS, key="ID").normalize(_texts([None] * 4, DOCS))


def test_nul_bytes_are_stripped_or_replaced_and_counted_in_text_and_json() -> None:
    stripped = Wire(COLUMNS, nul_bytes="strip")
    batch = stripped.normalize(_texts(NOTES, DOCS))
    assert batch.column(4).to_pylist() == ["plain", "ab", None, ""]
    assert batch.column(5).to_pylist() == ['{"k": "xy"}', '{"path": "C:\\\\u0000dir"}', None, '{"a": ""}']
    assert stripped.nul_values_changed == {"NOTE": 2, "DOC": 2}
    assert stripped.notes() == ["2 value(s) of column DOC had NUL bytes, removed (nul_bytes strip)",
                                "2 value(s) of column NOTE had NUL bytes, removed (nul_bytes strip)"]
    replaced = Wire(COLUMNS, nul_bytes="replace:?").normalize(_texts(NOTES, DOCS))
    assert replaced.column(4).to_pylist() == ["plain", "a?b?", None, "?"]
    assert replaced.column(5).to_pylist()[3] == '{"a": "??"}'


def test_each_kind_of_read_or_encoding_error_is_classified_by_what_it_is(env) -> None:
    def schema_mismatch() -> None:
        pa.Table.from_batches([pa.record_batch([pa.array([1], pa.timestamp("us"))], names=["TS"]),
                               pa.record_batch([pa.array([1], pa.timestamp("ns"))], names=["TS"])])

    cases: list[tuple[BaseException, str, str | None]] = []
    for raise_it, needle in ((schema_mismatch, "could not be read or converted"),
                             (lambda: (_ for _ in ()).throw(MemoryError()), "out of memory")):
        try:
            raise_it()
        except BaseException as exc:  # noqa: BLE001 - what we classify
            cases.append((exc, needle, "does not fit"))
    with env.pg() as conn:
        conn.execute("CREATE TABLE nul_target (note text)")
        encoder = Wire([map_column("NOTE", "VARCHAR")]).encoder()
        try:  # the bytes as encoded without the wire's NUL check: what PostgreSQL itself answers
            with conn.transaction(), conn.cursor() as cur, cur.copy("COPY nul_target FROM STDIN (FORMAT BINARY)") as copy:
                copy.write(encoder.write_header())
                copy.write(encoder.write_batch(pa.record_batch([pa.array(["a\x00b"])], names=["note"])))
                copy.write(encoder.finish())
        except pg_errors.CharacterNotInRepertoire as exc:
            cases.append((exc, "does not fit the target column type", None))
            assert "set nul_bytes" in str(classify(exc))
    assert len(cases) == 3
    for exc, needle, absent in cases:
        error = classify(exc, "reading T chunk 3")
        assert isinstance(error, FatalError) and not is_transient(exc), exc
        assert needle in str(error) and "reading T chunk 3" in str(error)
        if absent:
            assert absent not in str(error)
