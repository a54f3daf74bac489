"""What a worker thread holds in memory, and how many threads (and how large whole-result chunks) fit.

A thread holds, at its peak:
- its source read. With `whole` results (the source answers a chunk's query in one response, as the
  local stand-in does) that is the whole chunk, about WHOLE_RESULT_COPIES times its Arrow bytes while
  the response is decoded (HTTP body, base64 text, decoded IPC stream, converted table; measured by
  `make bench`). With `streamed` results (real Snowflake: result chunks of at most
  CLIENT_RESULT_CHUNK_SIZE, downloaded as they are consumed) it is the part being consumed plus
  `result_prefetch` downloads in flight, each about STREAMED_PART_COPIES times its Arrow bytes;
- COPIES_PER_BATCH batches on the write side: the one read ahead, the one being written, its cast
  copy and its encoded COPY payload;
- THREAD_OVERHEAD_BYTES: its two connections, buffers and interpreter state.
The process adds a fixed base (interpreter and libraries), which the budget leaves to the memory it
does not hand out (inside Lambda 40% of the function's memory).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lib.config import Settings

MIB = 2**20
WHOLE_RESULT_COPIES = 6
STREAMED_PART_COPIES = 3  # the response read, its bytes, and the table converted from them
COPIES_PER_BATCH = 4
THREAD_OVERHEAD_BYTES = 40 * MIB
# Share of a Lambda's memory the threads may use; the rest is the runtime, libraries and slack.
LAMBDA_MEMORY_SHARE = 0.6


# Set on every function of the Step Functions stack to the work function's memory: the Plan function
# fits chunk_rows for the workers, which have more memory than it has.
WORKER_MEMORY_ENV = "MIGRATION_WORKER_MEMORY_MB"


def memory_budget_bytes(configured_mb: int) -> int:
    """memory_budget_mb, capped inside Lambda at LAMBDA_MEMORY_SHARE of a worker function's memory."""
    lambda_mb = os.environ.get(WORKER_MEMORY_ENV) or os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE")
    budget_mb = float(configured_mb)
    if lambda_mb and lambda_mb.isdigit():
        budget_mb = min(budget_mb, int(lambda_mb) * LAMBDA_MEMORY_SHARE)
    return int(budget_mb * MIB)


def requested_threads(parallel_threads: int) -> int:
    """parallel_threads, or one per core when it is 0."""
    return parallel_threads or os.cpu_count() or 1


@dataclass(frozen=True)
class ReadShape:
    """The memory one thread needs for a table: the biggest result part it holds and the biggest batch."""

    results: str  # "whole" or "streamed"
    part_bytes: int  # Arrow bytes of the largest result part (whole: the largest chunk)
    batch_bytes: int  # Arrow bytes of the largest batch
    result_prefetch: int = 1

    @classmethod
    def planned(cls, results: str, row_bytes: int, chunk_rows: int, batch_size: int, result_prefetch: int,
                result_chunk_mb: int) -> ReadShape:
        chunk_bytes = chunk_rows * row_bytes
        part = chunk_bytes if results == "whole" else min(chunk_bytes, result_chunk_mb * MIB)
        return cls(results, part, min(batch_size, chunk_rows) * row_bytes, result_prefetch)

    @classmethod
    def for_settings(cls, results: str, row_bytes: int, chunk_rows: int, settings: Settings) -> ReadShape:
        """`planned` with the batch size and result settings of a run."""
        return cls.planned(results, row_bytes, chunk_rows, settings.batch_size, settings.result_prefetch,
                           settings.result_chunk_mb)

    def read_bytes(self) -> int:
        if self.results == "whole":
            return WHOLE_RESULT_COPIES * self.part_bytes
        return (self.result_prefetch + 1) * STREAMED_PART_COPIES * self.part_bytes

    def per_thread(self) -> int:
        return self.read_bytes() + COPIES_PER_BATCH * self.batch_bytes + THREAD_OVERHEAD_BYTES

    def describe(self) -> str:
        read = (f"the whole result of a chunk ({self.part_bytes / MIB:.0f} MiB × {WHOLE_RESULT_COPIES})"
                if self.results == "whole" else
                f"{self.result_prefetch + 1} result part(s) of {self.part_bytes / MIB:.0f} MiB × {STREAMED_PART_COPIES}")
        return (f"about {self.per_thread() / MIB:.0f} MiB: {read}, {COPIES_PER_BATCH} batches of "
                f"{self.batch_bytes / MIB:.1f} MiB and {THREAD_OVERHEAD_BYTES // MIB} MiB of connections and buffers")


def widest(shapes: list[ReadShape]) -> ReadShape | None:
    """The shape whose thread holds the most, or None without shapes."""
    return max(shapes, key=ReadShape.per_thread, default=None)


def estimate_bytes(threads: int, shapes: list[ReadShape]) -> int:
    """What `threads` threads hold at most (the process base not included)."""
    shape = widest(shapes)
    return threads * (shape.per_thread() if shape else THREAD_OVERHEAD_BYTES)


def fit_threads(requested: int, shapes: list[ReadShape], budget_mb: int) -> tuple[int, str | None]:
    """Clamp the thread count to the memory budget. Returns (threads, why it was lowered or None)."""
    shape = widest(shapes)
    if shape is None:
        return requested, None
    budget = memory_budget_bytes(budget_mb)
    allowed = max(1, budget // shape.per_thread())
    if requested <= allowed:
        return requested, None
    why = (f"parallel_threads lowered from {requested} to {allowed}: each thread needs {shape.describe()}, and the "
           f"memory budget is {budget / MIB:.0f} MiB; lower batch_size or chunk_rows, or raise memory_budget_mb")
    return int(allowed), why


def fit_chunk_rows(chunk_rows: int, batch_size: int, row_bytes: int, threads: int,
                   budget_mb: int) -> tuple[int, str | None]:
    """With whole results a thread holds its chunk several times over: the largest chunk_rows with which
    `threads` threads fit the budget, never below one batch (below that, fewer threads are the answer)."""
    shape = ReadShape.planned("whole", row_bytes, chunk_rows, batch_size, 0, 0)
    budget = memory_budget_bytes(budget_mb)
    if threads * shape.per_thread() <= budget:
        return chunk_rows, None
    batch_rows = min(batch_size, chunk_rows)
    room = budget // threads - THREAD_OVERHEAD_BYTES - COPIES_PER_BATCH * batch_rows * row_bytes
    fitted = max(batch_rows, room // (WHOLE_RESULT_COPIES * max(1, row_bytes)))
    if fitted >= chunk_rows:
        return chunk_rows, None  # already a batch or less: fewer threads are the answer (fit_threads)
    why = (f"chunk_rows lowered from {chunk_rows:,} to {fitted:,}: the source answers each chunk in one whole "
           f"result, which a thread holds about {WHOLE_RESULT_COPIES} times over ({chunk_rows:,} rows × ~{row_bytes} "
           f"bytes × {WHOLE_RESULT_COPIES}), and {threads} thread(s) must fit memory_budget_mb "
           f"({budget / MIB:.0f} MiB)")
    return int(fitted), why


# PostgreSQL connections: each thread has its data connection and, while a chunk is in flight, its lease
# keeper's; each process (a local run, a Lambda slot) one more for the ledger and progress.
CONNECTIONS_PER_THREAD = 2
CONNECTIONS_PER_PROCESS = 1


CONNECTIONS_PER_THREAD_READING_AHEAD = 4  # a data connection and a lease keeper's for each of two chunks


def reading_ahead_connections(threads: int, slots: int = 1) -> int:
    """PostgreSQL connections `slots` processes of `threads` threads hold at most while they read ahead."""
    return slots * (threads * CONNECTIONS_PER_THREAD_READING_AHEAD + CONNECTIONS_PER_PROCESS)


def reads_ahead(threads: int, max_connections: int, slots: int = 1) -> bool:
    """Whether `slots` processes of `threads` threads may read ahead (two chunks a thread) within
    max_target_connections."""
    return reading_ahead_connections(threads, slots) <= max_connections


def fit_connections(slots: int, threads: int, max_connections: int) -> tuple[int, int, str | None]:
    """Clamp worker slots, then threads per slot, so that slots × (threads × 2 + 1) ≤ max_connections.
    Returns (slots, threads per slot, why they were lowered or None)."""
    per_slot_minimum = CONNECTIONS_PER_THREAD + CONNECTIONS_PER_PROCESS
    fitted_slots = max(1, min(slots, max_connections // per_slot_minimum))
    fitted_threads = max(1, min(threads, (max_connections // fitted_slots - CONNECTIONS_PER_PROCESS)
                                // CONNECTIONS_PER_THREAD))
    if (fitted_slots, fitted_threads) == (slots, threads):
        return slots, threads, None
    why = (f"{slots} slot(s) × {threads} thread(s) lowered to {fitted_slots} × {fitted_threads}: each thread holds "
           f"{CONNECTIONS_PER_THREAD} PostgreSQL connections and each slot {CONNECTIONS_PER_PROCESS} more, and "
           f"max_target_connections is {max_connections}")
    return fitted_slots, fitted_threads, why
