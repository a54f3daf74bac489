"""The table entries of a source: every option of a table, checked alone and in combination, and the
overrides an execution may apply to every selected table."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace
from typing import Any

from lib.config.settings import nul_policy_problem, suggest
from lib.identifiers import PG_MAX_IDENTIFIER_BYTES, split_qualified

CHUNKING_TYPES = ("date", "numeric", "string", "timestamp")  # timestamp: chunked as date


TABLE_OPTIONS = {
    "source", "target", "chunking_columns", "chunking_column_types", "source_filter",
    "truncate_onstart", "insert_only_mode", "chunk_rows", "build_primary_key",
    "load_mode", "merge_key", "source_watermark", "target_watermark", "watermark_lag", "nul_bytes",
    "exclude",  # a table pattern's only (lib/config/patterns.py)
    "deletes", "schema_changes",
}

DELETE_MODES = ("ignore", "hard", "soft")

GLOB_CHARS = "*?["


LOAD_MODES = ("in_place", "swap")

# What planning does when the source's columns differ from the target's (lib/target/evolution.py).
SCHEMA_CHANGES = ("evolve", "freeze")


# Table options an execution may override for every selected table (raw SQL such as source_filter and
# per-table column names are config-only).
TABLE_OVERRIDE_KEYS = {"load_mode", "insert_only_mode"}


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
    schema_changes: str = "evolve"  # evolve: add and widen target columns; freeze: fail on any difference
    entry: str | None = None  # the ledger name when one source table feeds several targets
    pattern: str | None = None  # the table pattern (as written) that matched this table; None: listed
    deletes: str = "ignore"  # merge and watermark tables: hard | soft removes target rows the source no longer has

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


def parse_tables(
    raw: Any, where: str, problems: list[str], default_db: str | None, default_schema: str | None
) -> tuple[list[TableSpec], list[tuple[str, dict[str, Any]]]]:
    """The listed tables, and the entries that name tables by a pattern (label, entry), left to
    lib/config/patterns.py."""
    if not isinstance(raw, list) or not raw:
        problems.append(f"{where}.tables must be a non-empty list")
        return [], []
    tables: list[TableSpec] = []
    patterns: list[tuple[str, dict[str, Any]]] = []
    seen_targets: dict[str, str] = {}
    for i, item in enumerate(raw):
        label = f"{where}.tables[{i}]"
        if not isinstance(item, dict):
            problems.append(f"{label} must be an object")
            continue
        if isinstance(item.get("source"), str):
            label = f"{label} ({item['source']})"
            if glob_outside_table_part(item["source"]):
                problems.append(f"{label}: only the table part may be a glob; name the database and schema")
                continue
            if names_a_pattern(item["source"]):
                patterns.append((label, item))
                continue
        if "exclude" in item:
            problems.append(f"{label}: exclude belongs to a table pattern (a source such as SCHEMA.* or SCHEMA.PREFIX_*)")
        spec = parse_table(item, label, problems, default_db, default_schema)
        if spec is None:
            continue
        if spec.target_name in seen_targets:
            problems.append(f"{label}: target {spec.target_name} is also the target of {seen_targets[spec.target_name]}")
        seen_targets[spec.target_name] = label
        tables.append(spec)
    sources = Counter(t.source for t in tables)
    return [replace(t, entry=f"{'.'.join(t.source)} → {t.target_name}") if sources[t.source] > 1 else t
            for t in tables], patterns


def glob_outside_table_part(source: str) -> bool:
    try:
        parts = split_qualified(source, "upper")
    except ValueError:
        return False
    return any(c in part for part in parts[:-1] for c in GLOB_CHARS)


def names_a_pattern(source: str) -> bool:
    """A source whose table part is a glob. Quoting keeps a glob's case (`"Audit*"`); a table whose name
    holds *, ? or [ is listed by escaping that character as a glob: `[*]`."""
    try:
        parts = split_qualified(source, "upper")
    except ValueError:
        return False
    return bool(parts) and any(c in parts[-1] for c in GLOB_CHARS)


def parse_table(
    item: dict[str, Any], label: str, problems: list[str], default_db: str | None, default_schema: str | None
) -> TableSpec | None:
    before = len(problems)
    for key in item:
        if key in ("$comment", "exclude"):
            continue
        if key not in TABLE_OPTIONS:
            problems.append(f"{label}: unknown option {key!r}{suggest(key, TABLE_OPTIONS)}")

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
    schema_changes = item.get("schema_changes", "evolve")
    if schema_changes not in SCHEMA_CHANGES:
        problems.append(f"{label}: schema_changes {schema_changes!r} must be one of {', '.join(SCHEMA_CHANGES)}")
    chunk_rows = item.get("chunk_rows")
    if chunk_rows is not None and (not isinstance(chunk_rows, int) or isinstance(chunk_rows, bool) or chunk_rows <= 0):
        problems.append(f"{label}: chunk_rows must be a positive integer")

    deletes = item.get("deletes", "ignore")
    if deletes not in DELETE_MODES:
        problems.append(f"{label}: deletes {deletes!r} must be one of {', '.join(DELETE_MODES)}")
        deletes = "ignore"
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
        deletes=deletes,
        schema_changes=schema_changes if schema_changes in SCHEMA_CHANGES else "evolve",
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
    if spec.deletes != "ignore" and not spec.repeatable:
        problems.append(f"deletes {spec.deletes} applies to merge (insert_only_mode false) and watermark tables, which "
                        "keep a target in step with the source; a copy reloads the rows in scope, and a catch-up only "
                        "adds: leave deletes out")
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


def select_tables(tables: list[TableSpec], wanted: list[str], problems: list[str]) -> list[TableSpec]:
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


def override_tables(tables: list[TableSpec], values: dict[str, Any], problems: list[str]) -> list[TableSpec]:
    """Apply table-option overrides to every selected table; contradictions are problems, as in config.json."""
    changed = []
    for spec in tables:
        spec = replace(spec, **values)
        problems.extend(f"override {', '.join(sorted(values))} on {spec.name}: {p}" for p in combination_problems(spec))
        changed.append(spec)
    return changed
