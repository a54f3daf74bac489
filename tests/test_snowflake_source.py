"""The read path's own promises: its cursor is closed however the read ends."""

from __future__ import annotations

from typing import Any

import pytest

from lib.errors import FatalError
from lib.models import Bounds
from lib.source.snowflake import SnowflakeSource
from lib.typemap import columns_from_description


def test_the_read_cursor_is_closed_when_the_consumer_stops_early_or_the_read_fails(env) -> None:
    env.sf_execute("CREATE TABLE R AS SELECT SEQ8()::NUMBER(18,0) AS ID FROM TABLE(GENERATOR(ROWCOUNT => 1000))")
    config = env.config([{"source": "R"}])
    source = SnowflakeSource(config.snowflake_connect_args(), config.retry_policy())
    table = (env.sf_database, "PUBLIC", "R")
    columns = columns_from_description(source.describe(table))
    conn = source.connection()
    opened: list[Any] = []
    real_cursor = conn.cursor

    def tracked_cursor(*args: Any, **kwargs: Any) -> Any:
        cursor = real_cursor(*args, **kwargs)
        opened.append(cursor)
        return cursor

    conn.cursor = tracked_cursor  # this connection only
    try:
        reader = source.read(table, columns, Bounds("all"), None, 100)
        assert next(reader).num_rows == 100
        reader.close()  # the consumer gave up after one batch (GeneratorExit inside the read)
        assert len(opened) == 1 and opened[0].is_closed()

        with pytest.raises(FatalError, match="NO_SUCH_COLUMN"):
            list(source.read(table, columns, Bounds("all"), "NO_SUCH_COLUMN > 1", 100))
        assert len(opened) == 2 and opened[1].is_closed()
        assert not conn.is_closed()
    finally:
        source.close()
