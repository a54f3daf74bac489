"""Parsing of dotted, optionally double-quoted identifiers as written in config.json.

Unquoted parts fold the way the owning database folds them (Snowflake: upper, PostgreSQL: lower);
quoted parts keep their exact spelling, so `"MixedCase"` survives the trip.
"""

from __future__ import annotations

from typing import Literal

Fold = Literal["upper", "lower"]

# PostgreSQL truncates longer identifiers silently (NAMEDATALEN - 1): two long names could become one.
PG_MAX_IDENTIFIER_BYTES = 63


def split_qualified(name: str, fold: Fold) -> tuple[str, ...]:
    """Split `db."My Schema".tbl` into its parts, folding unquoted parts. Raises ValueError."""
    parts: list[str] = []
    i, n = 0, len(name)
    while i < n:
        if name[i] == '"':
            j = i + 1
            buf = []
            while True:
                if j >= n:
                    raise ValueError(f"unterminated quoted identifier in {name!r}")
                if name[j] == '"':
                    if j + 1 < n and name[j + 1] == '"':
                        buf.append('"')
                        j += 2
                        continue
                    break
                buf.append(name[j])
                j += 1
            parts.append("".join(buf))
            i = j + 1
        else:
            j = name.find(".", i)
            j = n if j == -1 else j
            raw = name[i:j].strip()
            if not raw or '"' in raw:
                raise ValueError(f"malformed identifier {name!r}")
            parts.append(raw.upper() if fold == "upper" else raw.lower())
            i = j
        if i < n:
            if name[i] != ".":
                raise ValueError(f"malformed identifier {name!r}")
            i += 1
            if i == n:
                raise ValueError(f"identifier {name!r} ends with a dot")
    if not parts:
        raise ValueError("empty identifier")
    return tuple(parts)


def quote_snowflake(ident: str) -> str:
    """Quote one Snowflake identifier (the connector has no SQL composition module) for a statement run by
    lib.snowflake_source.run, which always interpolates parameters: a `%` in the name is written `%%`."""
    return '"' + ident.replace('"', '""').replace("%", "%%") + '"'


def quote_snowflake_raw(ident: str) -> str:
    """Quote one Snowflake identifier inside raw SQL (a filter), which is escaped as a whole when embedded."""
    return '"' + ident.replace('"', '""') + '"'


def snowflake_name(parts: tuple[str, ...]) -> str:
    return ".".join(quote_snowflake(p) for p in parts)


def raw_sql(fragment: str) -> str:
    """A raw SQL fragment from the config (source_filter) inside a statement: its `%` are not placeholders."""
    return fragment.replace("%", "%%")


def where_sql(source_filter: str | None) -> str:
    """` WHERE (filter)` for a statement, or nothing: a config's source_filter, its `%` escaped."""
    return f" WHERE ({raw_sql(source_filter)})" if source_filter else ""


def and_sql(source_filter: str | None) -> str:
    """` AND (filter)` after a statement's own condition, or nothing."""
    return f" AND ({raw_sql(source_filter)})" if source_filter else ""
