-- Operations: each scheduler process records a heartbeat per pass, so health checks and metrics can
-- tell a stopped scheduler from a quiet one. One row per scheduler process (host:pid); rows of
-- processes gone for a day are removed by the next heartbeat.
CREATE TABLE scheduler_heartbeats (
    scheduler  text PRIMARY KEY,          -- host:pid
    started_at timestamptz NOT NULL DEFAULT now(),
    beat_at    timestamptz NOT NULL DEFAULT now()
);
