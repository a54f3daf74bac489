-- verification: content checksums per chunk on both sides (lib/checksum.py, lib/verify.py), and repairs
ALTER TABLE migration_status.migration_chunk_status ADD COLUMN IF NOT EXISTS repair boolean NOT NULL DEFAULT false;

CREATE TABLE IF NOT EXISTS migration_status.chunk_checksums (
    checksum_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id bigint NOT NULL,
    table_name text NOT NULL,
    chunk_no integer,  -- NULL: the whole table at once (hash chunks cannot be selected in PostgreSQL)
    verified_at timestamptz NOT NULL DEFAULT now(),
    source_rows bigint,
    source_sum1 numeric,
    source_sum2 numeric,
    target_rows bigint,
    target_sum1 numeric,
    target_sum2 numeric,
    result text NOT NULL CHECK (result IN ('match', 'differ', 'error')),
    compared jsonb NOT NULL DEFAULT '[]'::jsonb,  -- columns whose values are compared
    nulls_only jsonb NOT NULL DEFAULT '[]'::jsonb,  -- columns compared for NULLs only (and why: their type)
    snapshot_at text,
    error text
);
CREATE INDEX IF NOT EXISTS chunk_checksums_run_idx ON migration_status.chunk_checksums (run_id, table_name, chunk_no);

-- The latest verification of every chunk (or whole table) of every run.
CREATE OR REPLACE VIEW migration_status.verification AS
SELECT DISTINCT ON (run_id, table_name, chunk_no) run_id, table_name, chunk_no, verified_at, result,
       source_rows, target_rows, source_sum1 = target_sum1 AND source_sum2 = target_sum2 AS sums_equal,
       nulls_only, error
FROM migration_status.chunk_checksums
ORDER BY run_id, table_name, chunk_no, verified_at DESC, checksum_id DESC;
