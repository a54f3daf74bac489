-- runs, tables, chunks
CREATE TABLE IF NOT EXISTS migration_status.migration_runs (
    run_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    config_hash text NOT NULL,
    source_name text NOT NULL,
    status text NOT NULL CHECK (status IN
        ('planning', 'running', 'completed', 'completed_with_errors', 'failed', 'abandoned')),
    started_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    completed_at timestamptz,
    total_rows_copied bigint NOT NULL DEFAULT 0,
    completed_tables integer NOT NULL DEFAULT 0,
    failed_tables integer NOT NULL DEFAULT 0,
    error text,
    metadata jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX IF NOT EXISTS migration_runs_hash_idx
    ON migration_status.migration_runs (config_hash, started_at DESC);

CREATE TABLE IF NOT EXISTS migration_status.migration_table_status (
    run_id bigint NOT NULL REFERENCES migration_status.migration_runs ON DELETE CASCADE,
    table_name text NOT NULL,
    target_table text NOT NULL,
    status text NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'running', 'completed', 'failed')),
    strategy text,
    strategy_reason text,
    planned_chunks integer,
    planned_rows bigint,
    plan_queries integer,
    plan_seconds double precision,
    plan_notes jsonb NOT NULL DEFAULT '[]'::jsonb,
    source_columns jsonb,
    rows_copied bigint NOT NULL DEFAULT 0,
    source_count bigint,
    target_count bigint,
    reconcile_status text NOT NULL DEFAULT 'pending'
        CHECK (reconcile_status IN ('pending', 'match', 'mismatch', 'error')),
    reconciled_at timestamptz,
    error text,
    started_at timestamptz NOT NULL DEFAULT now(),
    completed_at timestamptz,
    PRIMARY KEY (run_id, table_name)
);

CREATE TABLE IF NOT EXISTS migration_status.migration_chunk_status (
    chunk_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id bigint NOT NULL,
    table_name text NOT NULL,
    chunk_no integer NOT NULL,
    predicate text NOT NULL,
    bounds jsonb NOT NULL,
    expected_rows bigint NOT NULL,
    rows_copied bigint,
    bytes_copied bigint,
    status text NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'running', 'done', 'failed')),
    attempts integer NOT NULL DEFAULT 0,
    fence bigint NOT NULL DEFAULT 0,
    worker text,
    lease_expires_at timestamptz,
    started_at timestamptz,
    completed_at timestamptz,
    error text,
    UNIQUE (run_id, table_name, chunk_no),
    FOREIGN KEY (run_id, table_name)
        REFERENCES migration_status.migration_table_status ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS migration_chunk_status_run_status_idx
    ON migration_status.migration_chunk_status (run_id, status);
