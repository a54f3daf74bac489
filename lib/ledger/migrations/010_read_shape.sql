-- read shape: how each table's chunks arrive (whole results or streamed parts) and its Arrow bytes per row, for the memory budget
ALTER TABLE migration_status.migration_table_status
    ADD COLUMN IF NOT EXISTS source_results text,
    ADD COLUMN IF NOT EXISTS row_bytes integer;
