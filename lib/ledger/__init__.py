"""The ledger: the `migration_status` schema in the target database, which every stage reads and writes.

schema.py (numbered, idempotent migrations in migrations/), runs.py (runs, their status and liveness),
tables.py (each table's plan, load, reconciliation, post-load step and target ownership), chunks.py
(claims, leases, fences, done and failed marks), lease.py (the thread that renews a chunk's lease), changes.py
(the schema changes planning made or refused in a target), deletes.py (the ranges and passes of lib/check/deletes.py).
Imports only lib's top modules (config, errors, models, log).
"""

from lib.ledger.changes import *  # noqa: F403
from lib.ledger.chunks import *  # noqa: F403 - the ledger is used as one namespace: ledger.claim_chunk(...)
from lib.ledger.deletes import *  # noqa: F403
from lib.ledger.runs import *  # noqa: F403
from lib.ledger.schema import SCHEMA, apply_migrations  # noqa: F401
from lib.ledger.tables import *  # noqa: F403
