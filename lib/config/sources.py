"""Typed configuration: loading, validation that reports every problem at once, overrides,
secret references and the run fingerprint.

Secrets are never literal: a secret field holds `${ENV_VAR}` or
`aws-secretsmanager:<secret-id>#<json-key>`, resolved only when a connection is opened.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from lib.config.connections import POSTGRES_KEYS, SECRET_KEYS, SNOWFLAKE_KEYS, parse_connection, postgres_kwargs, snowflake_kwargs
from lib.config.location import read_config_text
from lib.config.patterns import TablePattern, expand, parse_patterns
from lib.config.secrets import resolve_tree
from lib.config.settings import BOOL_SETTINGS, SETTING_BOUNDS, SETTING_NAMES, TEXT_SETTINGS, Settings, parse_bool, parse_settings, suggest
from lib.config.tables import LOAD_MODES, TABLE_OVERRIDE_KEYS, TableSpec, override_tables, parse_tables, select_tables
from lib.errors import ConfigError
from lib.retry import RetryPolicy

DEFAULT_CONFIG_PATH = Path(__file__).resolve().parents[2] / "config.json"


assert set(SETTING_BOUNDS) | set(TEXT_SETTINGS) | BOOL_SETTINGS == set(SETTING_NAMES)


# Keys an execution (Step Functions input or CLI flag) may override. Everything else is refused.
OVERRIDE_KEYS = {"source_name", "tables", "no_resume", "abandon_live", *SETTING_NAMES, *TABLE_OVERRIDE_KEYS}


@dataclass(frozen=True)
class SourceConfig:
    name: str
    snowflake: dict[str, Any]
    postgres: dict[str, Any]
    tables: tuple[TableSpec, ...]
    settings: Settings
    no_resume: bool = False
    abandon_live: bool = False  # no_resume may abandon a run whose workers are alive
    patterns: tuple[TablePattern, ...] = ()  # entries naming tables by a glob; `tables` gains their matches (with_found)
    wanted: tuple[str, ...] | None = None  # the 'tables' override, applied to pattern matches when they are found
    _secret_cache: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    def retry_policy(self) -> RetryPolicy:
        s = self.settings
        return RetryPolicy(s.retry_attempts, s.retry_base_seconds, s.retry_max_seconds)

    def chunk_rows(self, table: TableSpec) -> int:
        return table.chunk_rows or self.settings.chunk_rows

    def nul_bytes(self, table: TableSpec) -> str:
        return table.nul_bytes or self.settings.nul_bytes

    def snowflake_connect_args(self) -> dict[str, Any]:
        """Connector kwargs: the resolved `snowflake` block plus the settings the engine always sets."""
        return snowflake_kwargs(resolve_tree(self.snowflake, self._secret_cache),
                                self.settings.snowflake_statement_timeout_seconds, self.settings.result_prefetch,
                                self.settings.result_chunk_mb)

    def postgres_connect_args(self) -> dict[str, Any]:
        """libpq kwargs: the resolved `postgres` block plus the engine's timeouts and keepalives."""
        return postgres_kwargs(resolve_tree(self.postgres, self._secret_cache),
                               self.settings.statement_timeout_seconds, self.settings.lock_timeout_seconds)

    def fingerprint(self) -> str:
        """Hash of what decides the plan: source identity, target database, tables, chunk size.

        Runtime knobs (threads, batch size, resume window, leases) and credentials are excluded,
        so changing them does not prevent a resume.
        """
        sf = resolve_tree(self.snowflake, self._secret_cache)
        pg = resolve_tree(self.postgres, self._secret_cache)
        identity = {
            "source_name": self.name,
            "snowflake": {k: sf.get(k) for k in ("account", "database", "schema")},
            "postgres": {"dbname": pg.get("dbname")},
            "chunk_rows": self.settings.chunk_rows,
            # sorted, and without options left at their defaults: `--table A --table B` and `--table B
            # --table A` are one run, and a new option with a default does not orphan existing runs
            "tables": sorted(json.dumps(_non_default(t), sort_keys=True, default=str) for t in self.tables
                             if t.pattern is None),
        }
        if self.wanted is not None:  # a --table subset of a config with patterns is a config of its own, as without
            identity["wanted"] = sorted(self.wanted)
        if self.patterns:  # as written, not what they match: a table that appears keeps the run; in their order,
            # which decides the entry (and the options) of a table two patterns match
            identity["patterns"] = [
                json.dumps({**p.identity(), "options": _non_default(replace(p.template, source=(), target=("", "")))},
                           sort_keys=True, default=str) for p in self.patterns]
        canonical = json.dumps(identity, sort_keys=True, default=str)
        return hashlib.sha256(canonical.encode()).hexdigest()[:32]

    def redacted(self) -> dict[str, Any]:
        """The effective config without secrets, safe for logs and run metadata."""
        return {
            "source_name": self.name,
            "snowflake": {k: ("***" if k in SECRET_KEYS else v) for k, v in self.snowflake.items()},
            "postgres": {k: ("***" if k in SECRET_KEYS else v) for k, v in self.postgres.items()},
            "settings": asdict(self.settings),
            "tables": [t.name for t in self.tables],
            **({"patterns": [p.text for p in self.patterns]} if self.patterns else {}),
        }

    def with_found(self, found: dict[tuple[str, str], list[str]]) -> SourceConfig:
        """This config with its patterns' matches among `found` ((database, schema) → table names) as tables;
        the 'tables' override then picks among all of them. Raises ConfigError for conflicting targets."""
        if not self.patterns:
            return self
        listed = [t for t in self.tables if t.pattern is None]
        tables, problems = expand(listed, self.patterns, found)
        if self.wanted is not None:
            tables = select_tables(tables, list(self.wanted), problems)
        if problems:
            raise ConfigError(problems)
        return replace(self, tables=tuple(tables))

    def schemas_to_list(self) -> list[tuple[str, str]]:
        """The (database, schema) pairs whose tables the patterns are matched against."""
        return sorted({(p.database, p.schema) for p in self.patterns})


def _non_default(spec: TableSpec) -> dict[str, Any]:
    defaults = {f.name: f.default for f in fields(TableSpec)}
    return {k: v for k, v in asdict(spec).items() if k not in defaults or v != defaults[k]}


def load_config(
    source_name: str | None,
    overrides: dict[str, Any] | None = None,
    path: str | os.PathLike[str] | None = None,
) -> SourceConfig:
    """Load config.json (a file, `s3://bucket/key` or `ssm:/parameter`: lib/config/location.py), apply overrides
    and validate; raise ConfigError listing every problem."""
    location = str(path or os.environ.get("MIGRATION_CONFIG") or DEFAULT_CONFIG_PATH)
    text = read_config_text(location)
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError([f"config {location} is not valid JSON: {exc}"]) from None
    return parse_config(raw, source_name, overrides or {})


def parse_config(raw: Any, source_name: str | None, overrides: dict[str, Any]) -> SourceConfig:
    problems: list[str] = []
    overrides = _parse_overrides(overrides, problems)
    source_name = overrides.pop("source_name", None) or source_name

    if not isinstance(raw, dict):
        raise ConfigError(["the config must be a JSON object with 'defaults' and 'sources'"])
    for key in sorted(set(raw) - {"defaults", "sources", "$comment"}):
        problems.append(f"unknown top-level key {key!r}")

    settings = parse_settings(raw.get("defaults", {}), "defaults", problems, Settings())
    sources = raw.get("sources")
    if not isinstance(sources, dict) or not sources:
        raise ConfigError([*problems, "'sources' must be a non-empty object of named sources"])
    if not source_name:
        raise ConfigError([*problems, f"no source chosen: use --source NAME (one of: {', '.join(sorted(sources))})"])
    if source_name not in sources:
        raise ConfigError([*problems, f"unknown source {source_name!r} (configured: {', '.join(sorted(sources))})"])
    src = sources[source_name]
    where = f"sources.{source_name}"
    if not isinstance(src, dict):
        raise ConfigError([*problems, f"{where} must be an object"])
    for key in sorted(set(src) - {"snowflake", "postgres", "tables", "defaults", "$comment"}):
        problems.append(f"{where}: unknown key {key!r}")

    settings = parse_settings(src.get("defaults", {}), f"{where}.defaults", problems, settings)
    setting_overrides = {k: v for k, v in overrides.items() if k in SETTING_NAMES}
    settings = parse_settings(setting_overrides, "overrides", problems, settings)

    snowflake = parse_connection(src.get("snowflake"), f"{where}.snowflake", problems,
                                  ("account", "user", "database", "schema"), SNOWFLAKE_KEYS)
    postgres = parse_connection(src.get("postgres"), f"{where}.postgres", problems, ("dbname",), POSTGRES_KEYS)

    default_db = str(snowflake.get("database", "")) if "${" not in str(snowflake.get("database", "")) else None
    default_schema = str(snowflake.get("schema", "")) if "${" not in str(snowflake.get("schema", "")) else None
    tables, pattern_entries = parse_tables(src.get("tables"), where, problems, default_db, default_schema)
    patterns = parse_patterns(pattern_entries, problems, default_db, default_schema)

    wanted = overrides.get("tables")
    if wanted is not None and not pattern_entries:
        tables = select_tables(tables, wanted, problems)
    table_overrides = {k: v for k, v in overrides.items() if k in TABLE_OVERRIDE_KEYS}
    if table_overrides:
        tables = override_tables(tables, table_overrides, problems)
        patterns = [replace(p, template=t) for p, t in
                    zip(patterns, override_tables([p.template for p in patterns], table_overrides, problems), strict=True)]

    if problems:
        raise ConfigError(problems)
    return SourceConfig(
        name=source_name,
        snowflake=snowflake,
        postgres=postgres,
        tables=tuple(tables),
        settings=settings,
        no_resume=overrides.get("no_resume", False),
        abandon_live=overrides.get("abandon_live", False),
        patterns=tuple(patterns),
        wanted=tuple(wanted) if wanted is not None and pattern_entries else None,
    )


def _parse_overrides(raw: dict[str, Any], problems: list[str]) -> dict[str, Any]:
    """Overrides from an execution input or CLI flags, each checked for its real type (settings are
    checked against their bounds later, with the rest of the config). A bad value is left out."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in OVERRIDE_KEYS:
            problems.append(f"override {key!r} is not allowed{suggest(key, OVERRIDE_KEYS)} "
                            f"(allowed: {', '.join(sorted(OVERRIDE_KEYS))})")
        elif key == "source_name":
            if isinstance(value, str) and value.strip():
                out[key] = value
            else:
                problems.append(f"override 'source_name' must be a source name (a string), got {value!r}")
        elif key in ("no_resume", "abandon_live", "insert_only_mode"):
            parsed = parse_bool(value)
            if parsed is None:
                problems.append(f"override {key!r} must be true or false (a JSON boolean, or the string "
                                f"\"true\" or \"false\"), got {value!r}")
            else:
                out[key] = parsed
        elif key == "load_mode":
            if value in LOAD_MODES:
                out[key] = value
            else:
                problems.append(f"override 'load_mode' must be one of {', '.join(LOAD_MODES)}, got {value!r}")
        elif key == "tables":
            if isinstance(value, list) and value and all(isinstance(v, str) and v.strip() for v in value):
                out[key] = value
            else:
                problems.append(f"override 'tables' must be a non-empty list of table names, got {value!r}")
        else:
            out[key] = value
    return out


