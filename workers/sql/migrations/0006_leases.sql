-- Delivery leases, phases, attempts and quota refunds.
--
-- A claim is a lease held by a token: only the holder writes the outcome, the worker renews the
-- lease while an exchange runs, and the scheduler takes over only an expired lease, and only
-- DESKMAIL_TAKEOVER_GRACE after it first saw it expired (a worker still writing its outcome after
-- a database fault wins). `phase` tells a mail that is safe to send again (NULL: the worker never
-- reached DATA) from one that may have been accepted ('data'); a mail sent again after a loss in
-- the DATA window carries `duplicate_risk`. `quota_day` and `global_quota_day` name the counters
-- that hold this mail's unit, so a mail that certainly never left gives it back.

ALTER TABLE mail
    ADD COLUMN lease_token uuid,
    ADD COLUMN lease_until timestamptz,
    ADD COLUMN claimed_by text,
    ADD COLUMN takeover_marked_at timestamptz,
    ADD COLUMN phase text,
    ADD COLUMN duplicate_risk boolean NOT NULL DEFAULT false,
    ADD COLUMN quota_day date,
    ADD COLUMN global_quota_day date,
    ADD COLUMN lifetime_from timestamptz;

DROP INDEX mail_sending_claimed;
CREATE INDEX mail_sending_lease ON mail (lease_until) WHERE state = 'sending';
CREATE INDEX mail_problems ON mail (project, seq) WHERE state IN ('failed', 'ambiguous');

-- One row per delivery attempt: who tried, how far it got, what the server said.
CREATE TABLE attempts (
    event_id   uuid NOT NULL,
    attempt    integer NOT NULL,
    worker     text NOT NULL,
    started_at timestamptz NOT NULL,
    ended_at   timestamptz NOT NULL DEFAULT now(),
    phase      text,
    outcome    text NOT NULL,
    detail     text,
    PRIMARY KEY (event_id, attempt)
);

-- Mails already in the ledger hold a unit of the day they were admitted (if they went out or may).
UPDATE mail m SET quota_day = (m.received_at AT TIME ZONE coalesce(p.time_zone, 'UTC'))::date,
                  global_quota_day = (m.received_at AT TIME ZONE g.time_zone)::date
  FROM projects p, global_limits g
 WHERE p.key = m.project AND m.state IN ('queued', 'sending', 'sent', 'ambiguous');

-- Gives back the units a mail holds (it certainly never left); a no-op for a mail holding none.
CREATE FUNCTION deskmail_refund(p_event_id uuid) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    v_project text;
    v_day date;
    v_gday date;
BEGIN
    SELECT project, quota_day, global_quota_day INTO v_project, v_day, v_gday
      FROM mail WHERE event_id = p_event_id FOR UPDATE;
    IF v_day IS NOT NULL THEN
        UPDATE quota_counters SET sent = greatest(sent - 1, 0) WHERE scope = v_project AND day = v_day;
    END IF;
    IF v_gday IS NOT NULL THEN
        UPDATE quota_counters SET sent = greatest(sent - 1, 0) WHERE scope = '*' AND day = v_gday;
    END IF;
    UPDATE mail SET quota_day = NULL, global_quota_day = NULL WHERE event_id = p_event_id;
END
$$;

-- Records what a worker's attempt came to, in one round trip, only if it still holds the lease
-- (`p_token`). A mail taken over but not claimed again (state queued, same token) still takes the
-- outcome: a late "sent" then stops the second send. Writing the same outcome twice (the commit's
-- answer was lost) changes nothing. The attempt row is written whether or not the lease was held,
-- so the history shows what the server said. Returns whether the mail row took the outcome.
CREATE FUNCTION deskmail_record_outcome(
    p_event_id uuid, p_token uuid, p_attempt integer, p_worker text, p_started timestamptz,
    p_outcome text, p_state text, p_reason text, p_detail text, p_refused jsonb, p_deferred text[],
    p_message_id text, p_delay double precision, p_refund boolean, p_config_error text, p_pause text
) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    m mail%ROWTYPE;
BEGIN
    SELECT * INTO m FROM mail WHERE event_id = p_event_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    INSERT INTO attempts (event_id, attempt, worker, started_at, phase, outcome, detail)
    VALUES (p_event_id, p_attempt, p_worker, p_started, m.phase, p_outcome, p_detail)
    ON CONFLICT (event_id, attempt) DO UPDATE
       SET outcome = EXCLUDED.outcome, detail = EXCLUDED.detail, ended_at = now(),
           worker = EXCLUDED.worker
     WHERE attempts.outcome = 'lost';
    IF m.lease_token IS DISTINCT FROM p_token THEN
        RETURN false;
    END IF;
    IF m.state NOT IN ('sending', 'queued') THEN
        RETURN true;  -- recorded before; this is the same outcome written again
    END IF;
    IF m.state = 'queued' AND p_state = 'queued' THEN
        RETURN true;  -- a retry already recorded, or a takeover that will send it again anyway
    END IF;
    IF p_refund THEN
        PERFORM deskmail_refund(p_event_id);
    END IF;
    UPDATE mail
       SET state = p_state, reason = p_reason, detail = p_detail,
           refused = coalesce(p_refused, refused),
           deferred = CASE WHEN p_state = 'queued' THEN coalesce(p_deferred, deferred) ELSE NULL END,
           message_id = coalesce(p_message_id, message_id),
           next_attempt_at = CASE WHEN p_state = 'queued' THEN now() + make_interval(secs => p_delay) END,
           sent_at = CASE WHEN p_state = 'sent' THEN now() ELSE sent_at END,
           phase = CASE WHEN p_state = 'queued' THEN NULL ELSE phase END,
           lease_until = NULL, takeover_marked_at = NULL, updated_at = now()
     WHERE event_id = p_event_id;
    IF p_state = 'sent' THEN
        UPDATE projects SET config_error = NULL, config_error_at = NULL
         WHERE key = m.project AND config_error IS NOT NULL;
    ELSIF p_config_error IS NOT NULL THEN
        UPDATE projects SET config_error = p_config_error, config_error_at = now() WHERE key = m.project;
    END IF;
    IF p_pause IS NOT NULL THEN
        UPDATE projects SET paused_reason = p_pause, paused_at = now(), updated_at = now()
         WHERE key = m.project AND paused_reason IS NULL;
    END IF;
    RETURN true;
END
$$;

-- The scheduler's takeover of expired leases, in two steps: a lease seen expired is first marked;
-- one still expired `p_grace` seconds after its mark is taken over. A mail lost before DATA is
-- simply sent again; one lost inside the DATA window is sent again once, with the same Message-ID
-- and flagged (a second copy is possible); a second loss inside the DATA window ends `ambiguous`,
-- and a mail that stopped its workers five times ends `failed` (it is likely what kills them).
CREATE FUNCTION deskmail_take_over(p_grace double precision, p_limit integer)
RETURNS TABLE (event_id uuid, state text, priority smallint, mail_service text)
LANGUAGE plpgsql AS $$
DECLARE
    m record;
    v_state text;
    v_detail text;
BEGIN
    UPDATE mail x SET takeover_marked_at = now()
     WHERE x.event_id IN (SELECT y.event_id FROM mail y
                           WHERE y.state = 'sending' AND y.lease_until < now() AND y.takeover_marked_at IS NULL
                           LIMIT p_limit FOR UPDATE SKIP LOCKED);
    FOR m IN SELECT y.event_id, y.phase, y.duplicate_risk, y.takeovers, y.attempts, y.claimed_by,
                    y.claimed_at, y.priority, y.mail_service
               FROM mail y
              WHERE y.state = 'sending' AND y.lease_until < now()
                AND y.takeover_marked_at < now() - make_interval(secs => p_grace)
              LIMIT p_limit FOR UPDATE SKIP LOCKED
    LOOP
        IF m.phase = 'data' AND m.duplicate_risk THEN
            v_state := 'ambiguous';
            v_detail := 'a worker was lost inside the DATA window a second time; the mail may or may not '
                        'have been delivered (no third copy is sent)';
        ELSIF m.phase = 'data' THEN
            v_state := 'queued';
            v_detail := 'a worker was lost inside the DATA window; sent again with the same Message-ID '
                        '(the receiver may get two copies)';
        ELSIF m.takeovers >= 4 THEN
            v_state := 'failed';
            v_detail := 'five workers were lost while sending this mail; not tried again';
        ELSE
            v_state := 'queued';
            v_detail := 'a worker was lost before DATA; sent again (no copy can have left)';
        END IF;
        INSERT INTO attempts (event_id, attempt, worker, started_at, phase, outcome, detail)
        VALUES (m.event_id, m.attempts, coalesce(m.claimed_by, '?'), coalesce(m.claimed_at, now()), m.phase,
                'lost', 'lease expired: ' || v_detail)
        ON CONFLICT ON CONSTRAINT attempts_pkey DO NOTHING;
        IF v_state = 'failed' AND NOT m.duplicate_risk THEN
            PERFORM deskmail_refund(m.event_id);
        END IF;
        UPDATE mail y
           SET state = v_state, detail = v_detail, takeovers = y.takeovers + 1,
               reason = CASE v_state WHEN 'queued' THEN NULL WHEN 'failed' THEN 'workers_lost'
                                     ELSE 'no_final_reply' END,
               phase = CASE WHEN m.phase = 'data' AND v_state = 'queued' THEN 'lost_in_data' END,
               lease_until = NULL, takeover_marked_at = NULL, next_attempt_at = NULL, updated_at = now()
         WHERE y.event_id = m.event_id;
        event_id := m.event_id; state := v_state; priority := m.priority; mail_service := m.mail_service;
        RETURN NEXT;
    END LOOP;
END
$$;

-- Admission as in 0005, now also naming the days whose counters hold the mail's unit.
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
                      recipients, created_at, quota_day, global_quota_day)
    VALUES (p_event_id, p_project, p_kind, p_priority, v_state, v_reason, v_detail, v_service, p_event, p_subject,
            p_recipients, p_created_at,
            CASE WHEN v_state = 'queued' THEN v_project_day END,
            CASE WHEN v_state = 'queued' THEN v_global_day END)
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

-- Auto resume as in 0004, now also naming the days whose counters hold each resumed mail's unit.
CREATE OR REPLACE FUNCTION deskmail_auto_resume(p_project text, p_now timestamptz, p_max integer)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    proj projects%ROWTYPE;
    glob global_limits%ROWTYPE;
    rlim integer;
    pday date;
    gday date;
    m    record;
    n    integer := 0;
BEGIN
    SELECT * INTO proj FROM projects WHERE key = p_project;
    SELECT * INTO glob FROM global_limits;
    rlim := nullif(least(nullif(proj.recipients_per_mail, 0), nullif(glob.recipients_per_mail, 0)), 0);
    pday := (p_now AT TIME ZONE proj.time_zone)::date;
    gday := (p_now AT TIME ZONE glob.time_zone)::date;
    FOR m IN SELECT event_id FROM mail
              WHERE project = p_project AND state = 'backlog' AND (rlim IS NULL OR recipients <= rlim)
              ORDER BY priority DESC, seq LIMIT p_max FOR UPDATE SKIP LOCKED
    LOOP
        EXIT WHEN deskmail_take_quota(p_project, pday, proj.per_day) IS NULL;
        IF deskmail_take_quota('*', gday, glob.per_day) IS NULL THEN
            UPDATE quota_counters SET sent = sent - 1 WHERE scope = p_project AND day = pday;
            EXIT;
        END IF;
        UPDATE mail SET state = 'queued', reason = NULL, detail = 'auto resumed', next_attempt_at = now(),
               quota_day = pday, global_quota_day = gday, updated_at = now()
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
