-- retry backoff
ALTER TABLE migration_status.migration_chunk_status ADD COLUMN IF NOT EXISTS retry_at timestamptz;
