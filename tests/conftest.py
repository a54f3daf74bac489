"""Real components for every test: one fakesnow server (the real connector over HTTP) and one
embedded PostgreSQL server per session; a fresh Snowflake database and a fresh PostgreSQL
database per test."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from lib.config import SourceConfig, load_config
from scripts.local_stack import LocalStack
from tests.sf_proxy import sf_proxy  # noqa: F401 - the fixture, for every test module

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    directory = tmp_path_factory.mktemp("stack")
    stack = LocalStack(directory)
    stack.start_postgres()
    stack.start_snowflake(persist=True, tied=True)
    yield stack
    stack.stop_snowflake()
    stack.stop_postgres(mode="immediate")


@dataclass
class Env:
    """One test's isolated world: a Snowflake database, a PostgreSQL database, a config writer."""

    stack: LocalStack
    sf_database: str
    pg_database: str
    tmp: Path
    env: dict[str, str]

    def sf(self) -> Any:
        return self.stack.snowflake_connect(self.sf_database, "PUBLIC")

    def sf_execute(self, *statements: str) -> None:
        with self.sf() as conn, conn.cursor() as cur:
            for statement in statements:
                cur.execute(statement)

    def sf_rows(self, query: str) -> list[tuple[Any, ...]]:
        with self.sf() as conn, conn.cursor() as cur:
            cur.execute(query)
            return list(cur.fetchall())

    def pg(self) -> psycopg.Connection[Any]:
        return psycopg.connect(**self.stack.pg_args(self.pg_database), autocommit=True)

    def pg_rows(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        with self.pg() as conn:
            return list(conn.execute(query, params).fetchall())

    def pg_value(self, query: str, params: Any = None) -> Any:
        return self.pg_rows(query, params)[0][0]

    def write_config(self, tables: list[dict[str, Any]], defaults: dict[str, Any] | None = None,
                     name: str = "test", snowflake: dict[str, Any] | None = None,
                     postgres: dict[str, Any] | None = None, filename: str = "config.json") -> Path:
        """A config.json for this test's databases; `snowflake`/`postgres` add or replace connection
        settings (a value of None removes one)."""
        config = {
            "defaults": {"parallel_threads": 2, "batch_size": 10_000, "chunk_rows": 10_000, **(defaults or {})},
            "sources": {name: {
                "snowflake": {
                    "account": "${SNOWFLAKE_ACCOUNT}", "user": "${SNOWFLAKE_USER}",
                    "password": "${SNOWFLAKE_PASSWORD}", "host": "${SNOWFLAKE_HOST}",
                    "port": "${SNOWFLAKE_PORT}", "protocol": "http",
                    "database": self.sf_database, "schema": "PUBLIC", "network_timeout": 30,
                    **(snowflake or {}),
                },
                "postgres": {
                    "host": "${PGHOST}", "port": "${PGPORT}", "user": "${PGUSER}",
                    "password": "${PGPASSWORD}", "dbname": "${PGDATABASE}", **(postgres or {}),
                },
                "tables": tables,
            }},
        }
        for block in config["sources"][name].values():
            if isinstance(block, dict):
                for key in [k for k, v in block.items() if v is None]:
                    del block[key]
        path = self.tmp / filename
        path.write_text(json.dumps(config, indent=2))
        return path

    def config(self, tables: list[dict[str, Any]], defaults: dict[str, Any] | None = None,
               snowflake: dict[str, Any] | None = None, postgres: dict[str, Any] | None = None,
               **overrides: Any) -> SourceConfig:
        return load_config("test", overrides, self.write_config(tables, defaults, snowflake=snowflake, postgres=postgres))


@pytest.fixture
def env(stack: LocalStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Env]:
    suffix = uuid.uuid4().hex[:10]
    sf_database = f"T_{suffix}".upper()
    pg_database = f"t_{suffix}"
    stack.create_database(pg_database)
    with stack.snowflake_connect() as conn, conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE {sf_database}")
        cur.execute(f"CREATE SCHEMA IF NOT EXISTS {sf_database}.PUBLIC")
    variables = stack.env(pg_database)
    for key, value in variables.items():
        monkeypatch.setenv(key, value)
    yield Env(stack, sf_database, pg_database, tmp_path, {**os.environ, **variables})
    # fakesnow has no DROP DATABASE; its files live in the session's temporary directory.
    with psycopg.connect(**stack.pg_args(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{pg_database}" WITH (FORCE)')
