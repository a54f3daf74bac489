"""The `migration_status` schema: numbered, idempotent migrations in lib/migrations/NNN_name.sql.

Each file is applied once, in order, inside one transaction under an advisory lock, and recorded in
`migration_status.schema_migrations`; many processes may call `apply_migrations` at once.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import psycopg

SCHEMA = "migration_status"
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# Single-key advisory lock serialising schema migrations.
MIGRATION_LOCK_KEY = 0x4D49475241544531


@cache
def migrations() -> tuple[tuple[int, str, str], ...]:
    """(version, name, SQL) of every migration file; the name is the file's first comment line."""
    found = []
    for path in sorted(MIGRATIONS_DIR.glob("[0-9][0-9][0-9]_*.sql")):
        text = path.read_text()
        first = text.splitlines()[0]
        name = first[2:].strip() if first.startswith("--") else path.stem[4:].replace("_", " ")
        found.append((int(path.name[:3]), name, text))
    versions = [v for v, _, _ in found]
    assert versions == list(range(1, len(found) + 1)), f"migration files must be numbered 001, 002, ...: {versions}"
    return tuple(found)


def apply_migrations(conn: psycopg.Connection[Any]) -> list[int]:
    """Bring the schema to the latest version; safe to call from many processes at once."""
    applied_now: list[int] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {SCHEMA}.schema_migrations ("
            "version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r[0] for r in conn.execute(f"SELECT version FROM {SCHEMA}.schema_migrations").fetchall()}
        for version, name, ddl in migrations():
            if version in done:
                continue
            conn.execute(ddl)
            conn.execute(f"INSERT INTO {SCHEMA}.schema_migrations (version, name) VALUES (%s, %s)", (version, name))
            applied_now.append(version)
    return applied_now
