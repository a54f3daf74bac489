"""Every SQL statement in the README's progress section runs against a real ledger."""

from __future__ import annotations

import re
from pathlib import Path

from lib.run.orchestrator import run

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_progress_queries_run_against_a_real_ledger(env) -> None:
    env.sf_execute("CREATE TABLE Q AS SELECT SEQ8()::NUMBER(18,0) AS ID FROM TABLE(GENERATOR(ROWCOUNT => 100))")
    run(env.config([{"source": "Q"}]))
    blocks = re.findall(r"```sql\n(.*?)```", README.read_text(), flags=re.S)
    code = "\n".join(line for block in blocks for line in block.splitlines() if not line.lstrip().startswith("--"))
    statements = [s.strip() for s in code.split(";") if s.strip()]
    assert len(statements) >= 8
    with env.pg() as conn:
        for statement in statements:
            conn.execute(statement).fetchall()
