-- Jobs not finished (queued, running, failed or dead): what the metrics and the sweeper
-- count, without reading the finished ones an hour of traffic leaves behind.
CREATE INDEX autokey_jobs_live_idx ON apalis.jobs (job_type, status)
    INCLUDE (attempts, max_attempts) WHERE status <> 'Done';
