-- Auto resume: drain a project's backlog oldest first (records before notifications) within the
-- limits, taking quota exactly as admission does; unpause the project once nothing sendable waits.
-- p_now is the clock (injectable for tests of day rollover and DST); SKIP LOCKED lets many run at once.
CREATE FUNCTION deskmail_auto_resume(p_project text, p_now timestamptz, p_max integer)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    proj projects%ROWTYPE;
    glob global_limits%ROWTYPE;
    rlim integer;
    pday date;
    m    record;
    n    integer := 0;
BEGIN
    SELECT * INTO proj FROM projects WHERE key = p_project;
    SELECT * INTO glob FROM global_limits;
    rlim := nullif(least(nullif(proj.recipients_per_mail, 0), nullif(glob.recipients_per_mail, 0)), 0);
    pday := (p_now AT TIME ZONE proj.time_zone)::date;
    FOR m IN SELECT event_id FROM mail
              WHERE project = p_project AND state = 'backlog' AND (rlim IS NULL OR recipients <= rlim)
              ORDER BY priority DESC, seq LIMIT p_max FOR UPDATE SKIP LOCKED
    LOOP
        EXIT WHEN deskmail_take_quota(p_project, pday, proj.per_day) IS NULL;
        IF deskmail_take_quota('*', (p_now AT TIME ZONE glob.time_zone)::date, glob.per_day) IS NULL THEN
            UPDATE quota_counters SET sent = sent - 1 WHERE scope = p_project AND day = pday;
            EXIT;
        END IF;
        UPDATE mail SET state = 'queued', reason = NULL, detail = 'auto resumed', next_attempt_at = now(),
               updated_at = now()
         WHERE event_id = m.event_id;
        n := n + 1;
    END LOOP;
    IF NOT EXISTS (SELECT 1 FROM mail WHERE project = p_project AND state = 'backlog'
                      AND (rlim IS NULL OR recipients <= rlim)) THEN
        UPDATE projects SET paused_reason = NULL, paused_at = NULL, updated_at = now()
         WHERE key = p_project AND paused_reason IS NOT NULL;
    END IF;
    RETURN n;
END
$$;
