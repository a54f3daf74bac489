-- phase_seconds: where a chunk's time went, as its thread measured it: waiting for Snowflake's rows (read_wait),
-- writing them while they came (copy), after the last row (after_copy: the key check, a merge's upsert, the end
-- of a COPY) and marking it done (ledger). Reported by bench-incremental; null for chunks copied before it.
ALTER TABLE migration_status.migration_chunk_status ADD COLUMN IF NOT EXISTS phase_seconds jsonb;
