-- chunk notes: what the wire changed in a chunk's values (NUL bytes stripped or replaced, lib/wire.py)
ALTER TABLE migration_status.migration_chunk_status
    ADD COLUMN IF NOT EXISTS notes jsonb NOT NULL DEFAULT '[]'::jsonb,
    ADD COLUMN IF NOT EXISTS values_changed bigint NOT NULL DEFAULT 0;
