"""How many worker threads fit in memory: threads × bytes per batch ≤ budget."""

from __future__ import annotations

import os

# A thread holds the batch read ahead, the batch being written, its cast copy and the encoded COPY payload.
COPIES_PER_BATCH = 4
# Share of a Lambda's memory the batches may use; the rest is the runtime, libraries and slack.
LAMBDA_MEMORY_SHARE = 0.6


def memory_budget_bytes(configured_mb: int) -> int:
    lambda_mb = os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE")
    budget_mb = float(configured_mb)
    if lambda_mb and lambda_mb.isdigit():
        budget_mb = min(budget_mb, int(lambda_mb) * LAMBDA_MEMORY_SHARE)
    return int(budget_mb * 1024 * 1024)


def fit_threads(requested: int, batch_size: int, row_bytes: int, budget_mb: int) -> tuple[int, str | None]:
    """Clamp the thread count to the memory budget. Returns (threads, why it was lowered or None)."""
    per_thread = max(1, batch_size * row_bytes * COPIES_PER_BATCH)
    budget = memory_budget_bytes(budget_mb)
    allowed = max(1, budget // per_thread)
    if requested <= allowed:
        return requested, None
    why = (
        f"parallel_threads lowered from {requested} to {allowed}: each thread needs about "
        f"{per_thread / 2**20:.0f} MiB ({batch_size} rows × ~{row_bytes} bytes × {COPIES_PER_BATCH} copies) "
        f"and the memory budget is {budget / 2**20:.0f} MiB; lower batch_size or raise memory_budget_mb"
    )
    return int(allowed), why


# PostgreSQL connections: each thread has its data connection and, while a chunk is in flight, its lease
# keeper's; each process (a local run, a Lambda slot) one more for the ledger and progress.
CONNECTIONS_PER_THREAD = 2
CONNECTIONS_PER_PROCESS = 1


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
