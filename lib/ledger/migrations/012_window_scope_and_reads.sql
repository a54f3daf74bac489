-- window scope and reads: the scope a load's high-water mark belongs to, and the point in time its reads use
-- load_scope: {account, source, filter, watermark, target}; a window continues only from a window of the same scope.
-- read_at: the Snowflake timestamp every read of the table is taken at (AT(TIMESTAMP => ...)); NULL: read live.
ALTER TABLE migration_status.migration_table_status
    ADD COLUMN IF NOT EXISTS load_scope jsonb,
    ADD COLUMN IF NOT EXISTS read_at text;
-- source_changed: a table read live whose source changed while it was copied, so counts cannot prove it (a
-- watermark window or a merge, which the next run reads again); see lib/reconcile.py.
ALTER TABLE migration_status.migration_table_status DROP CONSTRAINT IF EXISTS migration_table_status_reconcile_status_check;
ALTER TABLE migration_status.migration_table_status ADD CONSTRAINT migration_table_status_reconcile_status_check
    CHECK (reconcile_status IN ('pending', 'match', 'mismatch', 'error', 'source_changed'));
CREATE INDEX IF NOT EXISTS migration_table_status_scope_idx
    ON migration_status.migration_table_status (target_table, completed_at DESC) WHERE status = 'completed';
-- staged: a chunk whose direct copy into a new key range hit the key goes through the stage on its next attempt
ALTER TABLE migration_status.migration_chunk_status ADD COLUMN IF NOT EXISTS staged boolean NOT NULL DEFAULT false;
-- table_loads gains what a window's next lo depends on: its verdict, its read point and its scope
CREATE OR REPLACE VIEW migration_status.table_loads AS
SELECT t.run_id, t.table_name, t.target_table, t.status, t.load_mode, t.destination_table, t.merge_key,
       t.watermark_column, t.watermark_lo, t.watermark_hi, t.watermark_lo_from,
       coalesce(sum(c.rows_copied) FILTER (WHERE c.status = 'done'), 0) AS rows_read,
       coalesce(sum(c.rows_inserted) FILTER (WHERE c.status = 'done'), 0) AS rows_inserted,
       coalesce(sum(c.rows_updated) FILTER (WHERE c.status = 'done'), 0) AS rows_updated,
       t.started_at, t.completed_at, t.reconcile_status, t.read_at, t.load_scope
FROM migration_status.migration_table_status t
LEFT JOIN migration_status.migration_chunk_status c USING (run_id, table_name)
GROUP BY t.run_id, t.table_name;
