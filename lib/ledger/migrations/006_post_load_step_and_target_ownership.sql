-- post-load step and target ownership
-- A table whose chunks are done and whose counts match is 'post_load' until its primary key is built
-- and ANALYZE has run; only then 'completed'. Resume finishes a table left in 'post_load'.
ALTER TABLE migration_status.migration_table_status DROP CONSTRAINT IF EXISTS migration_table_status_status_check;
ALTER TABLE migration_status.migration_table_status ADD CONSTRAINT migration_table_status_status_check
    CHECK (status IN ('pending', 'running', 'post_load', 'completed', 'failed'));
ALTER TABLE migration_status.migration_table_status ADD COLUMN IF NOT EXISTS analyzed_at timestamptz;
-- Which live run owns a target table (see lib/status.py target_owner).
CREATE INDEX IF NOT EXISTS migration_table_status_target_idx ON migration_status.migration_table_status (target_table);
