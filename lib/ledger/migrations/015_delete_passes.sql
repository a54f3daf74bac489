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

-- delete ranges: a pass's key ranges, each checked (checksums, then its keys if they differ) and applied in turn,
-- so that a pass interrupted (a crash, a Step Functions step's time budget) goes on where it stopped, and the
-- guard (max_delete_fraction) judges the whole table's deletions, counted before any is applied
CREATE TABLE IF NOT EXISTS migration_status.delete_ranges (
    run_id bigint NOT NULL REFERENCES migration_status.migration_runs ON DELETE CASCADE,
    table_name text NOT NULL,
    range_no integer NOT NULL,
    bounds jsonb NOT NULL,
    checked boolean NOT NULL DEFAULT false,
    target_rows bigint,
    differs boolean,
    to_delete bigint,
    to_restore bigint,
    applied boolean NOT NULL DEFAULT false,
    deleted bigint,
    restored bigint,
    PRIMARY KEY (run_id, table_name, range_no)
);
