-- pending queries: Snowflake queries submitted asynchronously, waited for across invocations
-- A Step Functions step submits a stats or count query that may outlast its Lambda, keeps its query id here and
-- returns; a later invocation of the step asks Snowflake for the query's state and takes its result
-- (lib/source/deferred.py). Rows are removed once the result is taken.
CREATE TABLE IF NOT EXISTS migration_status.pending_queries (
    run_id bigint NOT NULL REFERENCES migration_status.migration_runs ON DELETE CASCADE,
    statement_key text NOT NULL,
    query_id text NOT NULL,
    submitted_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, statement_key)
);
