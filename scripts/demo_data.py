"""Demo data in the Snowflake stand-in: deterministic, > 1,000,000 rows, the shapes that break tools.

- ORDERS: sparse integer IDs (1..1,000 and 1,001..1,000,000) plus one dense region
  (5,000,001..5,400,000): the shape that made `(max-min)/n` chunking lose rows.
- EVENTS: date-keyed, one very heavy day (2024-06-15), and some NULL timestamps.
- "AllTypes": every mapped type with NULLs, VARIANT/ARRAY/OBJECT, unicode, empty strings and
  strings with tabs, newlines, quotes and backslashes, under a quoted mixed-case name.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

DATABASE = "DEMO"
SCHEMA = "PUBLIC"

# Strings that break text COPY, CSV and naive escaping; cycled through "AllTypes".NAME.
TRICKY_STRINGS = [
    "", "tab\there", "new\nline", 'double "quotes"', "single 'quotes'", "back\\slash", "crlf\r\nend",
    "unicode ✓ é 漢字 🚀", "\\N", "NULL", ",comma,", "trailing space ",
]

ORDERS_SQL = """
CREATE OR REPLACE TABLE ORDERS AS
SELECT id::NUMBER(38,0) AS id, MOD(id * 7919, 50000)::NUMBER(9,0) AS customer_id,
       (MOD(id * 31, 100000) / 100.0)::NUMBER(12,2) AS amount,
       CASE MOD(id, 4) WHEN 0 THEN 'new' WHEN 1 THEN 'paid' WHEN 2 THEN 'shipped' ELSE 'returned' END AS status,
       DATEADD(second, MOD(id * 13, 31536000), '2023-01-01'::TIMESTAMP_NTZ) AS created_at
FROM (
    SELECT 1 + 2 * SEQ8() AS id FROM TABLE(GENERATOR(ROWCOUNT => 500))
    UNION ALL SELECT 1001 + 199 * SEQ8() FROM TABLE(GENERATOR(ROWCOUNT => 5000))
    UNION ALL SELECT 5000001 + SEQ8() FROM TABLE(GENERATOR(ROWCOUNT => 400000))
)
"""

EVENTS_SQL = """
CREATE OR REPLACE TABLE EVENTS AS
SELECT n::NUMBER(18,0) AS event_id,
       CASE WHEN MOD(n, 5000) = 0 THEN NULL
            WHEN n < 150000 THEN DATEADD(second, MOD(n * 7, 86400), '2024-06-15'::TIMESTAMP_NTZ)
            ELSE DATEADD(second, MOD(n * 7, 86400), DATEADD(day, MOD(n, 366), '2024-01-01'::TIMESTAMP_NTZ))
       END AS event_ts,
       MOD(n * 104729, 100000)::NUMBER(9,0) AS user_id,
       CASE MOD(n, 3) WHEN 0 THEN 'click' WHEN 1 THEN 'view' ELSE 'purchase' END AS kind,
       PARSE_JSON('{"n": ' || n || ', "tags": ["a", "b"], "ok": ' || IFF(MOD(n, 2) = 0, 'true', 'false') || '}') AS payload
FROM (SELECT SEQ8() AS n FROM TABLE(GENERATOR(ROWCOUNT => 600000)))
"""

ALL_TYPES_DDL = """
CREATE OR REPLACE TABLE "AllTypes" (
    ID NUMBER(38,0), SMALL_N NUMBER(4,0), INT_N NUMBER(9,0), BIG_N NUMBER(18,0), WIDE_N NUMBER(30,0),
    AMOUNT NUMBER(12,2), RATIO FLOAT, NAME VARCHAR, CODE VARCHAR(10), FLAG BOOLEAN, DAY DATE,
    CREATED TIMESTAMP_NTZ, CREATED_TZ TIMESTAMP_TZ, DOC VARIANT, TAGS ARRAY, ATTRS OBJECT, BLOB BINARY,
    "mixedCase Col" VARCHAR
)
"""


def _tricky_case() -> str:
    arms = " ".join(
        f"WHEN {i} THEN {_sql_string(s)}" for i, s in enumerate(TRICKY_STRINGS)
    )
    return f"CASE MOD(n, {len(TRICKY_STRINGS)}) {arms} END"


def _sql_string(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    return f"'{escaped}'"


def all_types_insert(rows: int) -> str:
    def nullable(expr: str, k: int) -> str:
        return f"IFF(MOD(n, {k}) = 0, NULL, {expr})"

    doc = nullable("""PARSE_JSON('{"id": ' || n || ', "name": "caf\\u00e9", "nested": {"x": [1, 2.5, null]}}')""", 53)

    return f"""
INSERT INTO "AllTypes"
SELECT n,
       {nullable("MOD(n, 9999) - 4999", 7)},
       {nullable("MOD(n * 7919, 1999999999) - 999999999", 11)},
       {nullable("n * 1000000007 - 500000000000", 13)},
       {nullable("'123456789012345678901234' || LPAD(MOD(n, 1000000)::VARCHAR, 6, '0')", 17)}::NUMBER(30,0),
       {nullable("(MOD(n * 31, 2000000) - 1000000) / 100.0", 19)}::NUMBER(12,2),
       {nullable("n / 7.0", 23)}::FLOAT,
       {nullable(_tricky_case(), 29)},
       {nullable("'C' || MOD(n, 100000)", 31)},
       {nullable("MOD(n, 2) = 0", 37)},
       {nullable("DATEADD(day, MOD(n, 20000), '1990-01-01'::DATE)", 41)},
       {nullable("DATEADD(second, n * 17, '2020-01-01 00:00:00'::TIMESTAMP_NTZ)", 43)},
       {nullable("DATEADD(second, n * 19, '2021-06-01 12:00:00'::TIMESTAMP_TZ)", 47)},
       {doc},
       {nullable("ARRAY_CONSTRUCT(n, n + 1)", 59)},
       {nullable("OBJECT_CONSTRUCT('k', n, 's', 'v')", 61)},
       {nullable("MD5_BINARY(n::VARCHAR)", 67)},
       {nullable("'Mixed ' || n", 71)}
FROM (SELECT SEQ8() AS n FROM TABLE(GENERATOR(ROWCOUNT => {rows})))
"""


def load_demo(conn: Any, database: str = DATABASE, schema: str = SCHEMA, all_types_rows: int = 100_000) -> Iterator[str]:
    cur = conn.cursor()
    cur.execute(f"CREATE DATABASE IF NOT EXISTS {database}")
    cur.execute(f"CREATE SCHEMA IF NOT EXISTS {database}.{schema}")
    cur.execute(f"USE SCHEMA {database}.{schema}")
    for name, statements in (
        ("ORDERS", [ORDERS_SQL]),
        ("EVENTS", [EVENTS_SQL]),
        ('"AllTypes"', [ALL_TYPES_DDL, all_types_insert(all_types_rows)]),
    ):
        for statement in statements:
            cur.execute(statement)
        cur.execute(f"SELECT COUNT(*) FROM {name}")
        yield f"{database}.{schema}.{name}: {cur.fetchone()[0]:,} rows"
