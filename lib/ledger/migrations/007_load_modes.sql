-- load modes: catch-up, merge, watermark windows, swap with shadow and backup tables
-- How each table's chunks meet its target, decided once when the table is planned (lib/load_modes.py):
-- copy (plain COPY into an empty or new table), insert_missing (catch-up: ON CONFLICT DO NOTHING),
-- merge (ON CONFLICT DO UPDATE where changed), swap (COPY into a shadow, swapped in after reconciliation).
ALTER TABLE migration_status.migration_table_status
    ADD COLUMN IF NOT EXISTS load_mode text,
    ADD COLUMN IF NOT EXISTS merge_key jsonb,
    ADD COLUMN IF NOT EXISTS destination_table text,
    ADD COLUMN IF NOT EXISTS destination jsonb,
    ADD COLUMN IF NOT EXISTS reconciled_against text,
    ADD COLUMN IF NOT EXISTS watermark_column text,
    ADD COLUMN IF NOT EXISTS watermark_lo text,
    ADD COLUMN IF NOT EXISTS watermark_hi text,
    ADD COLUMN IF NOT EXISTS watermark_lo_from text;
ALTER TABLE migration_status.migration_chunk_status
    ADD COLUMN IF NOT EXISTS rows_inserted bigint,
    ADD COLUMN IF NOT EXISTS rows_updated bigint;

-- Persistent tables the engine creates (swap mode): shown by `status`, dropped by `cleanup`, never
-- orphaned. Not tied to a run row by a foreign key: deleting an old run's ledger rows keeps the record.
CREATE TABLE IF NOT EXISTS migration_status.managed_tables (
    object_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id bigint NOT NULL,
    table_name text NOT NULL,
    target_table text NOT NULL,
    kind text NOT NULL CHECK (kind IN ('shadow', 'backup')),
    schema_name text NOT NULL,
    object_name text NOT NULL,
    -- shadow: loading, then swapped_in (it became the live table) or dropped; backup: kept, restored, dropped
    status text NOT NULL CHECK (status IN ('loading', 'swapped_in', 'kept', 'restored', 'dropped')),
    name_map jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at timestamptz NOT NULL DEFAULT now(),
    dropped_at timestamptz,
    UNIQUE (schema_name, object_name, created_at)
);
CREATE INDEX IF NOT EXISTS managed_tables_target_idx ON migration_status.managed_tables (target_table, kind, status);

-- One row per table and run: how it was loaded, its watermark window and the rows it brought.
CREATE OR REPLACE VIEW migration_status.table_loads AS
SELECT t.run_id, t.table_name, t.target_table, t.status, t.load_mode, t.destination_table, t.merge_key,
       t.watermark_column, t.watermark_lo, t.watermark_hi, t.watermark_lo_from,
       coalesce(sum(c.rows_copied) FILTER (WHERE c.status = 'done'), 0) AS rows_read,
       coalesce(sum(c.rows_inserted) FILTER (WHERE c.status = 'done'), 0) AS rows_inserted,
       coalesce(sum(c.rows_updated) FILTER (WHERE c.status = 'done'), 0) AS rows_updated,
       t.started_at, t.completed_at
FROM migration_status.migration_table_status t
LEFT JOIN migration_status.migration_chunk_status c USING (run_id, table_name)
GROUP BY t.run_id, t.table_name;

-- Reconciliation compares the source's rows in scope with the target table (copy), the shadow (swap),
-- or, for catch-up and merge into a table that holds other rows too, with the rows the chunks read.
CREATE OR REPLACE VIEW migration_status.reconciliation AS
SELECT run_id, table_name, target_table, status, planned_rows AS expected_rows, rows_copied,
       source_count, target_count,
       CASE WHEN reconciled_against = 'rows_read' THEN rows_copied ELSE target_count END - source_count AS difference,
       reconcile_status, reconciled_at, error, load_mode, coalesce(reconciled_against, 'target') AS reconciled_against
FROM migration_status.migration_table_status;
