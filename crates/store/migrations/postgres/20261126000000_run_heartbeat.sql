-- A running ingestion touches heartbeat_at every half minute, so a run
-- whose process was killed (it can never close its own row) is recognised
-- by its silence and closed as failed by the next run.
-- Matching change: migrations/sqlite/20261126000000_run_heartbeat.sql.
ALTER TABLE ingestion_runs ADD COLUMN heartbeat_at TIMESTAMPTZ;
