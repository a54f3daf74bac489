-- delete passes: what each deletes pass (lib/check/deletes.py) of a merge or watermark table found and did
-- One row per pass; a refused pass (max_delete_fraction) has refused set and nothing deleted.
CREATE TABLE IF NOT EXISTS migration_status.delete_passes (
    run_id bigint NOT NULL REFERENCES migration_status.migration_runs ON DELETE CASCADE,
    table_name text NOT NULL,
    mode text NOT NULL,
    key_ranges integer NOT NULL,
    differing_ranges integer NOT NULL,
    deleted bigint NOT NULL,
    restored bigint NOT NULL,
    target_rows bigint NOT NULL,
    seconds numeric NOT NULL,
    refused text,
    at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS delete_passes_run ON migration_status.delete_passes (run_id, table_name);
