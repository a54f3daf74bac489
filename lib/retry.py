"""Capped exponential backoff with jitter, for statements that are safe to repeat."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from lib.errors import TransientError, classify
from lib.log import get_logger

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5
    base_seconds: float = 1.0
    max_seconds: float = 30.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based): full jitter in [d/2, d]."""
        ceiling = min(self.max_seconds, self.base_seconds * 2 ** (attempt - 1))
        return random.uniform(ceiling / 2, ceiling)


def call_with_retry(fn: Callable[[], T], policy: RetryPolicy, what: str,
                    on_retry: Callable[[], None] | None = None) -> T:
    """Run `fn`; on a transient error reconnect (`on_retry`) and try again, at most `policy.attempts` times."""
    attempt = 0
    while True:
        attempt += 1
        try:
            return fn()
        except Exception as exc:
            error = classify(exc, what)
            if not isinstance(error, TransientError) or attempt >= policy.attempts:
                raise error from exc
            wait = policy.delay(attempt)
            get_logger().warning("%s (attempt %d of %d, retrying in %.1fs)", error, attempt, policy.attempts, wait)
            if on_retry:
                on_retry()
            time.sleep(wait)
