"""Schema evolution as planning applies it (lib/target/evolution.py decides what differs and what may change):
refuse the table before anything is written, widen a watermark window so that a merge fills added columns in
every row, then apply and record the DDL inside the plan's transaction."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import psycopg

from lib import faults, ledger
from lib.config import TableSpec
from lib.errors import FatalError
from lib.target import evolution
from lib.target import postgres as pg
from lib.target.evolution import Change
from lib.target.windows import Window
from lib.typemap import Column


def changes_for(conn: psycopg.Connection[Any], spec: TableSpec, columns: list[Column], run_id: int,
                dry_run: bool, target_types: dict[str, str] | None,
                previous: list[dict[str, Any]] | None) -> list[Change]:
    """The schema changes planning will apply to `spec`'s existing target (`target_types`: its column types, None when
    there is none; `previous`: the source columns of its latest plan by another run, None without one); a FatalError
    listing every refused one (recorded in the ledger first, unless `dry_run`) when any is refused. Nothing is
    applied here."""
    if target_types is None:
        return []
    catch_up = (not spec.merges and not spec.truncate_onstart and spec.load_mode != "swap"
                and pg.has_rows(conn, spec.target))
    changes = evolution.compare(conn, spec.target, target_types, columns, previous, spec.schema_changes == "freeze",
                                catch_up)
    refused = [c for c in changes if c.kind == "refused"]
    if refused:
        if not dry_run:
            ledger.record_schema_changes(conn, run_id, spec.name, spec.target_name, [c.ledger_row(conn) for c in refused])
        raise FatalError(f"{spec.name}: the source's columns changed and target {spec.target_name} was not changed "
                         f"({len(refused)} refused, schema_changes {spec.schema_changes}): "
                         + " | ".join(c.describe(conn) for c in refused))
    return changes


def filling_window(window: Window, changes: list[Change], columns: list[Column], read_before: list[str] | None,
                   notes: list[str]) -> Window:
    """The window that fills added columns: from the beginning when a column was added now, or since the last
    completed window of the scope (whose run may have added it and then failed; `read_before`: the source columns
    that window read, None without one), so that the merge writes the source's value into every row the target
    already holds. Cost: one read and merge of the whole scope."""
    if window.lo is None:
        return window
    added = evolution.added_sources(changes)
    if read_before is not None:
        added |= {c.name for c in columns if c.name not in read_before}
    if not added:
        return window
    notes.append(f"column(s) {', '.join(sorted(added))} new since the last window: this run reads the whole scope "
                 f"({window.column} <= {window.hi}, and NULLs) instead of from {window.lo}, so that the merge fills "
                 "them in every row the target holds (cost: one full read and merge; later windows are incremental again)")
    return replace(window, lo=None, lo_from="schema change", rows=None)


def apply_changes(conn: psycopg.Connection[Any], spec: TableSpec, run_id: int, changes: list[Change],
                  dry_run: bool, notes: list[str]) -> None:
    """Inside the planning transaction (under the target's lock): run the DDL and record every change, so that a
    crash leaves both or neither. A dry run notes what would change and changes nothing."""
    for change in changes:
        notes.append(f"schema{' (would apply)' if dry_run and change.applies else ''}: {change.describe(conn)}")
        if change.kind == "widened" and change.from_type and change.to_type:
            cost = ("rewrites the table and its indexes" if evolution.rewrites(change.from_type, change.to_type)
                    else "changes only the catalog (no rewrite)")
            notes.append(f"schema: ALTER COLUMN TYPE of {change.column} {cost}, under an ACCESS EXCLUSIVE lock on "
                         f"{spec.target_name} held until the plan commits")
    if dry_run or not changes:
        return
    evolution.apply(conn, changes)
    ledger.record_schema_changes(conn, run_id, spec.name, spec.target_name, [c.ledger_row(conn) for c in changes])
    faults.maybe_crash("schema_change")
