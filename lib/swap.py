"""Protected full reload (load_mode swap): load a shadow table, reconcile it, then swap it in.

- The shadow is created like the live table (columns, defaults, identity, CHECK and NOT NULL
  constraints) when the table is planned, and recorded in `migration_status.managed_tables`.
- Chunks COPY into the shadow; the live table is not touched while they run.
- After the shadow reconciles, ONE transaction builds the live table's indexes and constraints on the
  shadow, gives it the live table's grants, owner, comment and owned sequences, renames live →
  `<table>__backup_<run_id>` (its index and constraint names get a suffix too) and shadow → live (its
  index and constraint names become the live ones). A failure anywhere rolls all of it back: the live
  table is never partly loaded.
- What cannot be carried over (foreign keys from other tables, views, triggers, row security,
  publications, partitions, column privileges, extended statistics, rules) is refused with a list,
  when the table is planned and again just before the swap.
- `rollback` swaps the newest backup back in one transaction; `cleanup` drops backups beyond
  `keep_backups` and shadows no live run will finish.
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
from lib.ledger_schema import SCHEMA
from lib.postgres_target import table_ident


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


# Each query lists what keeps a table from being swapped; %(oid)s is the live table.
_BLOCKERS = [
    ("foreign key {} on {} references it (it would keep pointing at the backup)",
     "SELECT conname, conrelid::regclass::text FROM pg_constraint WHERE contype = 'f' AND confrelid = %(oid)s "
     "AND conrelid <> %(oid)s"),
    ("view or rule {} depends on it (it would keep reading the backup)",
     "SELECT DISTINCT r.ev_class::regclass::text, '' FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid "
     "WHERE d.refobjid = %(oid)s AND d.classid = 'pg_rewrite'::regclass AND r.ev_class <> %(oid)s"),
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
            "them after the reload), or load with load_mode in_place and truncate_onstart")


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
    """Build the live table's indexes and key constraints on the shadow under temporary names.
    Returns {live name: the shadow's temporary name}."""
    temporary = {}
    for index in indexes:
        temp = derived_name(index.name, f"__s{run_id}")
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
        temporary[index.name] = temp
    return temporary


def _grant_like(conn: psycopg.Connection[Any], live_oid: int, shadow: tuple[str, str]) -> None:
    """The live table's owner, grants and comment, given to the shadow."""
    owner, comment = conn.execute(
        "SELECT pg_get_userbyid(relowner), obj_description(oid, 'pg_class') FROM pg_class WHERE oid = %s",
        (live_oid,)).fetchone() or (None, None)
    for grantee, privilege, grantable in conn.execute(
            "SELECT CASE WHEN a.grantee = 0 THEN NULL ELSE pg_get_userbyid(a.grantee) END, a.privilege_type, "
            "a.is_grantable FROM pg_class c CROSS JOIN LATERAL aclexplode(c.relacl) a WHERE c.oid = %s "
            "AND a.grantee <> c.relowner", (live_oid,)).fetchall():
        conn.execute(sql.SQL("GRANT {} ON {} TO {}{}").format(
            sql.SQL(privilege), table_ident(shadow), sql.Identifier(grantee) if grantee else sql.SQL("PUBLIC"),
            sql.SQL(" WITH GRANT OPTION" if grantable else "")))
    if comment is not None:
        conn.execute(sql.SQL("COMMENT ON TABLE {} IS {}").format(table_ident(shadow), sql.Literal(comment)))
    if owner is not None and owner != conn.execute("SELECT current_user").fetchone()[0]:
        conn.execute(sql.SQL("ALTER TABLE {} OWNER TO {}").format(table_ident(shadow), sql.Identifier(owner)))


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


def swap_in(conn: psycopg.Connection[Any], live: tuple[str, str], shadow: tuple[str, str], run_id: int,
            table_name: str) -> tuple[str, str]:
    """Inside the caller's transaction: carry everything over, then live → backup and shadow → live.
    Returns the backup's name."""
    refuse_if_blocked(conn, live)
    live_oid = _oid(conn, live)
    indexes = _indexes(conn, live_oid)
    temporary = _carry_indexes(conn, live, shadow, indexes, run_id)
    on_shadow = {n for n, _ in _foreign_keys(conn, _oid(conn, shadow))}
    for name, definition in _foreign_keys(conn, live_oid):
        if name not in on_shadow:
            conn.execute(sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}").format(
                table_ident(shadow), sql.Identifier(name), sql.SQL(definition)))
    _grant_like(conn, live_oid, shadow)
    _carry_sequences(conn, live_oid, shadow)
    conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(table_ident(live)))
    backup = (live[0], backup_name(live[1], run_id))
    backup_names = {i.name: derived_name(i.name, f"__b{run_id}") for i in indexes}
    _rename_indexes(conn, live, indexes, backup_names)
    conn.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(table_ident(live), sql.Identifier(backup[1])))
    shadow_indexes = [_Index(temporary[i.name], i.constraint and temporary[i.name], i.definition, i.unique)
                      for i in indexes]
    _rename_indexes(conn, shadow, shadow_indexes, {temporary[i.name]: i.name for i in indexes})
    conn.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(table_ident(shadow), sql.Identifier(live[1])))
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


def rollback(conn: psycopg.Connection[Any], live: tuple[str, str]) -> tuple[str, str]:
    """In one transaction: the newest backup of `live` becomes the live table again, and the table that was
    live takes the backup's name (so a second rollback undoes the first). Returns the backup's name."""
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
        conn.execute(sql.SQL("LOCK TABLE {}, {} IN ACCESS EXCLUSIVE MODE").format(table_ident(live), table_ident(backup)))
        live_indexes = _indexes(conn, _oid(conn, live))
        backup_indexes = _indexes(conn, _oid(conn, backup))
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
