-- Admission writes the ledger row once, in its final state, instead of inserting it `queued` and
-- updating it: half the row versions and index entries per mail. The quota is taken just before
-- that insert, so the hot counter rows stay locked for as short a time as possible. A concurrent
-- delivery of the same event loses the insert race and gives back the quota it took.
CREATE OR REPLACE FUNCTION deskmail_admit(
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
    v_project_day date;
    v_global_day date;
BEGIN
    RETURN QUERY SELECT m.state, m.reason, m.detail, m.mail_service, false FROM mail m WHERE m.event_id = p_event_id;
    IF FOUND THEN
        RETURN;
    END IF;

    SELECT * INTO proj FROM projects WHERE key = p_project;
    IF NOT FOUND OR proj.settings IS NULL THEN
        SELECT p.mail_service INTO v_service FROM projects p WHERE p.key = 'default' AND p.settings IS NOT NULL;
        IF v_service IS NULL THEN
            v_state := 'rejected'; v_reason := 'unknown_project';
            v_detail := format('project: no settings for %L and no default project', p_project);
        ELSIF proj.key IS NULL THEN
            INSERT INTO projects (key) VALUES (p_project) ON CONFLICT (key) DO NOTHING;
            SELECT * INTO proj FROM projects WHERE key = p_project;
        END IF;
    ELSE
        v_service := proj.mail_service;
    END IF;

    IF v_state = 'queued' THEN
        SELECT * INTO glob FROM global_limits;
        v_project_day := (now() AT TIME ZONE proj.time_zone)::date;
        v_global_day := (now() AT TIME ZONE glob.time_zone)::date;
        rlim := nullif(least(nullif(proj.recipients_per_mail, 0), nullif(glob.recipients_per_mail, 0)), 0);
        IF rlim IS NOT NULL AND p_recipients > rlim THEN
            v_state := 'backlog'; v_reason := 'too_many_recipients';
            v_detail := format('too many recipients, %s > %s', p_recipients, rlim);
        ELSIF proj.paused_reason IS NOT NULL THEN
            v_state := 'backlog'; v_reason := 'project_paused';
            v_detail := format('project paused (%s)', proj.paused_reason);
        ELSIF deskmail_take_quota(p_project, v_project_day, proj.per_day) IS NULL THEN
            v_state := 'backlog'; v_reason := 'daily_limit';
            v_detail := format('daily limit of %s reached', proj.per_day);
        ELSIF deskmail_take_quota('*', v_global_day, glob.per_day) IS NULL THEN
            UPDATE quota_counters SET sent = sent - 1 WHERE scope = p_project AND day = v_project_day;
            v_state := 'backlog'; v_reason := 'global_daily_limit';
            v_detail := format('global daily limit of %s reached (MAIL_LIMIT_PER_DAY_SMTP)', glob.per_day);
        END IF;
    END IF;

    INSERT INTO mail (event_id, project, kind, priority, state, reason, detail, mail_service, event, subject,
                      recipients, created_at)
    VALUES (p_event_id, p_project, p_kind, p_priority, v_state, v_reason, v_detail, v_service, p_event, p_subject,
            p_recipients, p_created_at)
    ON CONFLICT (event_id) DO NOTHING;
    IF NOT FOUND THEN
        IF v_state = 'queued' THEN
            UPDATE quota_counters SET sent = sent - 1
             WHERE (scope, day) IN ((p_project, v_project_day), ('*', v_global_day));
        END IF;
        RETURN QUERY SELECT m.state, m.reason, m.detail, m.mail_service, false FROM mail m WHERE m.event_id = p_event_id;
        RETURN;
    END IF;

    IF v_reason IN ('daily_limit', 'global_daily_limit') THEN
        UPDATE projects SET paused_reason = v_reason, paused_at = now(), updated_at = now()
         WHERE key = p_project AND paused_reason IS NULL;
    END IF;
    RETURN QUERY SELECT v_state, v_reason, v_detail, v_service, true;
END
$$;
