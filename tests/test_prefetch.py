"""Read-ahead keeps order, passes errors through, and lets go of its source when abandoned."""

from __future__ import annotations

import threading
import time

import pytest

from lib.source.prefetch import Prefetcher


def test_items_arrive_in_order_while_the_next_is_read_ahead() -> None:
    produced: list[int] = []

    def source():
        for i in range(5):
            produced.append(i)
            yield i

    ahead = Prefetcher(source())
    assert next(ahead) == 0
    time.sleep(0.1)
    assert produced[:3] == [0, 1, 2]  # item 1 queued, item 2 read and waiting: reading overlapped
    assert list(ahead) == [1, 2, 3, 4]


def test_an_error_in_the_source_is_raised_to_the_consumer() -> None:
    def source():
        yield 1
        raise ConnectionResetError("snowflake went away")

    ahead = Prefetcher(source())
    assert next(ahead) == 1
    with pytest.raises(ConnectionResetError):
        next(ahead)


def test_closing_early_stops_the_reader_and_closes_the_source() -> None:
    closed = threading.Event()

    def source():
        try:
            yield from range(1_000_000)
        finally:
            closed.set()

    ahead = Prefetcher(source())
    next(ahead)
    ahead.close()
    assert closed.wait(2)
