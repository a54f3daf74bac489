"""Protected full reload (load_mode swap): load a shadow table, reconcile it, then swap it in.

- The shadow is created like the live table (columns, defaults, identity, CHECK and NOT NULL
  constraints) when the table is planned, and recorded in `migration_status.managed_tables`.
- Chunks COPY into the shadow; the live table is not touched while they run.
- After the shadow reconciles, `prepare` builds the live table's indexes, key constraints and foreign
  keys on the shadow (a foreign key of the table to itself is pointed at the shadow, so it keeps
  pointing at the table it lives on) and gives it the live table's grants, owner and comment, then
  ANALYZEs it, in transactions that never lock the live table; a crash leaves what was built, and the
  next attempt builds only what is missing.
- Then ONE short transaction takes the live table's lock (waiting at most `lock_timeout_seconds`; a
  timeout retries only this step), checks again what cannot be carried, carries the views that read
  the live table (dropped and created again from their definitions, with their options, owner, grants
  and comments, so they read the new table), moves owned sequences, renames live →
  `<table>__backup_<run_id>` (its index and constraint names get a suffix too) and shadow → live (its
  index and constraint names become the live ones). A failure anywhere rolls all of it back.
- What cannot be carried over (foreign keys from other tables, materialized views or views with
  triggers or rules of their own, rules and triggers on the table, row security, publications,
  partitions, column privileges, extended statistics) is refused with a list, when the table is
  planned and again inside the swap.
- `rollback` puts the newest backup back in one transaction with the same checks and carries the same
  views, grants, owner and comment; `cleanup` drops backups beyond `keep_backups` and shadows no live
  run will finish.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from lib import faults
from lib.errors import FatalError
from lib.identifiers import PG_MAX_IDENTIFIER_BYTES
from lib.ledger.schema import SCHEMA
from lib.target.postgres import table_ident


def derived_name(base: str, suffix: str) -> str:
    """`base + suffix` within PostgreSQL's 63 bytes: a long base is cut and made unique by a hash."""
    name = base + suffix
    if len(name.encode()) <= PG_MAX_IDENTIFIER_BYTES:
        return name
    tag = "_" + hashlib.sha256(base.encode()).hexdigest()[:8]
    room = PG_MAX_IDENTIFIER_BYTES - len((tag + suffix).encode())
    return base.encode()[:room].decode(errors="ignore") + tag + suffix


def shadow_name(table: str, run_id: int) -> str:
    return derived_name(table, f"__shadow_{run_id}")


def backup_name(table: str, run_id: int) -> str:
    return derived_name(table, f"__backup_{run_id}")


def _oid(conn: psycopg.Connection[Any], target: tuple[str, str]) -> int:
    row = conn.execute("SELECT %s::regclass::oid", (table_ident(target).as_string(conn),)).fetchone()
    assert row is not None
    return int(row[0])


# The views that read a table, directly or through other views, in the order they can be created again.
_VIEW_TREE = """
WITH RECURSIVE reads(oid, depth) AS (
    SELECT DISTINCT r.ev_class, 1 FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid
    WHERE d.refobjid = %(oid)s AND d.classid = 'pg_rewrite'::regclass AND r.ev_class <> %(oid)s
    UNION
    SELECT r.ev_class, reads.depth + 1 FROM reads JOIN pg_depend d ON d.refobjid = reads.oid
    JOIN pg_rewrite r ON r.oid = d.objid AND d.classid = 'pg_rewrite'::regclass AND r.ev_class <> reads.oid
    WHERE reads.depth < 50)
SELECT oid, max(depth) AS depth FROM reads GROUP BY oid"""

# What depends on the table and cannot be dropped and created again by a swap: a materialized view (its rows
# would need a refresh), a view with triggers or rules of its own, or an object other than a view that
# depends on one of those views (a function body, a policy).
_UNCARRIABLE_DEPENDENTS = f"""
WITH tree AS ({_VIEW_TREE})
SELECT CASE c.relkind WHEN 'm' THEN 'materialized view ' ELSE 'view ' END || c.oid::regclass::text,
       CASE WHEN c.relkind = 'm' THEN ' (its rows would need a refresh)'
            WHEN EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = c.oid) THEN ' (it has triggers)'
            ELSE ' (it has rules of its own)' END
FROM tree JOIN pg_class c ON c.oid = tree.oid
WHERE c.relkind = 'm' OR EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = c.oid)
   OR EXISTS (SELECT 1 FROM pg_rewrite r WHERE r.ev_class = c.oid AND r.rulename <> '_RETURN')
UNION ALL
SELECT DISTINCT pg_describe_object(d.classid, d.objid, d.objsubid), ' (through view ' || tree.oid::regclass::text || ')'
FROM tree JOIN pg_depend d ON d.refobjid = tree.oid AND d.deptype = 'n'
WHERE d.classid <> 'pg_rewrite'::regclass AND d.classid <> 'pg_type'::regclass"""

# Each query lists what keeps a table from being swapped; %(oid)s is the live table.
_BLOCKERS = [
    ("foreign key {} on {} references it (it would keep pointing at the backup)",
     "SELECT conname, conrelid::regclass::text FROM pg_constraint WHERE contype = 'f' AND confrelid = %(oid)s "
     "AND conrelid <> %(oid)s"),
    ("{} depends on it and cannot be carried to the new table{}", _UNCARRIABLE_DEPENDENTS),
    ("rule {} is defined on it{}",
     "SELECT rulename, '' FROM pg_rewrite WHERE ev_class = %(oid)s AND rulename <> '_RETURN'"),
    ("trigger {} is defined on it{}",
     "SELECT tgname, '' FROM pg_trigger WHERE tgrelid = %(oid)s AND NOT tgisinternal"),
    ("row level security or policy {} is defined on it{}",
     "SELECT polname, '' FROM pg_policy WHERE polrelid = %(oid)s UNION ALL "
     "SELECT 'ENABLE ROW LEVEL SECURITY', '' FROM pg_class WHERE oid = %(oid)s AND relrowsecurity"),
    ("it is in publication {}{}",
     "SELECT p.pubname, '' FROM pg_publication_rel r JOIN pg_publication p ON p.oid = r.prpubid "
     "WHERE r.prrelid = %(oid)s"),
    ("it takes part in inheritance or partitioning ({}{})",
     "SELECT inhparent::regclass::text, ' is a parent' FROM pg_inherits WHERE inhrelid = %(oid)s UNION ALL "
     "SELECT inhrelid::regclass::text, ' is a child' FROM pg_inherits WHERE inhparent = %(oid)s UNION ALL "
     "SELECT relname, ' is partitioned' FROM pg_class WHERE oid = %(oid)s AND relkind = 'p'"),
    ("column {} has its own privileges{}",
     "SELECT attname, '' FROM pg_attribute WHERE attrelid = %(oid)s AND attacl IS NOT NULL AND NOT attisdropped"),
    ("extended statistics {} are defined on it{}",
     "SELECT stxname, '' FROM pg_statistic_ext WHERE stxrelid = %(oid)s"),
    ("its replica identity is an index ({}{})",
     "SELECT 'REPLICA IDENTITY USING INDEX', '' FROM pg_class WHERE oid = %(oid)s AND relreplident = 'i'"),
]


def blockers(conn: psycopg.Connection[Any], live: tuple[str, str]) -> list[str]:
    """Everything the live table has that a swap could not carry over to the new table."""
    oid = _oid(conn, live)
    found = []
    for message, query in _BLOCKERS:
        for name, detail in conn.execute(query, {"oid": oid}).fetchall():
            found.append(message.format(name, detail))
    return found


def refuse_if_blocked(conn: psycopg.Connection[Any], live: tuple[str, str]) -> None:
    found = blockers(conn, live)
    if found:
        raise FatalError(
            f"load_mode swap cannot replace {'.'.join(live)}: {'; '.join(found)}. Remove these (and recreate "
            "them after the reload), or load with load_mode in_place and truncate_onstart (plain views are carried "
            "over by the swap)")


def create_shadow(conn: psycopg.Connection[Any], live: tuple[str, str], run_id: int, table_name: str) -> tuple[str, str]:
    """Inside the planning transaction: the shadow table, created like the live one and recorded."""
    shadow = (live[0], shadow_name(live[1], run_id))
    conn.execute(sql.SQL(
        "CREATE TABLE {} (LIKE {} INCLUDING DEFAULTS INCLUDING GENERATED INCLUDING IDENTITY INCLUDING CONSTRAINTS "
        "INCLUDING STORAGE INCLUDING COMPRESSION INCLUDING COMMENTS)").format(table_ident(shadow), table_ident(live)))
    record(conn, run_id, table_name, live, "shadow", shadow, "loading")
    return shadow


def record(conn: psycopg.Connection[Any], run_id: int, table_name: str, live: tuple[str, str], kind: str,
           obj: tuple[str, str], state: str, name_map: dict[str, str] | None = None) -> None:
    conn.execute(
        f"INSERT INTO {SCHEMA}.managed_tables (run_id, table_name, target_table, kind, schema_name, object_name, "
        "status, name_map) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
        (run_id, table_name, ".".join(live), kind, obj[0], obj[1], state, json.dumps(name_map or {})))


@dataclass(frozen=True)
class _Index:
    name: str
    constraint: str | None  # PRIMARY KEY / UNIQUE / EXCLUDE constraint owning the index
    definition: str  # pg_get_constraintdef, or pg_get_indexdef
    unique: bool


def _indexes(conn: psycopg.Connection[Any], oid: int) -> list[_Index]:
    rows = conn.execute(
        "SELECT c.relname, con.conname, CASE WHEN con.oid IS NULL THEN pg_get_indexdef(i.indexrelid) "
        "ELSE pg_get_constraintdef(con.oid) END, i.indisunique "
        "FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "LEFT JOIN pg_constraint con ON con.conindid = i.indexrelid AND con.conrelid = i.indrelid "
        "AND con.contype IN ('p', 'u', 'x') WHERE i.indrelid = %s ORDER BY c.relname", (oid,)).fetchall()
    return [_Index(r[0], r[1], r[2], bool(r[3])) for r in rows]


def _foreign_keys(conn: psycopg.Connection[Any], oid: int) -> list[tuple[str, str]]:
    return [(r[0], r[1]) for r in conn.execute(
        "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = %s AND contype = 'f' "
        "ORDER BY conname", (oid,)).fetchall()]


def _carry_indexes(conn: psycopg.Connection[Any], live: tuple[str, str], shadow: tuple[str, str],
                   indexes: list[_Index], run_id: int) -> dict[str, str]:
    """Build the live table's indexes and key constraints on the shadow under temporary names, each unless it is
    there already (an earlier attempt built it). Returns {live name: the shadow's temporary name}."""
    temporary = {}
    built = {r[0] for r in conn.execute("SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                                        "WHERE i.indrelid = %s", (_oid(conn, shadow),)).fetchall()}
    for index in indexes:
        temp = derived_name(index.name, f"__s{run_id}")
        temporary[index.name] = temp
        if temp in built:
            continue
        if index.constraint:
            conn.execute(sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}").format(
                table_ident(shadow), sql.Identifier(temp), sql.SQL(index.definition)))
        else:
            row = conn.execute("SELECT format('CREATE %%sINDEX %%I ON %%I.%%I USING ', %s::text, %s::text, %s::text, "
                               "%s::text)", ("UNIQUE " if index.unique else "", index.name, *live)).fetchone()
            assert row is not None
            prefix = row[0]  # quoted the way pg_get_indexdef quotes
            head = index.definition.replace(" ON ONLY ", " ON ", 1)
            if not head.startswith(prefix):
                raise FatalError(f"index {index.name} of {'.'.join(live)} cannot be carried to the new table "
                                 f"(unexpected definition {index.definition!r})")
            rebuilt = sql.SQL("CREATE {}INDEX {} ON {} USING ").format(
                sql.SQL("UNIQUE " if index.unique else ""), sql.Identifier(temp), table_ident(shadow)).as_string(conn)
            conn.execute(rebuilt + head[len(prefix):])
    return temporary


def _carry_foreign_keys(conn: psycopg.Connection[Any], live: tuple[str, str], live_oid: int,
                        shadow: tuple[str, str]) -> None:
    """The live table's own foreign keys, added to the shadow unless there. One that references the live table
    itself references the shadow instead: after the swap it points at the table it lives on, not the backup."""
    on_shadow = {n for n, _ in _foreign_keys(conn, _oid(conn, shadow))}
    referenced = conn.execute("SELECT %s::regclass::text", (live_oid,)).fetchone()
    assert referenced is not None
    own = f" REFERENCES {referenced[0]}("
    for name, definition in _foreign_keys(conn, live_oid):
        if name in on_shadow:
            continue
        if own in definition:
            definition = definition.replace(own, f" REFERENCES {table_ident(shadow).as_string(conn)}(", 1)
        conn.execute(sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}").format(
            table_ident(shadow), sql.Identifier(name), sql.SQL(definition)))


def _grant_like(conn: psycopg.Connection[Any], from_oid: int, to: tuple[str, str]) -> None:
    """The owner, grants and comment of one table (or view), given to another."""
    owner, comment = conn.execute(
        "SELECT pg_get_userbyid(relowner), obj_description(oid, 'pg_class') FROM pg_class WHERE oid = %s",
        (from_oid,)).fetchone() or (None, None)
    what = sql.SQL("VIEW" if conn.execute("SELECT relkind FROM pg_class WHERE oid = %s::regclass",
                                          (table_ident(to).as_string(conn),)).fetchone() == ("v",) else "TABLE")
    for grantee, privilege, grantable in conn.execute(
            "SELECT CASE WHEN a.grantee = 0 THEN NULL ELSE pg_get_userbyid(a.grantee) END, a.privilege_type, "
            "a.is_grantable FROM pg_class c CROSS JOIN LATERAL aclexplode(c.relacl) a WHERE c.oid = %s "
            "AND a.grantee <> c.relowner", (from_oid,)).fetchall():
        conn.execute(sql.SQL("GRANT {} ON {} TO {}{}").format(
            sql.SQL(privilege), table_ident(to), sql.Identifier(grantee) if grantee else sql.SQL("PUBLIC"),
            sql.SQL(" WITH GRANT OPTION" if grantable else "")))
    if comment is not None:
        conn.execute(sql.SQL("COMMENT ON {} {} IS {}").format(what, table_ident(to), sql.Literal(comment)))
    if owner is not None and owner != conn.execute("SELECT current_user").fetchone()[0]:
        conn.execute(sql.SQL("ALTER {} {} OWNER TO {}").format(what, table_ident(to), sql.Identifier(owner)))


def _carry_sequences(conn: psycopg.Connection[Any], live_oid: int, shadow: tuple[str, str]) -> None:
    """Sequences the live table's columns own (serial) move to the new table, so dropping the backup keeps
    them; identity sequences of the new table continue above the old one's values."""
    for sequence, column in conn.execute(
            "SELECT d.objid::regclass::text, a.attname FROM pg_depend d JOIN pg_class s ON s.oid = d.objid "
            "AND s.relkind = 'S' JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid "
            "WHERE d.refobjid = %s AND d.deptype = 'a'", (live_oid,)).fetchall():
        conn.execute(sql.SQL("ALTER SEQUENCE {} OWNED BY {}.{}").format(
            sql.SQL(sequence), table_ident(shadow), sql.Identifier(column)))
    for column, old_sequence in conn.execute(
            "SELECT attname, pg_get_serial_sequence(%s::regclass::text, attname) FROM pg_attribute WHERE attrelid = %s "
            "AND attidentity <> '' AND NOT attisdropped", (live_oid, live_oid)).fetchall():
        conn.execute(sql.SQL(
            "SELECT setval(pg_get_serial_sequence({}, {}), greatest((SELECT max({}) FROM {}), "
            "(SELECT last_value FROM {}), 1))").format(
            sql.Literal(sql.Identifier(*shadow).as_string(conn)), sql.Literal(column), sql.Identifier(column),
            table_ident(shadow), sql.SQL(old_sequence)))


@dataclass(frozen=True)
class _View:
    oid: int
    name: tuple[str, str]
    definition: str
    options: list[str]  # reloptions: security_barrier, security_invoker, check_option
    columns: list[str]
    column_comments: dict[str, str]


def _views(conn: psycopg.Connection[Any], oid: int) -> list[_View]:
    """The plain views that read the table, directly or through each other, in the order they can be created."""
    rows = conn.execute(
        f"WITH tree AS ({_VIEW_TREE}) SELECT c.oid, n.nspname, c.relname, pg_get_viewdef(c.oid), "
        "coalesce(c.reloptions, '{}'), "
        "(SELECT array_agg(a.attname ORDER BY a.attnum) FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 "
        "AND NOT a.attisdropped), "
        "(SELECT jsonb_object_agg(a.attname, d.description) FROM pg_description d JOIN pg_attribute a "
        "ON a.attrelid = d.objoid AND a.attnum = d.objsubid WHERE d.objoid = c.oid AND d.classoid = 'pg_class'::regclass "
        "AND d.objsubid > 0) "
        "FROM tree JOIN pg_class c ON c.oid = tree.oid JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relkind = 'v' ORDER BY tree.depth, c.oid", {"oid": oid}).fetchall()
    return [_View(r[0], (r[1], r[2]), r[3], list(r[4]), list(r[5] or []), dict(r[6] or {})) for r in rows]


def _park_views(conn: psycopg.Connection[Any], views: list[_View], tag: str) -> list[tuple[_View, tuple[str, str]]]:
    """Rename each view aside (keeping its grants, owner and comment to copy), readers first out of the way."""
    parked = []
    for view in reversed(views):  # those that read other views first
        aside = (view.name[0], derived_name(view.name[1], f"__{tag}"))
        conn.execute(sql.SQL("ALTER VIEW {} RENAME TO {}").format(table_ident(view.name), sql.Identifier(aside[1])))
        parked.append((view, aside))
    return list(reversed(parked))


def _recreate_views(conn: psycopg.Connection[Any], parked: list[tuple[_View, tuple[str, str]]]) -> None:
    """Create every parked view again under its own name, from its definition (which now names the new table),
    with its options, columns' names, owner, grants and comments; then drop the parked ones."""
    for view, aside in parked:
        options = sql.SQL(" WITH ({})").format(sql.SQL(", ").join(sql.SQL(o) for o in view.options)) \
            if view.options else sql.SQL("")
        conn.execute(sql.SQL("CREATE VIEW {} ({}){} AS {}").format(
            table_ident(view.name), sql.SQL(", ").join(sql.Identifier(c) for c in view.columns), options,
            sql.SQL(view.definition.rstrip().rstrip(";"))))
        _grant_like(conn, _oid(conn, aside), view.name)
        for column, comment in view.column_comments.items():
            conn.execute(sql.SQL("COMMENT ON COLUMN {}.{} IS {}").format(
                table_ident(view.name), sql.Identifier(column), sql.Literal(comment)))
    for _, aside in reversed(parked):
        conn.execute(sql.SQL("DROP VIEW {}").format(table_ident(aside)))


def _rename_indexes(conn: psycopg.Connection[Any], table: tuple[str, str], indexes: list[_Index],
                    names: dict[str, str]) -> None:
    """Rename `table`'s indexes (and the constraints owning them) from key to value of `names`."""
    owners = {i.name: i.constraint for i in indexes}
    for old, new in names.items():
        if owners.get(old):  # renaming the constraint renames its index too
            conn.execute(sql.SQL("ALTER TABLE {} RENAME CONSTRAINT {} TO {}").format(
                table_ident(table), sql.Identifier(owners[old]), sql.Identifier(new)))
        else:
            conn.execute(sql.SQL("ALTER INDEX {} RENAME TO {}").format(
                sql.Identifier(table[0], old), sql.Identifier(new)))


def prepare(conn: psycopg.Connection[Any], live: tuple[str, str], shadow: tuple[str, str], run_id: int) -> None:
    """Before the swap, without locking the live table: the live table's indexes, key constraints and foreign
    keys built on the shadow, its grants, owner and comment given to it, and fresh planner statistics. Each
    step skips what an earlier attempt built."""
    live_oid = _oid(conn, live)
    _carry_indexes(conn, live, shadow, _indexes(conn, live_oid), run_id)
    _carry_foreign_keys(conn, live, live_oid, shadow)
    _grant_like(conn, live_oid, shadow)
    conn.execute(sql.SQL("ANALYZE {}").format(table_ident(shadow)))


def swap_in(conn: psycopg.Connection[Any], live: tuple[str, str], shadow: tuple[str, str], run_id: int,
            table_name: str) -> tuple[str, str]:
    """Inside the caller's short transaction, after `prepare`: lock the live table, carry what must move at the
    swap itself (views, owned sequences, anything built on the live table since `prepare`), then live → backup
    and shadow → live. Returns the backup's name."""
    conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(table_ident(live)))
    refuse_if_blocked(conn, live)
    live_oid = _oid(conn, live)
    indexes = _indexes(conn, live_oid)
    temporary = _carry_indexes(conn, live, shadow, indexes, run_id)  # nothing to build unless the live table changed
    _carry_foreign_keys(conn, live, live_oid, shadow)
    _carry_sequences(conn, live_oid, shadow)
    views = _park_views(conn, _views(conn, live_oid), f"v{run_id}")
    backup = (live[0], backup_name(live[1], run_id))
    backup_names = {i.name: derived_name(i.name, f"__b{run_id}") for i in indexes}
    _rename_indexes(conn, live, indexes, backup_names)
    conn.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(table_ident(live), sql.Identifier(backup[1])))
    shadow_indexes = [_Index(temporary[i.name], i.constraint and temporary[i.name], i.definition, i.unique)
                      for i in indexes]
    _rename_indexes(conn, shadow, shadow_indexes, {temporary[i.name]: i.name for i in indexes})
    conn.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(table_ident(shadow), sql.Identifier(live[1])))
    _recreate_views(conn, views)
    faults.maybe_crash("during_swap")
    conn.execute(f"UPDATE {SCHEMA}.managed_tables SET status = 'swapped_in' WHERE kind = 'shadow' "
                 "AND schema_name = %s AND object_name = %s AND status = 'loading'", shadow)
    record(conn, run_id, table_name, live, "backup", backup, "kept", backup_names)
    return backup


def shadow_of(conn: psycopg.Connection[Any], run_id: int, table_name: str) -> tuple[str, str] | None:
    row = conn.execute(
        f"SELECT schema_name, object_name FROM {SCHEMA}.managed_tables WHERE run_id = %s AND table_name = %s "
        "AND kind = 'shadow' AND status = 'loading' ORDER BY object_id DESC LIMIT 1", (run_id, table_name)).fetchone()
    return (row[0], row[1]) if row else None


def rollback(conn: psycopg.Connection[Any], live: tuple[str, str], lock_timeout: float = 2.0) -> tuple[str, str]:
    """In one transaction: the newest backup of `live` becomes the live table again, and the table that was
    live takes the backup's name (so a second rollback undoes the first). It checks and carries what a swap
    does: refused on what cannot be carried, the views that read the live table follow to the restored one,
    and the live table's grants, owner and comment go with them. Returns the backup's name."""
    target = ".".join(live)
    with conn.transaction():
        row = conn.execute(
            f"SELECT object_id, run_id, table_name, schema_name, object_name, name_map FROM {SCHEMA}.managed_tables "
            "WHERE target_table = %s AND kind = 'backup' AND status = 'kept' ORDER BY created_at DESC, object_id DESC "
            "LIMIT 1 FOR UPDATE", (target,)).fetchone()
        if row is None:
            raise FatalError(f"{target} has no backup to roll back to (load_mode swap keeps one per reload)")
        object_id, run_id, table_name, schema, name, name_map = row
        backup = (schema, name)
        if conn.execute("SELECT to_regclass(%s)", (sql.Identifier(*backup).as_string(conn),)).fetchone()[0] is None:
            raise FatalError(f"backup {schema}.{name} of {target} no longer exists")
        conn.execute(f"SET LOCAL lock_timeout = {max(1, int(lock_timeout * 1000))}")
        conn.execute(sql.SQL("LOCK TABLE {}, {} IN ACCESS EXCLUSIVE MODE").format(table_ident(live), table_ident(backup)))
        refuse_if_blocked(conn, live)
        live_oid, backup_oid = _oid(conn, live), _oid(conn, backup)
        _grant_like(conn, live_oid, backup)
        views = _park_views(conn, _views(conn, live_oid), f"r{object_id}")
        live_indexes = _indexes(conn, live_oid)
        backup_indexes = _indexes(conn, backup_oid)
        parked = (schema, derived_name(live[1], f"__rollback_{object_id}"))
        # names: live index N ↔ backup index name_map[N] (index names are unique within the schema)
        swaps = {n: b for n, b in name_map.items() if n in {i.name for i in live_indexes}
                 and b in {i.name for i in backup_indexes}}
        park = {n: derived_name(n, f"__p{object_id}") for n in swaps}
        _rename_indexes(conn, live, live_indexes, park)
        _rename_indexes(conn, backup, backup_indexes, {b: n for n, b in swaps.items()})
        conn.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(table_ident(live), sql.Identifier(parked[1])))
        conn.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(table_ident(backup), sql.Identifier(live[1])))
        parked_indexes = [_Index(park[i.name], i.constraint and park[i.name], i.definition, i.unique)
                          for i in live_indexes if i.name in park]
        _rename_indexes(conn, parked, parked_indexes, {park[n]: b for n, b in swaps.items()})
        conn.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(table_ident(parked), sql.Identifier(name)))
        _recreate_views(conn, views)
        conn.execute(f"UPDATE {SCHEMA}.managed_tables SET status = 'restored' WHERE object_id = %s", (object_id,))
        record(conn, run_id, table_name, live, "backup", backup, "kept", name_map)
    return backup


@dataclass(frozen=True)
class Managed:
    object_id: int
    run_id: int
    target: str
    kind: str
    schema: str
    name: str
    status: str
    created_at: Any
    why: str  # why cleanup would drop it, or "" to keep it


def cleanup_candidates(conn: psycopg.Connection[Any], keep_backups: int) -> list[Managed]:
    """Every table the engine created and still keeps, with why `cleanup` would drop it: backups beyond
    the newest `keep_backups` of their target; shadows whose run can no longer swap them in."""
    rows = conn.execute(
        f"""SELECT m.object_id, m.run_id, m.target_table, m.kind, m.schema_name, m.object_name, m.status, m.created_at,
               CASE
                 WHEN m.kind = 'backup' AND row_number() OVER (PARTITION BY m.target_table, m.kind
                      ORDER BY m.created_at DESC, m.object_id DESC) > %s THEN 'more backups than keep_backups'
                 WHEN m.kind = 'shadow' AND (r.status IS NULL OR r.status IN ('abandoned', 'completed')
                      OR t.status = 'completed') THEN 'its run will not swap it in'
                 ELSE '' END
           FROM {SCHEMA}.managed_tables m
           LEFT JOIN {SCHEMA}.migration_runs r ON r.run_id = m.run_id
           LEFT JOIN {SCHEMA}.migration_table_status t ON t.run_id = m.run_id AND t.table_name = m.table_name
           WHERE m.status IN ('loading', 'kept') ORDER BY m.target_table, m.kind, m.created_at DESC""",
        (keep_backups,)).fetchall()
    return [Managed(*r) for r in rows]


def drop(conn: psycopg.Connection[Any], item: Managed) -> None:
    with conn.transaction():
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(item.schema, item.name)))
        conn.execute(f"UPDATE {SCHEMA}.managed_tables SET status = 'dropped', dropped_at = now() WHERE object_id = %s",
                     (item.object_id,))
