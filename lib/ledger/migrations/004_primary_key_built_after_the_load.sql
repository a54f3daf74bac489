-- primary key built after the load
ALTER TABLE migration_status.migration_table_status ADD COLUMN IF NOT EXISTS primary_key jsonb;
ALTER TABLE migration_status.migration_table_status ADD COLUMN IF NOT EXISTS primary_key_built_at timestamptz;
