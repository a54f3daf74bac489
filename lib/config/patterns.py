"""Table entries that name many tables: `SCHEMA.*`, a glob such as `SHOP.CUST*`, with `exclude` globs.

A pattern is checked like any table entry (its options once, for every table it will match), then expanded
against the table names Snowflake lists (lib/plan/discover.py): each match becomes a TableSpec as if it had
been listed, with the target named by the usual rule. A table listed on its own keeps its own entry.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from lib.config.tables import TableSpec, parse_table, pg_identifier_problem
from lib.identifiers import split_qualified


@dataclass(frozen=True)
class TablePattern:
    database: str
    schema: str
    glob: str  # matched against table names as Snowflake stores them (case-sensitive)
    exclude: tuple[str, ...]
    target_schema: str
    template: TableSpec  # the entry's options; source and target are filled per match
    text: str  # the entry's source as written, for messages and the fingerprint

    def matches(self, name: str) -> bool:
        return fnmatch.fnmatchcase(name, self.glob) and not any(fnmatch.fnmatchcase(name, x) for x in self.exclude)

    def spec_for(self, name: str) -> TableSpec:
        target = name.lower() if name.isupper() else name
        return replace(self.template, source=(self.database, self.schema, name), target=(self.target_schema, target),
                       pattern=self.text)

    def identity(self) -> dict[str, Any]:
        """What the run's fingerprint keeps of the pattern: the entry as written, not what it matched."""
        return {"pattern": [self.database, self.schema, self.glob], "exclude": sorted(self.exclude),
                "target_schema": self.target_schema}


def exclude_globs(raw: Any, label: str, problems: list[str]) -> tuple[str, ...]:
    """`exclude`: table names or globs, folded like names (unquoted to upper case)."""
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(x, str) and x.strip() for x in raw):
        problems.append(f"{label}: exclude must be a list of table names or globs (e.g. [\"TMP_*\", \"AUDIT_LOG\"])")
        return ()
    out = []
    for x in raw:
        try:
            out.append(split_qualified(x, "upper")[-1])
        except ValueError as exc:
            problems.append(f"{label}: exclude {x!r}: {exc}")
    return tuple(out)


def target_schema_of(raw: Any, label: str, problems: list[str]) -> str:
    """A pattern's target: left out (schema public) or `schema.*` (that schema); tables keep the usual names."""
    if raw is None:
        return "public"
    if isinstance(raw, str) and raw.endswith(".*"):
        try:
            parts = split_qualified(raw[:-2], "lower")
        except ValueError as exc:
            problems.append(f"{label}: target: {exc}")
            return "public"
        if len(parts) == 1:
            return parts[0]
    problems.append(f"{label}: the target of a table pattern must be left out (schema public) or be SCHEMA.* "
                    f"(each match keeps its own table name), got {raw!r}")
    return "public"


def parse_patterns(entries: list[tuple[str, dict[str, Any]]], problems: list[str], default_db: str | None,
                   default_schema: str | None) -> list[TablePattern]:
    """Each pattern entry, its options checked once as a table entry's are (every problem listed)."""
    patterns = []
    for label, item in entries:
        before = len(problems)
        excludes = exclude_globs(item.get("exclude"), label, problems)
        target_schema = target_schema_of(item.get("target"), label, problems)
        template = parse_table({k: v for k, v in item.items() if k not in ("target", "exclude")}, label, problems,
                               default_db, default_schema)
        if template is None or len(problems) > before:
            continue
        if len(template.source) != 3:
            problems.append(f"{label}: a table pattern is DB.SCHEMA.GLOB or SCHEMA.GLOB")
            continue
        database, schema, glob = template.source
        patterns.append(TablePattern(database, schema, glob, excludes, target_schema, template, item["source"]))
    return patterns


def expand(listed: Iterable[TableSpec], patterns: Iterable[TablePattern],
           found: dict[tuple[str, str], list[str]]) -> tuple[list[TableSpec], list[str]]:
    """The listed tables, then each pattern's matches among `found` ((db, schema) → table names) that are not
    listed on their own and not matched by an earlier pattern, in name order. Returns them and the problems: two
    tables that would load one target, a target name PostgreSQL would truncate."""
    tables = list(listed)
    sources = {t.source for t in tables}
    targets = {t.target_name: t.name for t in tables}
    problems = []
    for pattern in patterns:
        for name in sorted(found.get((pattern.database, pattern.schema), [])):
            if not pattern.matches(name) or (pattern.database, pattern.schema, name) in sources:
                continue
            spec = pattern.spec_for(name)
            if problem := pg_identifier_problem(spec.target[1]):
                problems.append(f"{pattern.text} matches {spec.name}, whose target {problem}: exclude it, or list it "
                                "with a target of its own")
                continue
            if spec.target_name in targets:
                problems.append(f"{pattern.text} matches {spec.name}, whose target {spec.target_name} is also the "
                                f"target of {targets[spec.target_name]}: exclude it or list it with its own target")
                continue
            sources.add(spec.source)
            targets[spec.target_name] = spec.name
            tables.append(spec)
    return tables, problems
