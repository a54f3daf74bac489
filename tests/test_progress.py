"""Live progress: parseable lines off a terminal, bars on one."""

from __future__ import annotations

import io
import re

from rich.console import Console
from rich.progress import Progress

from lib.run.progress import TableProgress, render
from tests.helpers import cli


def test_off_a_terminal_progress_is_plain_parseable_lines(env) -> None:
    env.sf_execute("CREATE TABLE P AS SELECT SEQ8()::NUMBER(18,0) AS ID, 'x' || SEQ8() AS V "
                   "FROM TABLE(GENERATOR(ROWCOUNT => 150000))")
    path = env.write_config([{"source": "P", "chunking_columns": ["ID"], "chunking_column_types": ["numeric"]}],
                            defaults={"chunk_rows": 2000, "batch_size": 1000, "parallel_threads": 1})
    result = cli({**env.env, "MIGRATION_PROGRESS_SECONDS": "0.3"}, path)
    assert result.returncode == 0
    lines = re.findall(r"progress rows=(\d+) expected=(\d+) chunks=(\d+)/(\d+) rows_per_s=(\d+) .* table=\S+\.P", result.stderr)
    assert len(lines) >= 2, result.stderr[-2000:]
    copied = [int(rows) for rows, *_ in lines]
    assert copied == sorted(copied) and all(int(expected) == 150_000 for _, expected, *_ in lines)


def test_on_a_terminal_each_table_and_the_total_get_a_bar() -> None:
    out = io.StringIO()
    with Progress(console=Console(file=out, force_terminal=True, width=120)) as bars:
        tasks: dict = {}
        overall = bars.add_task("all tables", total=1, rate="")
        render(bars, tasks, overall, [TableProgress("DB.S.ORDERS", 1000, 250, 1, 4),
                                      TableProgress("DB.S.EVENTS", 3000, 3000, 6, 6)], {})
        assert bars.tasks[tasks["DB.S.ORDERS"]].percentage == 25.0
        assert bars.tasks[tasks["DB.S.EVENTS"]].finished
        assert bars.tasks[overall].completed == 3250 and bars.tasks[overall].total == 4000
