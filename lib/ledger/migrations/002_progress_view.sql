-- progress view
CREATE OR REPLACE VIEW migration_status.table_progress AS
SELECT t.run_id, t.table_name, t.target_table, t.status, t.strategy,
       count(c.chunk_id) AS chunks,
       count(c.chunk_id) FILTER (WHERE c.status = 'done') AS chunks_done,
       count(c.chunk_id) FILTER (WHERE c.status = 'running') AS chunks_running,
       count(c.chunk_id) FILTER (WHERE c.status = 'pending') AS chunks_pending,
       count(c.chunk_id) FILTER (WHERE c.status = 'failed') AS chunks_failed,
       t.planned_rows AS expected_rows,
       coalesce(sum(c.rows_copied) FILTER (WHERE c.status = 'done'), 0) AS rows_copied,
       t.source_count, t.target_count, t.reconcile_status,
       round((coalesce(sum(c.rows_copied) FILTER (WHERE c.status = 'done'), 0)
           / greatest(extract(epoch FROM coalesce(t.completed_at, now()) - t.started_at), 0.001))::numeric, 1)
           AS rows_per_second
FROM migration_status.migration_table_status t
LEFT JOIN migration_status.migration_chunk_status c USING (run_id, table_name)
GROUP BY t.run_id, t.table_name;
