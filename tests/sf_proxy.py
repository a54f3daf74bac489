"""The relay of scripts/snowflake_relay.py as a fixture: a Snowflake that fails, hangs or answers slowly."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from scripts.snowflake_relay import QUERY_PATH, TRUNCATED, SnowflakeProxy

__all__ = ["QUERY_PATH", "TRUNCATED", "SnowflakeProxy", "sf_proxy"]


@pytest.fixture
def sf_proxy(stack) -> Iterator[SnowflakeProxy]:
    proxy = SnowflakeProxy(f"http://127.0.0.1:{stack.snowflake_env()['SNOWFLAKE_PORT']}")
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    yield proxy
    proxy.released.set()
    proxy.shutdown()
    proxy.server_close()
    thread.join(timeout=10)
