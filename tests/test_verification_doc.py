"""docs/verification.md: every SQL block runs in the target as written, finds the altered chunk, and computes
exactly the checksum verify stored for that chunk (the hand-written canonical form is the engine's)."""

from __future__ import annotations

import re
from pathlib import Path

from lib import ledger as status
from tests.helpers import cli

DOC = Path(__file__).resolve().parent.parent / "docs" / "verification.md"


def _statements() -> dict[str, str]:
    out = {}
    for block in re.findall(r"^```sql\n(.*?)^```", DOC.read_text(), re.DOTALL | re.MULTILINE):
        label = re.match(r"--\s*(V\d+):", block.strip()).group(1)
        out[label] = "\n".join(line for line in block.splitlines() if not line.lstrip().startswith("--")).strip().rstrip(";")
    return out


def test_the_investigation_sql_finds_the_chunk_and_recomputes_its_checksum(env) -> None:
    sql = _statements()
    assert list(sql) == ["V1", "V2", "V3", "V4"]
    env.sf_execute("CREATE TABLE ORDERS (ID NUMBER(18,0), AMOUNT NUMBER(12,2), NOTE VARCHAR, CREATED TIMESTAMP_NTZ)",
                   "INSERT INTO ORDERS SELECT SEQ8(), (SEQ8() % 1000) / 7, IFF(SEQ8() % 5 = 0, NULL, 'note | ' || SEQ8()), "
                   "DATEADD(second, SEQ8(), '2024-01-01'::TIMESTAMP_NTZ) FROM TABLE(GENERATOR(ROWCOUNT => 4000))")
    path = env.write_config([{"source": "ORDERS", "chunking_columns": ["ID"], "chunking_column_types": ["numeric"]}],
                            defaults={"chunk_rows": 1000})
    assert cli(env.env, path).returncode == 0
    with env.pg() as conn:
        conn.execute("UPDATE public.orders SET amount = amount + 0.01 WHERE id = 1500")
    assert cli(env.env, path, "verify").returncode == 1

    differing = env.pg_rows(sql["V1"])
    assert [(r[1].split(".")[-1], r[4]) for r in differing] == [("ORDERS", "differ")]
    bounds = env.pg_rows(sql["V2"])
    assert len(bounds) == 1 and (bounds[0][3]["lo"], bounds[0][3]["hi"]) == ("1000", "2000"), bounds
    rows = env.pg_rows(sql["V3"])
    assert len(rows) == 1000 and rows[0][1] == "1000|0.00|~|1704068200000000"
    assert rows[1][1] == "1001|0.14|11:note | 1001|1704068201000000"  # the "|" inside the text cannot shift a field
    checksum = env.pg_rows(sql["V4"])[0]
    stored = env.pg_rows(f"SELECT target_rows, target_sum1, target_sum2 FROM {status.SCHEMA}.chunk_checksums "
                         "WHERE result = 'differ'")[0]
    assert tuple(int(v) for v in checksum) == tuple(int(v) for v in stored)
