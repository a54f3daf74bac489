-- schema changes: what planning found different between a source table and its target, and what it did
-- change: added (ADD COLUMN), widened (ALTER COLUMN TYPE), dropped (the source lost the column; the target keeps
-- it) or refused (a narrowing or incompatible type, or any difference under schema_changes freeze: the table
-- failed and ddl is what a person could run after checking). applied_at: when the DDL committed with the plan
-- (NULL: nothing was applied). One row per run, table, column and change.
CREATE TABLE IF NOT EXISTS migration_status.schema_changes (
    run_id bigint NOT NULL REFERENCES migration_status.migration_runs ON DELETE CASCADE,
    table_name text NOT NULL,
    target_table text NOT NULL,
    column_name text NOT NULL,
    change text NOT NULL CHECK (change IN ('added', 'widened', 'dropped', 'refused')),
    from_type text,
    to_type text,
    ddl text,
    note text,
    applied_at timestamptz,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, table_name, column_name, change)
);
CREATE INDEX IF NOT EXISTS schema_changes_target ON migration_status.schema_changes (target_table, run_id);

CREATE OR REPLACE VIEW migration_status.schema_change_log AS
SELECT c.run_id, r.source_name, c.table_name, c.target_table, c.column_name, c.change, c.from_type, c.to_type,
       c.ddl, c.note, c.applied_at, c.recorded_at
FROM migration_status.schema_changes c
JOIN migration_status.migration_runs r USING (run_id)
ORDER BY c.recorded_at DESC, c.target_table, c.column_name;
