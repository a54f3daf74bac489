"""Read ahead: pull the next item of an iterator in a background thread while the caller works on
the current one (reading the next Arrow batch overlaps writing the previous one).

The consumer never waits blindly: while no item arrives it checks `abort` (set when the chunk's lease
is given up), so a read that never answers cannot hold the worker.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

T = TypeVar("T")
_DONE = object()
POLL_SECONDS = 0.2


class Prefetcher(Iterator[T]):
    def __init__(self, source: Iterator[T], depth: int = 1, abort: threading.Event | None = None,
                 aborted: Callable[[], BaseException] | None = None) -> None:
        self._source = source
        self._queue: queue.Queue[object] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._abort = abort
        self._aborted = aborted or (lambda: RuntimeError("read ahead aborted"))
        self._thread = threading.Thread(target=self._produce, name="prefetch", daemon=True)
        self._thread.start()

    def _produce(self) -> None:
        try:
            for item in self._source:
                if not self._put(item):
                    return
                del item  # the queue holds it now; reading the next must not keep this one alive too
            self._put(_DONE)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            self._put(exc)
        finally:
            close = getattr(self._source, "close", None)
            if close:
                close()  # the producing thread owns the generator: only it may close it

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __next__(self) -> T:
        while True:
            if self._abort is not None and self._abort.is_set():
                raise self._aborted()
            try:
                item = self._queue.get(timeout=POLL_SECONDS)
                break
            except queue.Empty:
                continue
        if item is _DONE:
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        return item  # type: ignore[return-value]

    def close(self, wait_seconds: float = 5.0) -> bool:
        """Stop reading ahead and wait a little for the reader to let go. Returns False if it is still
        stuck (a read that never answers): it is a daemon thread and ends when its read does."""
        self._stop.set()
        self._thread.join(wait_seconds)
        return not self._thread.is_alive()
