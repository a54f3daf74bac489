"""The wire: every Arrow batch of a chunk is normalised to the exact types its PostgreSQL columns take,
and its values are checked where PostgreSQL would refuse them, before the binary COPY encoding.

- Types: the connector may hand over batches of one chunk with different types (timestamp units chosen
  per batch, NULL-typed columns, decimals of another scale, integers of another width). Each column is
  cast to its wire type, so any value PostgreSQL can hold arrives exactly.
- Ranges: a timestamp before 4714-11-24 BC or a date after 5874897-12-31 has no PostgreSQL value. Such
  a value fails the chunk with the column, the value and the row's key, as a fatal error.
- NUL bytes: PostgreSQL text cannot hold `\\0` (nor jsonb the escape `\\u0000`). Per table,
  `nul_bytes: fail` (the default) fails the chunk naming the column and row; `strip` removes them;
  `replace:<char>` puts that character instead. Changed values are counted per chunk and column.
"""

from __future__ import annotations

import json
from collections import Counter

import pgpq
import pgpq.encoders as pgpq_encoders
import pgpq.schema as pgpq_schema
import pyarrow as pa
import pyarrow.compute as pc

from lib.errors import FatalError
from lib.typemap import Column

# PostgreSQL's limits, in Arrow's units (since 1970-01-01): timestamps from Julian day 0
# (4714-11-24 BC) on; dates from Julian day 0 up to 5874897-12-31. A timestamp[us] cannot pass the upper
# limit of PostgreSQL's timestamps (294276 AD): int64 microseconds end earlier.
PG_MIN_MICROSECONDS = -210_866_803_200_000_000
PG_MIN_DAYS, PG_MAX_DAYS = -2_440_588, 2_145_042_905

# A JSON \u0000 escape not preceded by an escaping backslash (jsonb refuses it), with what precedes it.
_JSON_NUL = r"(^|[^\\])((?:\\\\)*)\\u0000"


def target_column_name(source_name: str) -> str:
    """PostgreSQL column name: Snowflake's upper-case default becomes lower case, anything else
    (mixed case, spaces, quotes) keeps its exact spelling."""
    return source_name.lower() if source_name == source_name.upper() else source_name


def wire_schema(columns: list[Column]) -> pa.Schema:
    return pa.schema([pa.field(target_column_name(c.name), c.wire) for c in columns])


class Wire:
    """The wire format of one chunk: its schema, its encoder, and the normalisation of each batch."""

    def __init__(self, columns: list[Column], key: str | None = None, nul_bytes: str = "fail") -> None:
        self.columns = columns
        self.schema = wire_schema(columns)
        names = [c.name for c in columns]
        self._key = names.index(key) if key in names else 0  # the column that names a row in messages
        self._nul = nul_bytes
        self.nul_values_changed: Counter[str] = Counter()

    def encoder(self) -> pgpq.ArrowToPostgresBinaryEncoder:
        encoders = {}
        for field, column in zip(self.schema, self.columns, strict=True):
            if column.is_json:
                encoders[field.name] = pgpq_encoders.StringEncoderBuilder.new_with_output(field, pgpq_schema.Jsonb())
            else:
                encoders[field.name] = pgpq.ArrowToPostgresBinaryEncoder.infer_encoder(field)
        return pgpq.ArrowToPostgresBinaryEncoder.new_with_encoders(self.schema, encoders)

    def normalize(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """The batch in the wire schema; raises FatalError naming column, value and row for a value
        PostgreSQL cannot hold."""
        if batch.num_columns != len(self.columns):
            raise FatalError(f"a batch has {batch.num_columns} columns, the chunk's query {len(self.columns)}")
        arrays = []
        for i, (field, column) in enumerate(zip(self.schema, self.columns, strict=True)):
            array = self._cast(batch, i, field.type)
            self._check_range(batch, i, array)
            if pa.types.is_string(field.type) or pa.types.is_large_string(field.type):
                array = self._nuls(batch, i, array, column)
            arrays.append(array)
        return pa.RecordBatch.from_arrays(arrays, schema=self.schema)

    def notes(self) -> list[str]:
        action = "removed" if self._nul == "strip" else f"replaced by {self._nul[len('replace:'):]!r}"
        return [f"{count} value(s) of column {name} had NUL bytes, {action} (nul_bytes {self._nul})"
                for name, count in sorted(self.nul_values_changed.items())]

    # --- each step -------------------------------------------------------------------------------
    def _cast(self, batch: pa.RecordBatch, i: int, wire: pa.DataType) -> pa.Array:
        array = batch.column(i)
        if array.type == wire:
            return array
        if pa.types.is_timestamp(array.type) and pa.types.is_date32(wire):
            self._check_no_time_of_day(batch, i, array)
        # truncating time is allowed for nanoseconds (PostgreSQL keeps microseconds, as documented), not days
        options = pc.CastOptions(target_type=wire, allow_time_truncate=True)
        try:
            return pc.cast(array, options=options)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            row = _first_failing_row(array, options)
            raise self._does_not_fit(batch, i, row, f"cannot become {wire}: {exc}") from None

    def _check_no_time_of_day(self, batch: pa.RecordBatch, i: int, array: pa.Array) -> None:
        """A timestamp into a `date` column: only a value at midnight (UTC) fits; any other would lose its time."""
        midnight = pc.cast(pc.cast(array, pa.date32()), array.type)
        first = _first_true(pc.not_equal(midnight, array))
        if first is not None:
            raise self._does_not_fit(batch, i, first, "has a time of day, which a date column would drop: widen the "
                                                      "column to timestamp, or load the value into one")

    def _check_range(self, batch: pa.RecordBatch, i: int, array: pa.Array) -> None:
        if pa.types.is_timestamp(array.type) and array.type.unit != "ns":  # int64 nanoseconds start in 1677
            per_microsecond = {"s": 1_000_000, "ms": 1_000, "us": 1}[array.type.unit]
            bad = pc.less(pc.cast(array, pa.int64()), PG_MIN_MICROSECONDS // per_microsecond)
        elif pa.types.is_date32(array.type):
            days = pc.cast(array, pa.int32())
            bad = pc.or_(pc.less(days, PG_MIN_DAYS), pc.greater(days, PG_MAX_DAYS))
        else:
            return
        first = _first_true(bad)
        if first is not None:
            raise self._does_not_fit(batch, i, first, "is outside PostgreSQL's range (4714-11-24 BC to 294276 AD for "
                                                      "timestamps, to 5874897-12-31 for dates)")

    def _nuls(self, batch: pa.RecordBatch, i: int, array: pa.Array, column: Column) -> pa.Array:
        if not pc.any(pc.match_substring(array, "\\u0000" if column.is_json else "\x00")).as_py():
            return array  # the usual case, at the cost of one plain substring search
        has = pc.match_substring_regex(array, _JSON_NUL) if column.is_json else pc.match_substring(array, "\x00")
        found = pc.sum(pc.cast(has, pa.int64())).as_py() or 0
        if not found:
            return array
        if self._nul == "fail":
            what = "the escape \\u0000, which jsonb cannot store" if column.is_json else "a NUL byte, which text cannot store"
            raise self._does_not_fit(batch, i, _first_true(has), f"holds {what}; set nul_bytes to strip or "
                                                                 "replace:<char> for this table to let it through")
        self.nul_values_changed[column.name] += found
        replacement = "" if self._nul == "strip" else self._nul[len("replace:"):]
        if not column.is_json:
            return pc.replace_substring(array, "\x00", replacement)
        escaped = json.dumps(replacement)[1:-1].replace("\\", "\\\\")
        while pc.any(pc.match_substring_regex(array, _JSON_NUL)).as_py():  # adjacent escapes take more passes
            array = pc.replace_substring_regex(array, _JSON_NUL, r"\1\2" + escaped)
        return array

    def _does_not_fit(self, batch: pa.RecordBatch, i: int, row: int | None, why: str) -> FatalError:
        column = self.columns[i]
        where = ""
        if row is not None:
            value = batch.column(i)[row]
            key = self.columns[self._key].name
            where = f" the value {_show(value)} in the row with {key} = {_show(batch.column(self._key)[row])}"
        return FatalError(f"value does not fit the target column type: column {column.name} ({column.pg_type}):{where} {why}")


def _first_true(mask: pa.Array) -> int | None:
    index = pc.index(pc.fill_null(mask, False), True).as_py()
    return None if index < 0 else int(index)


def _first_failing_row(array: pa.Array, options: pc.CastOptions) -> int | None:
    """The first row whose value the cast refuses (bisecting the array), or None."""
    lo, hi = 0, len(array)
    if hi == 0:
        return None
    while hi - lo > 1:
        mid = (lo + hi) // 2
        try:
            pc.cast(array.slice(lo, mid - lo), options=options)
            lo = mid
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            hi = mid
    try:
        pc.cast(array.slice(lo, 1), options=options)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return lo
    return None


def _show(scalar: pa.Scalar) -> str:
    """A value for a message: numbers and times as written, text and bytes quoted, long ones cut."""
    try:
        value = scalar.as_py()
        text = repr(value) if isinstance(value, (str, bytes, dict, list)) else str(value)
    except (ValueError, OverflowError, pa.ArrowInvalid):  # a date or timestamp no Python datetime can hold
        if pa.types.is_timestamp(scalar.type):
            text = pc.strftime(pa.array([scalar]), "%Y-%m-%d %H:%M:%S").to_pylist()[0]
        else:
            days = pc.cast(pa.array([scalar]), pa.int32()).to_pylist()[0]
            text = f"day {days:,} after 1970-01-01 (about the year {1970 + days / 365.2425:,.0f})"
    return text if len(text) <= 80 else text[:77] + "..."
