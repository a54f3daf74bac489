"""Typed configuration: loading, validation that reports every problem at once, overrides,
secret references and the run fingerprint.

Secrets are never literal: a secret field holds `${ENV_VAR}` or
`aws-secretsmanager:<secret-id>#<json-key>`, resolved only when a connection is opened.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
from collections import Counter
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from lib.budget import source_results_problem
from lib.connections import POSTGRES_KEYS, SECRET_KEYS, SNOWFLAKE_KEYS, SNOWFLAKE_SETTING_KEYS, postgres_kwargs, snowflake_kwargs
from lib.errors import ConfigError
from lib.identifiers import PG_MAX_IDENTIFIER_BYTES, split_qualified
from lib.retry import RetryPolicy
from lib.wire import nul_policy_problem

DEFAULT_CONFIG_PATH = Path(__file__).resolve().parent.parent / "config.json"

SECRETS_MANAGER_PREFIX = "aws-secretsmanager:"
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")

CHUNKING_TYPES = ("date", "numeric")


@dataclass(frozen=True)
class Settings:
    parallel_threads: int = 0  # 0: one per core, then clamped by the memory budget and the connection cap
    batch_size: int = 50_000
    chunk_rows: int = 250_000
    resume_max_age: float = 168.0
    lease_seconds: int = 900  # a chunk whose copy makes no progress for this long is taken from its worker
    max_attempts: int = 3
    memory_budget_mb: int = 2048
    retry_attempts: int = 5  # per statement that is safe to repeat (stats queries, ledger updates)
    retry_base_seconds: float = 1.0
    retry_max_seconds: float = 30.0
    max_outage_seconds: int = 600  # how long a worker keeps trying to reach PostgreSQL before it gives up
    statement_timeout_seconds: int = 3600  # PostgreSQL statement_timeout of the engine's sessions (0: none)
    lock_timeout_seconds: int = 60  # PostgreSQL lock_timeout (0: none)
    snowflake_statement_timeout_seconds: int = 3600  # Snowflake STATEMENT_TIMEOUT_IN_SECONDS (0: the account's)
    max_target_connections: int = 64  # all workers' PostgreSQL connections together (threads x 2 each)
    keep_backups: int = 2  # swap mode: backups of each target that `cleanup` keeps
    swap_lock_timeout_seconds: float = 2.0  # swap mode: how long the swap waits for the live table's lock per try
    nul_bytes: str = "fail"  # NUL bytes in text: fail | strip | replace:<char> (per table too)
    # read tables AT(TIMESTAMP => the run's start), one point in time: "auto" where the table's Time Travel
    # retention covers resume_max_age, True for every table, False never (lib/planning.py reads_at)
    snapshot: str | bool = "auto"
    verify: bool = False  # after reconciliation, compare content checksums of every chunk (lib/verify.py)
    source_results: str = "auto"  # how Snowflake answers a chunk: streamed | whole | auto (asks the session)
    result_prefetch: int = 1  # streamed results: result parts downloaded ahead of the one being read
    result_chunk_mb: int = 48  # streamed results: CLIENT_RESULT_CHUNK_SIZE asked of Snowflake (48-160)


@dataclass(frozen=True)
class Bound:
    """The type and range a setting accepts; `what` completes "must be ..."."""

    kind: type
    low: float
    high: float
    what: str

    def check(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float) if self.kind is float else int):
            return False
        return self.low <= value <= self.high


_DAY = 86_400
SETTING_BOUNDS: dict[str, Bound] = {
    "parallel_threads": Bound(int, 0, 256, "an integer from 1 to 256, or 0 for one per core"),
    "batch_size": Bound(int, 1, 5_000_000, "an integer from 1 to 5,000,000 (rows)"),
    "chunk_rows": Bound(int, 1, 1_000_000_000, "an integer from 1 to 1,000,000,000 (rows)"),
    "resume_max_age": Bound(float, 0.001, 87_600, "a number of hours above 0 and at most 87,600 (10 years)"),
    "lease_seconds": Bound(int, 2, _DAY, "an integer from 2 to 86,400 (seconds)"),
    "max_attempts": Bound(int, 1, 100, "an integer from 1 to 100"),
    "memory_budget_mb": Bound(int, 1, 1_048_576, "an integer from 1 to 1,048,576 (MiB)"),
    "retry_attempts": Bound(int, 1, 100, "an integer from 1 to 100"),
    "retry_base_seconds": Bound(float, 0.001, 3600, "a number of seconds above 0 and at most 3,600"),
    "retry_max_seconds": Bound(float, 0.001, _DAY, "a number of seconds above 0 and at most 86,400"),
    "max_outage_seconds": Bound(int, 1, 7 * _DAY, "an integer from 1 to 604,800 (seconds)"),
    "statement_timeout_seconds": Bound(int, 0, 7 * _DAY, "an integer from 0 (none) to 604,800 (seconds)"),
    "lock_timeout_seconds": Bound(int, 0, _DAY, "an integer from 0 (none) to 86,400 (seconds)"),
    "snowflake_statement_timeout_seconds": Bound(int, 0, 7 * _DAY, "an integer from 0 (the account's) to 604,800 (seconds)"),
    "max_target_connections": Bound(int, 2, 100_000, "an integer of at least 2"),
    "keep_backups": Bound(int, 0, 1000, "an integer from 0 to 1,000"),
    "swap_lock_timeout_seconds": Bound(float, 0.001, 3600, "a number of seconds above 0 and at most 3,600"),
    "result_prefetch": Bound(int, 1, 10, "an integer from 1 to 10 (result parts)"),
    "result_chunk_mb": Bound(int, 48, 160, "an integer from 48 to 160 (MiB, Snowflake's CLIENT_RESULT_CHUNK_SIZE range)"),
}
# settings that are words, each with its own check
TEXT_SETTINGS = {"nul_bytes": nul_policy_problem, "source_results": source_results_problem,
                 "snapshot": lambda value: None if value == "auto" or parse_bool(value) is not None else
                 f"snapshot must be auto, true or false, got {value!r}"}
BOOL_SETTINGS = {"verify"}
SETTING_NAMES = tuple(Settings.__dataclass_fields__)
assert set(SETTING_BOUNDS) | set(TEXT_SETTINGS) | BOOL_SETTINGS == set(SETTING_NAMES)

# Strings accepted for a boolean override (execution input may come from tools that only write strings).
TRUE_STRINGS, FALSE_STRINGS = frozenset({"true"}), frozenset({"false"})

TABLE_OPTIONS = {
    "source", "target", "chunking_columns", "chunking_column_types", "source_filter",
    "truncate_onstart", "insert_only_mode", "chunk_rows", "build_primary_key",
    "load_mode", "merge_key", "source_watermark", "target_watermark", "watermark_lag", "nul_bytes",
}
LOAD_MODES = ("in_place", "swap")

# Table options an execution may override for every selected table (raw SQL such as source_filter and
# per-table column names are config-only).
TABLE_OVERRIDE_KEYS = {"load_mode", "insert_only_mode"}

# Keys an execution (Step Functions input or CLI flag) may override. Everything else is refused.
OVERRIDE_KEYS = {"source_name", "tables", "no_resume", "abandon_live", *SETTING_NAMES, *TABLE_OVERRIDE_KEYS}


@dataclass(frozen=True)
class TableSpec:
    source: tuple[str, ...]  # (db, schema, table) after folding; db/schema default to the source's
    target: tuple[str, str]  # (schema, table)
    chunking_columns: tuple[str, ...] = ()
    chunking_column_types: tuple[str, ...] = ()
    source_filter: str | None = None
    truncate_onstart: bool = False
    insert_only_mode: bool = True  # False: merge (upsert) changed rows by key; the default with a watermark
    chunk_rows: int | None = None
    build_primary_key: bool = True  # on tables the engine creates: the source's primary key, after the load
    load_mode: str = "in_place"  # or "swap": load a shadow table, reconcile it, swap it in with a backup
    merge_key: tuple[str, ...] = ()  # source column names; default: the target's primary key / unique index
    source_watermark: str | None = None  # incremental: only rows with lo < this column <= hi
    target_watermark: str | None = None  # the target column holding it (default: the source column's name)
    watermark_lag: float = 0  # start each window this much below the last high-water mark (seconds or units)
    nul_bytes: str | None = None  # fail | strip | replace:<char>; None: the setting's default
    entry: str | None = None  # the ledger name when one source table feeds several targets

    @property
    def name(self) -> str:
        """The table's name in the ledger: the source table as the user sees it, followed by its target when
        the same source table is configured more than once (e.g. a full and a filtered copy)."""
        return self.entry or ".".join(self.source)

    @property
    def merges(self) -> bool:
        return not self.insert_only_mode

    @property
    def repeatable(self) -> bool:
        """A completed run of such a table is not 'nothing to do': running it again brings new changes."""
        return self.merges or self.source_watermark is not None

    @property
    def target_name(self) -> str:
        return ".".join(self.target)


@dataclass(frozen=True)
class SourceConfig:
    name: str
    snowflake: dict[str, Any]
    postgres: dict[str, Any]
    tables: tuple[TableSpec, ...]
    settings: Settings
    no_resume: bool = False
    abandon_live: bool = False  # no_resume may abandon a run whose workers are alive
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
        return snowflake_kwargs(_resolve_tree(self.snowflake, self._secret_cache),
                                self.settings.snowflake_statement_timeout_seconds, self.settings.result_prefetch,
                                self.settings.result_chunk_mb)

    def postgres_connect_args(self) -> dict[str, Any]:
        """libpq kwargs: the resolved `postgres` block plus the engine's timeouts and keepalives."""
        return postgres_kwargs(_resolve_tree(self.postgres, self._secret_cache),
                               self.settings.statement_timeout_seconds, self.settings.lock_timeout_seconds)

    def fingerprint(self) -> str:
        """Hash of what decides the plan: source identity, target database, tables, chunk size.

        Runtime knobs (threads, batch size, resume window, leases) and credentials are excluded,
        so changing them does not prevent a resume.
        """
        sf = _resolve_tree(self.snowflake, self._secret_cache)
        pg = _resolve_tree(self.postgres, self._secret_cache)
        identity = {
            "source_name": self.name,
            "snowflake": {k: sf.get(k) for k in ("account", "database", "schema")},
            "postgres": {"dbname": pg.get("dbname")},
            "chunk_rows": self.settings.chunk_rows,
            # sorted, and without options left at their defaults: `--table A --table B` and `--table B
            # --table A` are one run, and a new option with a default does not orphan existing runs
            "tables": sorted(json.dumps(_non_default(t), sort_keys=True, default=str) for t in self.tables),
        }
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
        }


def _non_default(spec: TableSpec) -> dict[str, Any]:
    defaults = {f.name: f.default for f in fields(TableSpec)}
    return {k: v for k, v in asdict(spec).items() if k not in defaults or v != defaults[k]}


def load_config(
    source_name: str | None,
    overrides: dict[str, Any] | None = None,
    path: str | os.PathLike[str] | None = None,
) -> SourceConfig:
    """Load config.json, apply overrides and validate; raise ConfigError listing every problem."""
    path = Path(path or os.environ.get("MIGRATION_CONFIG") or DEFAULT_CONFIG_PATH)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError([f"config file {path} does not exist"]) from None
    except json.JSONDecodeError as exc:
        raise ConfigError([f"config file {path} is not valid JSON: {exc}"]) from None
    return parse_config(raw, source_name, overrides or {})


def parse_config(raw: Any, source_name: str | None, overrides: dict[str, Any]) -> SourceConfig:
    problems: list[str] = []
    overrides = _parse_overrides(overrides, problems)
    source_name = overrides.pop("source_name", None) or source_name

    if not isinstance(raw, dict):
        raise ConfigError(["the config must be a JSON object with 'defaults' and 'sources'"])
    for key in sorted(set(raw) - {"defaults", "sources", "$comment"}):
        problems.append(f"unknown top-level key {key!r}")

    settings = _parse_settings(raw.get("defaults", {}), "defaults", problems, Settings())
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

    settings = _parse_settings(src.get("defaults", {}), f"{where}.defaults", problems, settings)
    setting_overrides = {k: v for k, v in overrides.items() if k in SETTING_NAMES}
    settings = _parse_settings(setting_overrides, "overrides", problems, settings)

    snowflake = _parse_connection(src.get("snowflake"), f"{where}.snowflake", problems,
                                  ("account", "user", "database", "schema"), SNOWFLAKE_KEYS)
    postgres = _parse_connection(src.get("postgres"), f"{where}.postgres", problems, ("dbname",), POSTGRES_KEYS)

    default_db = str(snowflake.get("database", "")) if "${" not in str(snowflake.get("database", "")) else None
    default_schema = str(snowflake.get("schema", "")) if "${" not in str(snowflake.get("schema", "")) else None
    tables = _parse_tables(src.get("tables"), where, problems, default_db, default_schema)

    wanted = overrides.get("tables")
    if wanted is not None:
        tables = _select_tables(tables, wanted, problems)
    table_overrides = {k: v for k, v in overrides.items() if k in TABLE_OVERRIDE_KEYS}
    if table_overrides:
        tables = _override_tables(tables, table_overrides, problems)

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
    )


def _parse_overrides(raw: dict[str, Any], problems: list[str]) -> dict[str, Any]:
    """Overrides from an execution input or CLI flags, each checked for its real type (settings are
    checked against their bounds later, with the rest of the config). A bad value is left out."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in OVERRIDE_KEYS:
            problems.append(f"override {key!r} is not allowed{_suggest(key, OVERRIDE_KEYS)} "
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


def parse_bool(value: Any) -> bool | None:
    """A JSON boolean, or the string "true"/"false" in any case; anything else (1, "yes", "") is None."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in TRUE_STRINGS | FALSE_STRINGS:
        return value.strip().lower() in TRUE_STRINGS
    return None


def _parse_settings(raw: Any, where: str, problems: list[str], base: Settings) -> Settings:
    if not isinstance(raw, dict):
        problems.append(f"{where} must be an object")
        return base
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key == "$comment":
            continue
        bound = SETTING_BOUNDS.get(key)
        if key in BOOL_SETTINGS:
            parsed = parse_bool(value)
            if parsed is None:
                problems.append(f"{where}.{key} must be true or false, got {value!r}")
            else:
                values[key] = parsed
        elif key in TEXT_SETTINGS:
            if problem := TEXT_SETTINGS[key](value):
                problems.append(f"{where}.{problem}")
            else:
                values[key] = value if key != "snapshot" or value == "auto" else parse_bool(value)
        elif bound is None:
            problems.append(f"{where}: unknown setting {key!r}{_suggest(key, SETTING_NAMES)}")
        elif not bound.check(value):
            problems.append(f"{where}.{key} must be {bound.what}, got {value!r}")
        else:
            values[key] = value
    return replace(base, **values)


def _parse_connection(raw: Any, where: str, problems: list[str], required: tuple[str, ...],
                      allowed: frozenset[str]) -> dict[str, Any]:
    if not isinstance(raw, dict):
        problems.append(f"{where} must be an object of connection settings")
        return {}
    for key in required:
        if key not in raw:
            problems.append(f"{where}.{key} is required")
    for key, value in raw.items():
        if key == "$comment":
            continue
        if key in SNOWFLAKE_SETTING_KEYS and allowed is SNOWFLAKE_KEYS:
            problems.append(_owned_by_setting(where, key))
        elif key not in allowed:
            problems.append(f"{where}: unknown connection setting {key!r}{_suggest(key, allowed)}; "
                            "it would not reach the driver")
        if key == "session_parameters" and isinstance(value, dict):
            problems.extend(_owned_by_setting(f"{where}.session_parameters", k) for k in value
                            if str(k).upper() in SNOWFLAKE_SETTING_KEYS)
        if key in SECRET_KEYS and not _is_reference(value):
            problems.append(
                f"{where}.{key} must be a reference like ${{ENV_VAR}} or "
                f"{SECRETS_MANAGER_PREFIX}<secret-id>#<key>, never a literal secret"
            )
        for name in _ENV_REF.findall(json.dumps(value)):
            if name not in os.environ:
                problems.append(f"{where}.{key} references ${{{name}}}, which is not set in the environment")
    return {k: v for k, v in raw.items() if k != "$comment"}


def _owned_by_setting(where: str, key: str) -> str:
    setting = SNOWFLAKE_SETTING_KEYS.get(key) or SNOWFLAKE_SETTING_KEYS[key.upper()]
    return (f"{where}: {key!r} is set by the engine from the setting {setting!r} (in defaults or an override), "
            "so that the memory budget counts what the connector holds; move it there")


def _is_reference(value: Any) -> bool:
    return isinstance(value, str) and (
        bool(_ENV_REF.fullmatch(value)) or value.startswith(SECRETS_MANAGER_PREFIX)
    )


def _parse_tables(
    raw: Any, where: str, problems: list[str], default_db: str | None, default_schema: str | None
) -> list[TableSpec]:
    if not isinstance(raw, list) or not raw:
        problems.append(f"{where}.tables must be a non-empty list")
        return []
    tables: list[TableSpec] = []
    seen_targets: dict[str, str] = {}
    for i, item in enumerate(raw):
        label = f"{where}.tables[{i}]"
        if not isinstance(item, dict):
            problems.append(f"{label} must be an object")
            continue
        if isinstance(item.get("source"), str):
            label = f"{label} ({item['source']})"
        spec = _parse_table(item, label, problems, default_db, default_schema)
        if spec is None:
            continue
        if spec.target_name in seen_targets:
            problems.append(f"{label}: target {spec.target_name} is also the target of {seen_targets[spec.target_name]}")
        seen_targets[spec.target_name] = label
        tables.append(spec)
    sources = Counter(t.source for t in tables)
    return [replace(t, entry=f"{'.'.join(t.source)} → {t.target_name}") if sources[t.source] > 1 else t for t in tables]


def _parse_table(
    item: dict[str, Any], label: str, problems: list[str], default_db: str | None, default_schema: str | None
) -> TableSpec | None:
    before = len(problems)
    for key in item:
        if key == "$comment":
            continue
        if key not in TABLE_OPTIONS:
            problems.append(f"{label}: unknown option {key!r}{_suggest(key, TABLE_OPTIONS)}")

    source = item.get("source")
    source_parts: tuple[str, ...] = ()
    if not isinstance(source, str) or not source.strip():
        problems.append(f"{label}: 'source' is required (TABLE, SCHEMA.TABLE or DB.SCHEMA.TABLE)")
    else:
        try:
            source_parts = split_qualified(source, "upper")
        except ValueError as exc:
            problems.append(f"{label}: source: {exc}")
        if len(source_parts) > 3:
            problems.append(f"{label}: source {source!r} has more than three parts")
        elif source_parts and len(source_parts) < 3:
            if default_db is None or default_schema is None:
                problems.append(f"{label}: source must be DB.SCHEMA.TABLE when database/schema come from the environment")
            else:
                defaults = (split_qualified(default_db, "upper")[0], split_qualified(default_schema, "upper")[0])
                source_parts = defaults[: 3 - len(source_parts)] + source_parts

    target_raw = item.get("target")
    target: tuple[str, str] = ("public", "")
    if target_raw is None and source_parts:
        table = source_parts[-1]
        target = ("public", table.lower() if table.isupper() else table)
    elif not isinstance(target_raw, str):
        problems.append(f"{label}: 'target' must be a string like schema.table")
    else:
        try:
            parts = split_qualified(target_raw, "lower")
            if len(parts) == 1:
                target = ("public", parts[0])
            elif len(parts) == 2:
                target = (parts[0], parts[1])
            else:
                problems.append(f"{label}: target {target_raw!r} must be TABLE or SCHEMA.TABLE")
        except ValueError as exc:
            problems.append(f"{label}: target: {exc}")
    for part in target:
        if problem := pg_identifier_problem(part):
            problems.append(f"{label}: target {problem}")

    columns = item.get("chunking_columns", [])
    types = item.get("chunking_column_types", [])
    if not isinstance(columns, list) or not all(isinstance(c, str) and c for c in columns):
        problems.append(f"{label}: chunking_columns must be a list of column names")
        columns = []
    if not isinstance(types, list) or not all(isinstance(t, str) for t in types):
        problems.append(f"{label}: chunking_column_types must be a list of types")
        types = []
    if len(columns) > 1:
        problems.append(f"{label}: chunking on more than one column is not supported yet; give one column")
    if types and len(types) != len(columns):
        problems.append(f"{label}: chunking_column_types has {len(types)} entries for {len(columns)} chunking_columns")
    for t in types:
        if t not in CHUNKING_TYPES:
            problems.append(f"{label}: chunking_column_types entry {t!r} must be one of {', '.join(CHUNKING_TYPES)}")
    if columns and not types:
        problems.append(f"{label}: chunking_column_types is required with chunking_columns (one of {', '.join(CHUNKING_TYPES)})")

    source_filter = item.get("source_filter")
    if source_filter is not None and (not isinstance(source_filter, str) or not source_filter.strip()):
        problems.append(f"{label}: source_filter must be a non-empty SQL predicate string")
    elif source_filter is not None and (problem := sql_fragment_problem(source_filter)):
        problems.append(f"{label}: source_filter {problem}")
    for flag in ("truncate_onstart", "insert_only_mode", "build_primary_key"):
        if flag in item and not isinstance(item[flag], bool):
            problems.append(f"{label}: {flag} must be true or false")
    load_mode = item.get("load_mode", "in_place")
    if load_mode not in LOAD_MODES:
        problems.append(f"{label}: load_mode {load_mode!r} must be one of {', '.join(LOAD_MODES)}")
    merge_key = item.get("merge_key", [])
    if not isinstance(merge_key, list) or not all(isinstance(c, str) and c.strip() for c in merge_key):
        problems.append(f"{label}: merge_key must be a list of source column names")
        merge_key = []
    watermarks = {}
    for key in ("source_watermark", "target_watermark"):
        value = item.get(key)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            problems.append(f"{label}: {key} must be a column name")
        watermarks[key] = value if isinstance(value, str) and value.strip() else None
    nul_bytes = item.get("nul_bytes")
    if nul_bytes is not None and (problem := nul_policy_problem(nul_bytes)):
        problems.append(f"{label}: {problem}")
    lag = item.get("watermark_lag", 0)
    if isinstance(lag, bool) or not isinstance(lag, (int, float)) or lag < 0:
        problems.append(f"{label}: watermark_lag must be a number of at least 0 (seconds for a date or timestamp "
                        f"watermark, units for a number), got {lag!r}")
        lag = 0
    chunk_rows = item.get("chunk_rows")
    if chunk_rows is not None and (not isinstance(chunk_rows, int) or isinstance(chunk_rows, bool) or chunk_rows <= 0):
        problems.append(f"{label}: chunk_rows must be a positive integer")

    insert_only = item.get("insert_only_mode") if isinstance(item.get("insert_only_mode"), bool) else None
    basic_problems = len(problems) > before
    spec = TableSpec(
        source=source_parts,
        target=target,
        chunking_columns=() if basic_problems else tuple(split_qualified(c, "upper")[0] for c in columns),
        chunking_column_types=tuple(types),
        source_filter=source_filter,
        truncate_onstart=item.get("truncate_onstart") is True,
        insert_only_mode=(watermarks["source_watermark"] is None) if insert_only is None else insert_only,
        chunk_rows=chunk_rows,
        build_primary_key=item.get("build_primary_key", True) is not False,
        load_mode=load_mode if load_mode in LOAD_MODES else "in_place",
        merge_key=tuple(_column_name(c) for c in merge_key),
        source_watermark=_column_name(watermarks["source_watermark"]) if watermarks["source_watermark"] else None,
        target_watermark=watermarks["target_watermark"],
        watermark_lag=lag if isinstance(lag, (int, float)) and lag >= 0 else 0,
        nul_bytes=nul_bytes,
    )
    problems.extend(f"{label}: {p}" for p in combination_problems(spec, explicit_insert_only=insert_only is not None))
    return None if len(problems) > before else spec


def _column_name(name: str) -> str:
    """A Snowflake column as written in the config: unquoted folds to upper case, "Quoted" keeps its case."""
    try:
        return split_qualified(name, "upper")[0]
    except ValueError:
        return name


def combination_problems(spec: TableSpec, explicit_insert_only: bool = True) -> list[str]:
    """Options that contradict each other, in the config or after an execution's overrides."""
    problems = []
    if spec.load_mode == "swap":
        if spec.truncate_onstart:
            problems.append("load_mode swap never truncates the live table (it loads a shadow table and swaps it "
                            "in); remove truncate_onstart")
        if spec.merges and (explicit_insert_only or not spec.source_watermark):
            problems.append("load_mode swap reloads the whole table into an empty shadow: insert_only_mode=false "
                            "(merge) has nothing to merge into; remove one of them")
        if spec.source_watermark:
            problems.append("load_mode swap reloads the whole table: it cannot be combined with source_watermark")
        if spec.merge_key:
            problems.append("merge_key is used by catch-up and merge loads only, not by load_mode swap")
    if spec.target_watermark and not spec.source_watermark:
        problems.append("target_watermark needs source_watermark (the source column that orders changes)")
    if spec.watermark_lag and not spec.source_watermark:
        problems.append("watermark_lag needs source_watermark")
    if spec.source_watermark:
        if spec.insert_only_mode and explicit_insert_only:
            problems.append("a watermark load merges changed rows: insert_only_mode must be false or left out")
        if spec.truncate_onstart:
            problems.append("a watermark load continues from the last window: it cannot truncate_onstart")
    return problems


def _select_tables(tables: list[TableSpec], wanted: list[str], problems: list[str]) -> list[TableSpec]:
    """The configured tables an override names (its type was checked by _parse_overrides)."""
    chosen: list[TableSpec] = []
    for w in wanted:
        try:
            folded = split_qualified(w, "upper")
        except ValueError as exc:
            problems.append(f"override 'tables': {w!r} is not a table name: {exc}")
            continue
        match = [t for t in tables if t.source[-len(folded):] == folded or t.target_name == w]
        if not match:
            problems.append(f"override 'tables': {w!r} is not a configured table ({', '.join(t.name for t in tables)})")
        chosen.extend(m for m in match if m not in chosen)
    return chosen


def pg_identifier_problem(name: str) -> str | None:
    """Why PostgreSQL would not keep this identifier as written (it truncates beyond 63 bytes), or None."""
    size = len(name.encode())
    if size <= PG_MAX_IDENTIFIER_BYTES:
        return None
    kept = name.encode()[:PG_MAX_IDENTIFIER_BYTES].decode(errors="ignore")
    return (f"name {name!r} is {size} bytes; PostgreSQL keeps at most {PG_MAX_IDENTIFIER_BYTES} and would "
            f"silently call it {kept!r}: choose a shorter name")


def sql_fragment_problem(text: str) -> str | None:
    """Why a raw SQL predicate from the config cannot be embedded safely in the engine's statements, or None:
    unbalanced quotes or parentheses, a statement separator or a comment outside quotes."""
    depth, quote, i = 0, "", 0
    while i < len(text):
        ch = text[i]
        if quote:
            if ch == quote:
                if text[i + 1:i + 2] == quote:  # doubled quote inside a quoted string or identifier
                    i += 1
                else:
                    quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                return f"has a ')' without its '(' at position {i + 1}: {text!r}"
        elif ch == ";":
            return f"contains ';' outside quotes: it must be one predicate, not statements: {text!r}"
        elif text[i:i + 2] in ("--", "/*"):
            return f"contains a comment ({text[i:i + 2]}) outside quotes, which would hide the rest of the statement: {text!r}"
        i += 1
    if quote:
        return f"has an unterminated {quote} quote: {text!r}"
    if depth:
        return f"has {depth} unclosed '(': {text!r}"
    return None


def _override_tables(tables: list[TableSpec], values: dict[str, Any], problems: list[str]) -> list[TableSpec]:
    """Apply table-option overrides to every selected table; contradictions are problems, as in config.json."""
    changed = []
    for spec in tables:
        spec = replace(spec, **values)
        problems.extend(f"override {', '.join(sorted(values))} on {spec.name}: {p}" for p in combination_problems(spec))
        changed.append(spec)
    return changed


def _suggest(key: str, options: Any) -> str:
    close = difflib.get_close_matches(key, sorted(options), n=3)
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""


def _resolve_tree(tree: dict[str, Any], cache: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out[key] = _resolve_tree(value, cache)
        elif isinstance(value, str):
            out[key] = _resolve_value(value, cache)
        else:
            out[key] = value
    if "port" in out and isinstance(out["port"], str) and out["port"].isdigit():
        out["port"] = int(out["port"])
    return out


def _resolve_value(value: str, cache: dict[str, str]) -> str:
    if value.startswith(SECRETS_MANAGER_PREFIX):
        if value not in cache:
            cache[value] = _fetch_secret(value[len(SECRETS_MANAGER_PREFIX):])
        return cache[value]
    return _ENV_REF.sub(lambda m: os.environ.get(m.group(1), ""), value)


def _fetch_secret(reference: str) -> str:
    import boto3

    secret_id, _, json_key = reference.partition("#")
    response = boto3.client("secretsmanager").get_secret_value(SecretId=secret_id)
    secret = response["SecretString"]
    if not json_key:
        return secret
    try:
        return str(json.loads(secret)[json_key])
    except (ValueError, KeyError):
        raise ConfigError([f"secret {secret_id!r} has no JSON key {json_key!r}"]) from None
