-- watermark_rows: how many rows the window held when its high end was read (one query, so exact at that instant).
-- A window read as one chunk is reconciled by it: that chunk read the whole window at one instant, so a count of
-- the same rows afterwards would only repeat it (lib/check/reconcile.py).
ALTER TABLE migration_status.migration_table_status ADD COLUMN IF NOT EXISTS watermark_rows bigint;
