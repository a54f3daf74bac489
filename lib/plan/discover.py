"""The tables a config's patterns name: listed in Snowflake when a run starts, pinned in the run after.

A run's start lists each schema a pattern names (one SHOW TABLES per schema, shared with the Time Travel
retention each table's plan reads) and pins what matched in the run's metadata. Every later step of the run
(work, reconcile, verify, status) expands the patterns from the pin alone: it asks Snowflake nothing, and a
table dropped in Snowflake mid-run stays in the run (its chunks fail, naming it) instead of vanishing from it.
A table that appears is planned by the next start of the config, fresh or resumed.
"""

from __future__ import annotations

from typing import Any

import psycopg

from lib import ledger
from lib.config import SourceConfig
from lib.log import get_logger
from lib.source.snowflake import SnowflakeSource

log = get_logger()

Found = dict[tuple[str, str], list[str]]


def listed_in_snowflake(config: SourceConfig, source: SnowflakeSource) -> Found:
    """The tables of every schema the config's patterns name: one query per schema."""
    return {(db, schema): source.table_names(db, schema) for db, schema in config.schemas_to_list()}


def with_pins(found: Found, pinned: list[tuple[str, str, str]]) -> Found:
    merged = {key: set(names) for key, names in found.items()}
    for db, schema, name in pinned:
        merged.setdefault((db, schema), set()).add(name)
    return {key: sorted(names) for key, names in merged.items()}


def discovered(config: SourceConfig, source: SnowflakeSource, conn: psycopg.Connection[Any],
               run_id: int | None) -> SourceConfig:
    """The config with what its patterns match in Snowflake now, plus what run `run_id` pinned."""
    if not config.patterns:
        return config
    pinned = ledger.pinned_matches(conn, run_id) if run_id is not None else []
    expanded = config.with_found(with_pins(listed_in_snowflake(config, source), pinned))
    for pattern in config.patterns:
        names = [t.name for t in expanded.tables if t.pattern == pattern.text]
        log.info("table pattern %s matched %d table(s)%s", pattern.text, len(names),
                 f": {', '.join(names[:20])}{' …' if len(names) > 20 else ''}" if names else "")
    return expanded


def pinned(config: SourceConfig, conn: psycopg.Connection[Any], run_id: int | None) -> SourceConfig:
    """The config with the tables run `run_id` pinned (none without a run): no Snowflake query."""
    if not config.patterns:
        return config
    return config.with_found(with_pins({}, ledger.pinned_matches(conn, run_id) if run_id is not None else []))


def pin(conn: psycopg.Connection[Any], config: SourceConfig, run_id: int) -> None:
    ledger.pin_matches(conn, run_id, [t.source for t in config.tables if t.pattern is not None])
