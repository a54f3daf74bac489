-- dashboard views
CREATE OR REPLACE VIEW migration_status.run_summary AS
SELECT r.run_id, r.source_name, r.status, r.started_at, r.completed_at,
       round((extract(epoch FROM coalesce(r.completed_at, now()) - r.started_at) / 3600)::numeric, 2) AS hours,
       coalesce((r.metadata #>> '{config,settings,resume_max_age}')::numeric, 168) AS resume_max_age_hours,
       count(c.chunk_id) AS chunks,
       count(c.chunk_id) FILTER (WHERE c.status = 'done') AS chunks_done,
       count(c.chunk_id) FILTER (WHERE c.status = 'failed') AS chunks_failed,
       coalesce(sum(c.expected_rows), 0) AS expected_rows,
       coalesce(sum(c.rows_copied) FILTER (WHERE c.status = 'done'), 0) AS rows_copied,
       r.completed_tables, r.failed_tables, r.error
FROM migration_status.migration_runs r
LEFT JOIN migration_status.migration_chunk_status c USING (run_id)
GROUP BY r.run_id;

CREATE OR REPLACE VIEW migration_status.failed_chunks AS
SELECT run_id, table_name, chunk_no, predicate, attempts, error, started_at, completed_at
FROM migration_status.migration_chunk_status WHERE status = 'failed';

CREATE OR REPLACE VIEW migration_status.stalled_leases AS
SELECT run_id, table_name, chunk_no, worker, fence, started_at, lease_expires_at,
       now() - started_at AS running_for
FROM migration_status.migration_chunk_status
WHERE status = 'running' AND lease_expires_at < now();

CREATE OR REPLACE VIEW migration_status.runs_near_window_end AS
SELECT run_id, source_name, status, started_at, resume_max_age_hours,
       round((resume_max_age_hours - extract(epoch FROM now() - started_at) / 3600)::numeric, 1) AS hours_left
FROM migration_status.run_summary
WHERE status IN ('running', 'completed_with_errors', 'failed')
  AND resume_max_age_hours - extract(epoch FROM now() - started_at) / 3600 < 24;

CREATE OR REPLACE VIEW migration_status.reconciliation AS
SELECT run_id, table_name, target_table, status, planned_rows AS expected_rows, rows_copied,
       source_count, target_count, target_count - source_count AS difference, reconcile_status, reconciled_at, error
FROM migration_status.migration_table_status;

CREATE OR REPLACE VIEW migration_status.throughput_per_minute AS
SELECT run_id, date_trunc('minute', completed_at) AS minute, count(*) AS chunks,
       sum(rows_copied) AS rows_copied, round(sum(rows_copied) / 60.0, 1) AS rows_per_second,
       round(sum(bytes_copied) / 60.0 / 1048576, 2) AS mib_per_second
FROM migration_status.migration_chunk_status WHERE status = 'done'
GROUP BY run_id, date_trunc('minute', completed_at);
