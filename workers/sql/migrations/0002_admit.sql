-- Admission in one round trip: record the event (idempotent on event_id), then decide
-- queued or backlog against pause, recipients and both daily quotas, in one transaction.
CREATE FUNCTION deskmail_admit(
    p_event_id uuid, p_project text, p_kind text, p_priority smallint, p_event jsonb,
    p_subject text, p_recipients integer, p_created_at timestamptz
) RETURNS TABLE (state text, reason text, detail text, mail_service text, is_new boolean)
LANGUAGE plpgsql AS $$
DECLARE
    proj  projects%ROWTYPE;
    glob  global_limits%ROWTYPE;
    rlim  integer;
    v_service text;
    v_state text := 'queued';
    v_reason text;
    v_detail text;
BEGIN
    INSERT INTO mail (event_id, project, kind, priority, state, event, subject, recipients, created_at)
    VALUES (p_event_id, p_project, p_kind, p_priority, 'queued', p_event, p_subject, p_recipients, p_created_at)
    ON CONFLICT (event_id) DO NOTHING;
    IF NOT FOUND THEN
        RETURN QUERY SELECT m.state, m.reason, m.detail, m.mail_service, false FROM mail m WHERE m.event_id = p_event_id;
        RETURN;
    END IF;

    SELECT * INTO proj FROM projects WHERE key = p_project;
    IF NOT FOUND OR proj.settings IS NULL THEN
        SELECT p.mail_service INTO v_service FROM projects p WHERE p.key = 'default' AND p.settings IS NOT NULL;
        IF v_service IS NULL THEN
            UPDATE mail SET state = 'rejected', reason = 'unknown_project',
                   detail = format('project: no settings for %L and no default project', p_project)
             WHERE event_id = p_event_id;
            RETURN QUERY SELECT 'rejected'::text, 'unknown_project'::text,
                format('project: no settings for %L and no default project', p_project), NULL::text, true;
            RETURN;
        END IF;
        IF proj.key IS NULL THEN
            INSERT INTO projects (key) VALUES (p_project) ON CONFLICT (key) DO NOTHING;
            SELECT * INTO proj FROM projects WHERE key = p_project;
        END IF;
    ELSE
        v_service := proj.mail_service;
    END IF;
    SELECT * INTO glob FROM global_limits;

    rlim := nullif(least(nullif(proj.recipients_per_mail, 0), nullif(glob.recipients_per_mail, 0)), 0);
    IF rlim IS NOT NULL AND p_recipients > rlim THEN
        v_state := 'backlog'; v_reason := 'too_many_recipients';
        v_detail := format('too many recipients, %s > %s', p_recipients, rlim);
    ELSIF proj.paused_reason IS NOT NULL THEN
        v_state := 'backlog'; v_reason := 'project_paused';
        v_detail := format('project paused (%s)', proj.paused_reason);
    ELSIF deskmail_take_quota(p_project, (now() AT TIME ZONE proj.time_zone)::date, proj.per_day) IS NULL THEN
        v_state := 'backlog'; v_reason := 'daily_limit';
        v_detail := format('daily limit of %s reached', proj.per_day);
    ELSIF deskmail_take_quota('*', (now() AT TIME ZONE glob.time_zone)::date, glob.per_day) IS NULL THEN
        UPDATE quota_counters SET sent = sent - 1
         WHERE scope = p_project AND day = (now() AT TIME ZONE proj.time_zone)::date;
        v_state := 'backlog'; v_reason := 'global_daily_limit';
        v_detail := format('global daily limit of %s reached (MAIL_LIMIT_PER_DAY_SMTP)', glob.per_day);
    END IF;

    IF v_reason IN ('daily_limit', 'global_daily_limit') THEN
        UPDATE projects SET paused_reason = v_reason, paused_at = now(), updated_at = now()
         WHERE key = p_project AND paused_reason IS NULL;
    END IF;
    UPDATE mail SET state = v_state, reason = v_reason, detail = v_detail, mail_service = v_service
     WHERE event_id = p_event_id;
    RETURN QUERY SELECT v_state, v_reason, v_detail, v_service, true;
END
$$;
