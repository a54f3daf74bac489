"""The read path's own promises: its cursor is closed however the read ends."""

from __future__ import annotations

import pytest
from snowflake.connector.cursor import SnowflakeCursor

from lib.errors import FatalError
from lib.models import Bounds
from lib.snowflake_source import SnowflakeSource
from lib.typemap import columns_from_description


def test_the_read_cursor_is_closed_when_the_consumer_stops_early_or_the_read_fails(env, monkeypatch) -> None:
    env.sf_execute("CREATE TABLE R AS SELECT SEQ8()::NUMBER(18,0) AS ID FROM TABLE(GENERATOR(ROWCOUNT => 1000))")
    config = env.config([{"source": "R"}])
    closed: list[SnowflakeCursor] = []
    real_close = SnowflakeCursor.close

    def recording_close(self: SnowflakeCursor) -> bool | None:
        if self not in closed:
            closed.append(self)
        return real_close(self)

    monkeypatch.setattr(SnowflakeCursor, "close", recording_close)
    source = SnowflakeSource(config.snowflake_connect_args(), config.retry_policy())
    table = (env.sf_database, "PUBLIC", "R")
    columns = columns_from_description(source.describe(table))
    try:
        before = len(closed)
        reader = source.read(table, columns, Bounds("all"), None, 100)
        assert next(reader).num_rows == 100
        reader.close()  # the consumer gave up after one batch (GeneratorExit inside the read)
        assert len(closed) == before + 1

        with pytest.raises(FatalError, match="NO_SUCH_COLUMN"):
            list(source.read(table, columns, Bounds("all"), "NO_SUCH_COLUMN > 1", 100))
        assert len(closed) == before + 2
    finally:
        source.close()
