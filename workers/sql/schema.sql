-- deskmail's schema as workers/sql/migrations/ build it, from pg_dump --schema-only.
-- Made by `make schema`; do not edit. Migrations:
--   0001_initial
--   0002_admit
--   0003_control
--   0004_auto_resume
--   0005_admit_single_write
--   0006_leases
--   0007_control_plane
--   0008_attachments
--   0009_operations
--   0010_console
--   0011_control_scale
--   0012_console_filter
--   0013_bulk_accepted
--   0014_admit_batch
--   0015_data_phase_by_key
--   0016_record_deliveries

CREATE FUNCTION public.deskmail_add_quota(p_scope text, p_day date, p_n integer) RETURNS void
    LANGUAGE sql
    AS $$
    INSERT INTO quota_counters AS q (scope, day, sent) VALUES (p_scope, p_day, p_n)
    ON CONFLICT (scope, day) DO UPDATE SET sent = q.sent + EXCLUDED.sent
$$;

CREATE FUNCTION public.deskmail_admit(p_event_id uuid, p_project text, p_kind text, p_priority smallint, p_event jsonb, p_subject text, p_recipients integer, p_created_at timestamp with time zone) RETURNS TABLE(state text, reason text, detail text, mail_service text, is_new boolean)
    LANGUAGE plpgsql
    AS $$
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

CREATE FUNCTION public.deskmail_admit_batch(p_rows jsonb) RETURNS TABLE(event_id uuid, state text, reason text, detail text, mail_service text, is_new boolean)
    LANGUAGE plpgsql
    AS $$
DECLARE
    a      record;
    proj   projects%ROWTYPE;
    glob   global_limits%ROWTYPE;
    v_gday date;
    v_gsent integer;                      -- the global counter, as taken so far by this batch
    v_known uuid[];                       -- ids already in the ledger, or seen earlier in this batch
    -- the batch's projects, by position in k_key
    k_key      text[] := '{}';
    k_service  text[] := '{}';
    k_reject   text[] := '{}';            -- the detail of a project nobody can send for, else NULL
    k_day      date[] := '{}';
    k_limit    integer[] := '{}';
    k_rlim     integer[] := '{}';
    k_paused   text[] := '{}';            -- paused_reason as this batch leaves it
    k_pause    text[] := '{}';            -- a pause this batch sets
    k_sent     integer[] := '{}';         -- the project counter, as taken so far by this batch
    k_taken    integer[] := '{}';
    i      integer;
    v_service text;
    -- the decisions, by the event's position in p_rows
    d_ord    bigint[] := '{}';
    d_id     uuid[] := '{}';
    d_state  text[] := '{}';
    d_reason text[] := '{}';
    d_detail text[] := '{}';
    d_service text[] := '{}';
    d_day    date[] := '{}';
    d_gday   date[] := '{}';
    d_key    integer[] := '{}';
    v_state  text;
    v_reason text;
    v_detail text;
    v_takes  boolean := false;
    v_gtaken integer := 0;
    v_lost   uuid[];                      -- decided here, but admitted first by another transaction
BEGIN
    SELECT * INTO glob FROM global_limits;
    v_gday := (now() AT TIME ZONE glob.time_zone)::date;

    FOR a IN SELECT DISTINCT x ->> 'project' AS project FROM jsonb_array_elements(p_rows) x ORDER BY 1 LOOP
        proj := NULL;
        v_service := NULL;
        SELECT * INTO proj FROM projects p WHERE p.key = a.project;
        IF proj.key IS NULL OR proj.settings IS NULL THEN
            SELECT p.mail_service INTO v_service FROM projects p WHERE p.key = 'default' AND p.settings IS NOT NULL;
            IF v_service IS NOT NULL AND proj.key IS NULL THEN
                INSERT INTO projects (key) VALUES (a.project) ON CONFLICT (key) DO NOTHING;
                SELECT * INTO proj FROM projects p WHERE p.key = a.project;
            END IF;
        ELSE
            v_service := proj.mail_service;
        END IF;
        k_key := k_key || a.project;
        k_service := k_service || v_service;
        k_reject := k_reject || CASE WHEN v_service IS NULL
                                     THEN format('project: no settings for %L and no default project', a.project) END;
        k_day := k_day || (now() AT TIME ZONE proj.time_zone)::date;
        k_limit := k_limit || proj.per_day;
        k_rlim := k_rlim || nullif(least(nullif(proj.recipients_per_mail, 0), nullif(glob.recipients_per_mail, 0)), 0);
        k_paused := k_paused || proj.paused_reason;
        k_pause := k_pause || NULL::text;
        k_taken := k_taken || 0;
        IF v_service IS NOT NULL AND proj.paused_reason IS NULL THEN  -- its mail may take units: lock its counter
            INSERT INTO quota_counters AS q (scope, day, sent) VALUES (a.project, k_day[cardinality(k_day)], 0)
            ON CONFLICT (scope, day) DO UPDATE SET sent = q.sent RETURNING q.sent INTO i;
            k_sent := k_sent || i;
            v_takes := true;
        ELSE
            k_sent := k_sent || 0;
        END IF;
    END LOOP;
    IF v_takes THEN
        INSERT INTO quota_counters AS q (scope, day, sent) VALUES ('*', v_gday, 0)
        ON CONFLICT (scope, day) DO UPDATE SET sent = q.sent RETURNING q.sent INTO v_gsent;
    END IF;
    -- after the locks: a batch that held them (and admitted one of these events) has committed by now
    SELECT coalesce(array_agg(m.event_id), '{}') INTO v_known
      FROM mail m WHERE m.event_id IN (SELECT (x ->> 'event_id')::uuid FROM jsonb_array_elements(p_rows) x);

    FOR a IN SELECT r.ord, r.event_id, r.project, r.recipients
               FROM ROWS FROM (jsonb_to_recordset(p_rows) AS (event_id uuid, project text, recipients integer))
                    WITH ORDINALITY AS r(event_id, project, recipients, ord)
              ORDER BY r.ord LOOP
        CONTINUE WHEN a.event_id = ANY(v_known);
        v_known := v_known || a.event_id;
        i := array_position(k_key, a.project);
        v_state := 'queued'; v_reason := NULL; v_detail := NULL;
        IF k_reject[i] IS NOT NULL THEN
            v_state := 'rejected'; v_reason := 'unknown_project'; v_detail := k_reject[i];
        ELSIF k_rlim[i] IS NOT NULL AND a.recipients > k_rlim[i] THEN
            v_state := 'backlog'; v_reason := 'too_many_recipients';
            v_detail := format('too many recipients, %s > %s', a.recipients, k_rlim[i]);
        ELSIF k_paused[i] IS NOT NULL THEN
            v_state := 'backlog'; v_reason := 'project_paused'; v_detail := format('project paused (%s)', k_paused[i]);
        ELSIF coalesce(k_limit[i], 0) <> 0 AND k_sent[i] + 1 > k_limit[i] THEN
            v_state := 'backlog'; v_reason := 'daily_limit'; v_detail := format('daily limit of %s reached', k_limit[i]);
        ELSIF coalesce(glob.per_day, 0) <> 0 AND v_gsent + 1 > glob.per_day THEN
            v_state := 'backlog'; v_reason := 'global_daily_limit';
            v_detail := format('global daily limit of %s reached (MAIL_LIMIT_PER_DAY_SMTP)', glob.per_day);
        ELSE
            k_sent[i] := k_sent[i] + 1; k_taken[i] := k_taken[i] + 1;
            v_gsent := v_gsent + 1; v_gtaken := v_gtaken + 1;
        END IF;
        IF v_reason IN ('daily_limit', 'global_daily_limit') THEN
            k_paused[i] := v_reason; k_pause[i] := v_reason;
        END IF;
        d_ord := d_ord || a.ord; d_id := d_id || a.event_id; d_state := d_state || v_state; d_reason := d_reason || v_reason;
        d_detail := d_detail || v_detail; d_service := d_service || k_service[i]; d_key := d_key || i;
        d_day := d_day || CASE WHEN v_state = 'queued' THEN k_day[i] END;
        d_gday := d_gday || CASE WHEN v_state = 'queued' THEN v_gday END;
    END LOOP;

    WITH decided AS (
        SELECT r.*, d.*
          FROM ROWS FROM (jsonb_to_recordset(p_rows) AS (event_id uuid, project text, kind text, priority smallint,
                                                         event jsonb, subject text, recipients integer,
                                                         created_at timestamptz))
               WITH ORDINALITY AS r(event_id, project, kind, priority, event, subject, recipients, created_at, ord)
          JOIN unnest(d_ord, d_state, d_reason, d_detail, d_service, d_day, d_gday)
               AS d(d_ord, d_state, d_reason, d_detail, d_service, d_day, d_gday) ON d.d_ord = r.ord
    ), inserted AS (
        INSERT INTO mail (event_id, project, kind, priority, state, reason, detail, mail_service, event, subject,
                          recipients, created_at, quota_day, global_quota_day)
        SELECT c.event_id, c.project, c.kind, c.priority, c.d_state, c.d_reason, c.d_detail, c.d_service, c.event,
               c.subject, c.recipients, c.created_at, c.d_day, c.d_gday
          FROM decided c ORDER BY c.ord
        ON CONFLICT ON CONSTRAINT mail_pkey DO NOTHING
        RETURNING mail.event_id
    )
    SELECT coalesce(array_agg(c.event_id), '{}') INTO v_lost
      FROM decided c WHERE c.event_id NOT IN (SELECT n.event_id FROM inserted n);

    -- the units of mails another transaction admitted first are not taken
    FOR i IN 1 .. cardinality(d_id) LOOP
        IF d_id[i] = ANY(v_lost) AND d_state[i] = 'queued' THEN
            k_taken[d_key[i]] := k_taken[d_key[i]] - 1;
            v_gtaken := v_gtaken - 1;
        END IF;
    END LOOP;

    FOR i IN 1 .. cardinality(k_key) LOOP
        IF k_taken[i] > 0 THEN
            UPDATE quota_counters q SET sent = q.sent + k_taken[i] WHERE q.scope = k_key[i] AND q.day = k_day[i];
        END IF;
        IF k_pause[i] IS NOT NULL THEN
            UPDATE projects p SET paused_reason = k_pause[i], paused_at = now(), updated_at = now()
             WHERE p.key = k_key[i] AND p.paused_reason IS NULL;
        END IF;
    END LOOP;
    IF v_gtaken > 0 THEN
        UPDATE quota_counters q SET sent = q.sent + v_gtaken WHERE q.scope = '*' AND q.day = v_gday;
    END IF;

    RETURN QUERY
        SELECT d.event_id, d.state, d.reason, d.detail, d.service, true
          FROM unnest(d_id, d_state, d_reason, d_detail, d_service) AS d(event_id, state, reason, detail, service)
         WHERE d.event_id <> ALL(v_lost);
    RETURN QUERY  -- mails admitted before, here or by another transaction: their own state, not new
        SELECT m.event_id, m.state, m.reason, m.detail, m.mail_service, false
          FROM mail m
         WHERE m.event_id IN (SELECT (x ->> 'event_id')::uuid FROM jsonb_array_elements(p_rows) x)
           AND (m.event_id <> ALL(d_id) OR m.event_id = ANY(v_lost));
END
$$;

CREATE FUNCTION public.deskmail_auto_resume(p_project text, p_now timestamp with time zone, p_max integer) RETURNS integer
    LANGUAGE plpgsql
    AS $$
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

CREATE FUNCTION public.deskmail_claim(p_ids uuid[], p_worker text, p_lease double precision, p_service text) RETURNS TABLE(event_id uuid, project text, kind text, priority smallint, event jsonb, message_id text, attempt integer, lease_token uuid, claimed_at timestamp with time zone, received_at timestamp with time zone, deferred text[], settings_key text, settings_version integer)
    LANGUAGE plpgsql
    SET enable_seqscan TO 'off'
    SET enable_bitmapscan TO 'off'
    SET enable_hashjoin TO 'off'
    SET enable_mergejoin TO 'off'
    SET plan_cache_mode TO 'force_generic_plan'
    AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    UPDATE mail m
       SET state = 'sending', attempts = m.attempts + 1, claimed_at = now(), claimed_by = p_worker,
           lease_token = gen_random_uuid(), lease_until = now() + make_interval(secs => p_lease),
           takeover_marked_at = NULL,
           duplicate_risk = m.duplicate_risk OR m.phase IS NOT DISTINCT FROM 'lost_in_data',
           phase = NULL, updated_at = now()
      FROM (SELECT x.event_id, s.key, s.settings_version, s.mail_service
              FROM unnest(p_ids) AS i(event_id)
              JOIN mail x ON x.event_id = i.event_id
              CROSS JOIN LATERAL (SELECT p.key, p.settings_version, p.mail_service FROM projects p
                                   WHERE p.key IN (x.project, 'default') AND p.settings IS NOT NULL
                                   ORDER BY p.key = x.project DESC LIMIT 1) AS s
             WHERE x.state IS NOT DISTINCT FROM 'queued'
             ORDER BY x.event_id FOR UPDATE OF x) AS s
     WHERE m.event_id = s.event_id AND m.state IS NOT DISTINCT FROM 'queued' AND s.mail_service = p_service
       AND (m.next_attempt_at IS NULL OR m.next_attempt_at <= now())
    RETURNING m.event_id, m.project, m.kind, m.priority, m.event, m.message_id, m.attempts, m.lease_token,
              m.claimed_at, coalesce(m.lifetime_from, m.received_at), m.deferred, s.key, s.settings_version;
END
$$;

CREATE FUNCTION public.deskmail_enter_data(p_ids uuid[], p_tokens uuid[]) RETURNS SETOF uuid
    LANGUAGE plpgsql
    SET enable_seqscan TO 'off'
    SET enable_bitmapscan TO 'off'
    SET enable_hashjoin TO 'off'
    SET enable_mergejoin TO 'off'
    SET plan_cache_mode TO 'force_generic_plan'
    AS $$
BEGIN
    RETURN QUERY
    UPDATE mail m SET phase = 'data'
      FROM unnest(p_ids, p_tokens) AS e(event_id, token)
     WHERE m.event_id = e.event_id AND m.lease_token = e.token AND m.state IS NOT DISTINCT FROM 'sending'
    RETURNING m.event_id;
END
$$;

CREATE FUNCTION public.deskmail_mail_mentions(p_subject text, p_event jsonb, p_text text) RETURNS boolean
    LANGUAGE sql STABLE
    AS $$
    SELECT p_text IS NULL OR p_subject ILIKE '%' || p_text || '%'
        OR EXISTS (SELECT 1 FROM jsonb_array_elements(coalesce(p_event->'to', '[]') || coalesce(p_event->'cc', '[]')
                                                      || coalesce(p_event->'bcc', '[]')) AS r(v)
                    WHERE coalesce(r.v->>'address', r.v #>> '{}') ILIKE '%' || p_text || '%'
                       OR r.v->>'name' ILIKE '%' || p_text || '%')
$$;

CREATE FUNCTION public.deskmail_project_today(p_project text) RETURNS date
    LANGUAGE sql STABLE
    AS $$
    SELECT (now() AT TIME ZONE coalesce((SELECT time_zone FROM projects WHERE key = p_project), 'UTC'))::date
$$;

CREATE FUNCTION public.deskmail_record_deliveries(p_rows jsonb, p_worker text) RETURNS SETOF uuid
    LANGUAGE plpgsql
    SET enable_seqscan TO 'off'
    SET enable_bitmapscan TO 'off'
    SET enable_hashjoin TO 'off'
    SET enable_mergejoin TO 'off'
    SET plan_cache_mode TO 'force_generic_plan'
    AS $$
BEGIN
    RETURN QUERY
    WITH r AS (
        SELECT * FROM jsonb_to_recordset(p_rows) AS r(event_id uuid, token uuid, attempt integer,
                                                      started timestamptz, outcome text, reason text,
                                                      detail text, refused jsonb, message_id text)
    ), locked AS (  -- each row with its mail as it stands once locked; the steps below read only this
        SELECT r.*, m.lease_token IS NOT DISTINCT FROM r.token AS held, m.state AS was, m.phase AS phase
          FROM r JOIN mail m ON m.event_id = r.event_id
         ORDER BY m.event_id FOR UPDATE OF m
    ), tried AS (
        INSERT INTO attempts (event_id, attempt, worker, started_at, phase, outcome, detail)
        SELECT l.event_id, l.attempt, p_worker, l.started, l.phase, l.outcome, l.detail FROM locked l
        ON CONFLICT (event_id, attempt) DO UPDATE
           SET outcome = EXCLUDED.outcome, detail = EXCLUDED.detail, ended_at = now(), worker = EXCLUDED.worker
         WHERE attempts.outcome = 'lost'
    ), sent AS (
        UPDATE mail m
           SET state = 'sent', reason = l.reason, detail = l.detail, refused = coalesce(l.refused, m.refused),
               deferred = NULL, message_id = coalesce(l.message_id, m.message_id), next_attempt_at = NULL,
               sent_at = now(), lease_until = NULL, takeover_marked_at = NULL, updated_at = now()
          FROM locked l
         WHERE m.event_id = l.event_id AND l.held AND l.was IN ('sending', 'queued')
        RETURNING m.project
    ), cleared AS (
        UPDATE projects p SET config_error = NULL, config_error_at = NULL
         WHERE p.key IN (SELECT s.project FROM sent s) AND p.config_error IS NOT NULL
    )
    SELECT l.event_id FROM locked l WHERE l.held;
END
$$;

CREATE FUNCTION public.deskmail_record_outcome(p_event_id uuid, p_token uuid, p_attempt integer, p_worker text, p_started timestamp with time zone, p_outcome text, p_state text, p_reason text, p_detail text, p_refused jsonb, p_deferred text[], p_message_id text, p_delay double precision, p_refund boolean, p_config_error text, p_pause text) RETURNS boolean
    LANGUAGE plpgsql
    AS $$
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

CREATE FUNCTION public.deskmail_record_outcomes(p_rows jsonb, p_worker text, p_plain boolean) RETURNS SETOF uuid
    LANGUAGE plpgsql
    AS $$
BEGIN
    IF p_plain THEN
        RETURN QUERY SELECT d FROM deskmail_record_deliveries(p_rows, p_worker) AS d;
    ELSE
        RETURN QUERY
        SELECT r.event_id
          FROM jsonb_to_recordset(p_rows) AS r(event_id uuid, token uuid, attempt integer, started timestamptz,
                                               outcome text, state text, reason text, detail text, refused jsonb,
                                               deferred text[], message_id text, delay double precision,
                                               refund boolean, config_error text, pause text)
         WHERE deskmail_record_outcome(r.event_id, r.token, r.attempt, p_worker, r.started, r.outcome, r.state,
                                       r.reason, r.detail, r.refused, r.deferred, r.message_id, r.delay, r.refund,
                                       r.config_error, r.pause);
    END IF;
END
$$;

CREATE FUNCTION public.deskmail_refund(p_event_id uuid) RETURNS void
    LANGUAGE plpgsql
    AS $$
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

CREATE FUNCTION public.deskmail_take_over(p_grace double precision, p_limit integer) RETURNS TABLE(event_id uuid, state text, priority smallint, mail_service text)
    LANGUAGE plpgsql
    AS $$
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

CREATE FUNCTION public.deskmail_take_quota(p_scope text, p_day date, p_limit integer) RETURNS boolean
    LANGUAGE sql
    AS $$
    INSERT INTO quota_counters AS q (scope, day, sent) VALUES (p_scope, p_day, 1)
    ON CONFLICT (scope, day) DO UPDATE SET sent = q.sent + 1
        WHERE coalesce(p_limit, 0) = 0 OR q.sent + 1 <= p_limit
    RETURNING true
$$;

CREATE TABLE public.attachment_blobs (
    sha256 text NOT NULL,
    size bigint NOT NULL,
    content bytea NOT NULL,
    stored_at timestamp with time zone DEFAULT now() NOT NULL,
    used_at timestamp with time zone DEFAULT now() NOT NULL
);
ALTER TABLE ONLY public.attachment_blobs ALTER COLUMN content SET STORAGE EXTERNAL;

CREATE TABLE public.attempts (
    event_id uuid NOT NULL,
    attempt integer NOT NULL,
    worker text NOT NULL,
    started_at timestamp with time zone NOT NULL,
    ended_at timestamp with time zone DEFAULT now() NOT NULL,
    phase text,
    outcome text NOT NULL,
    detail text
);

CREATE TABLE public.audit (
    id bigint NOT NULL,
    at timestamp with time zone DEFAULT now() NOT NULL,
    actor text NOT NULL,
    action text NOT NULL,
    project text,
    params jsonb DEFAULT '{}'::jsonb NOT NULL,
    touched integer DEFAULT 0 NOT NULL,
    result jsonb DEFAULT '{}'::jsonb NOT NULL
);

ALTER TABLE public.audit ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME public.audit_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);

CREATE TABLE public.console_jobs (
    id uuid NOT NULL,
    kind text NOT NULL,
    title text NOT NULL,
    requested_by text NOT NULL,
    project text,
    total integer DEFAULT 0 NOT NULL,
    done integer DEFAULT 0 NOT NULL,
    steps jsonb DEFAULT '[]'::jsonb NOT NULL,
    ok boolean,
    summary text,
    started_at timestamp with time zone DEFAULT now() NOT NULL,
    finished_at timestamp with time zone,
    CONSTRAINT console_jobs_kind_check CHECK ((kind = ANY (ARRAY['test'::text, 'bulk'::text])))
);

CREATE TABLE public.console_login_attempts (
    id bigint NOT NULL,
    at timestamp with time zone DEFAULT now() NOT NULL,
    username text NOT NULL,
    address text NOT NULL,
    ok boolean NOT NULL
);

ALTER TABLE public.console_login_attempts ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME public.console_login_attempts_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);

CREATE TABLE public.console_oidc_logins (
    state text NOT NULL,
    nonce text NOT NULL,
    verifier text NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL
);

CREATE TABLE public.console_sessions (
    token_hash bytea NOT NULL,
    username text NOT NULL,
    csrf_token text NOT NULL,
    via text DEFAULT 'password'::text NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    expires_at timestamp with time zone NOT NULL
);

CREATE TABLE public.console_users (
    username text NOT NULL,
    password_hash text,
    role text NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT console_users_role_check CHECK ((role = ANY (ARRAY['admin'::text, 'viewer'::text]))),
    CONSTRAINT console_users_username_check CHECK ((username ~ '^[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}$'::text))
);

CREATE TABLE public.control_moved (
    request_id uuid NOT NULL,
    n bigint NOT NULL,
    event_id uuid NOT NULL
);

ALTER TABLE public.control_moved ALTER COLUMN n ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME public.control_moved_n_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);

CREATE TABLE public.control_refusals (
    id bigint NOT NULL,
    request_id uuid,
    refused_at timestamp with time zone DEFAULT now() NOT NULL,
    reason text NOT NULL
);

ALTER TABLE public.control_refusals ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME public.control_refusals_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);

CREATE TABLE public.control_requests (
    request_id uuid NOT NULL,
    action text NOT NULL,
    answered_at timestamp with time zone DEFAULT now() NOT NULL,
    answer jsonb NOT NULL,
    work jsonb
);

CREATE TABLE public.control_sent (
    request_id uuid NOT NULL,
    action text NOT NULL,
    project text,
    requested_by text NOT NULL,
    requested_at timestamp with time zone NOT NULL,
    sent_at timestamp with time zone DEFAULT now() NOT NULL
);

CREATE TABLE public.control_tests (
    request_id uuid NOT NULL,
    project text NOT NULL,
    mail_service text NOT NULL,
    to_address text,
    attach boolean DEFAULT false NOT NULL,
    settings jsonb,
    sealed_secrets text,
    message jsonb NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    started_at timestamp with time zone,
    worker text
);

CREATE TABLE public.deskmail_migrations (
    name text NOT NULL,
    applied_at timestamp with time zone DEFAULT now() NOT NULL
);

CREATE TABLE public.global_limits (
    id boolean DEFAULT true NOT NULL,
    per_day integer,
    recipients_per_mail integer,
    time_zone text DEFAULT 'UTC'::text NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT global_limits_id_check CHECK (id),
    CONSTRAINT global_limits_per_day_check CHECK ((per_day >= 0)),
    CONSTRAINT global_limits_recipients_per_mail_check CHECK ((recipients_per_mail >= 0))
);

CREATE TABLE public.mail (
    event_id uuid NOT NULL,
    seq bigint NOT NULL,
    project text,
    kind text,
    priority smallint DEFAULT 1 NOT NULL,
    state text NOT NULL,
    reason text,
    detail text,
    event jsonb,
    raw text,
    subject text,
    recipients integer,
    mail_service text,
    message_id text,
    attempts integer DEFAULT 0 NOT NULL,
    takeovers integer DEFAULT 0 NOT NULL,
    refused jsonb,
    deferred text[],
    next_attempt_at timestamp with time zone,
    created_at timestamp with time zone,
    received_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    claimed_at timestamp with time zone,
    sent_at timestamp with time zone,
    lease_token uuid,
    lease_until timestamp with time zone,
    claimed_by text,
    takeover_marked_at timestamp with time zone,
    phase text,
    duplicate_risk boolean DEFAULT false NOT NULL,
    quota_day date,
    global_quota_day date,
    lifetime_from timestamp with time zone,
    raw_size bigint,
    CONSTRAINT mail_state_known CHECK ((state = ANY (ARRAY['queued'::text, 'sending'::text, 'sent'::text, 'backlog'::text, 'suspended'::text, 'failed'::text, 'ambiguous'::text, 'rejected'::text])))
);

CREATE TABLE public.mail_attachments (
    event_id uuid NOT NULL,
    sha256 text NOT NULL
);

ALTER TABLE public.mail ALTER COLUMN seq ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME public.mail_seq_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);

CREATE TABLE public.projects (
    key text NOT NULL,
    mail_service text,
    settings jsonb,
    secrets bytea,
    settings_version integer DEFAULT 0 NOT NULL,
    time_zone text DEFAULT 'UTC'::text NOT NULL,
    per_day integer,
    recipients_per_mail integer,
    paused_reason text,
    paused_at timestamp with time zone,
    auto_resume boolean DEFAULT false NOT NULL,
    config_error text,
    config_error_at timestamp with time zone,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT projects_per_day_check CHECK ((per_day >= 0)),
    CONSTRAINT projects_recipients_per_mail_check CHECK ((recipients_per_mail >= 0))
);

CREATE TABLE public.quota_counters (
    scope text NOT NULL,
    day date NOT NULL,
    sent integer NOT NULL
);

CREATE TABLE public.scheduler_heartbeats (
    scheduler text NOT NULL,
    started_at timestamp with time zone DEFAULT now() NOT NULL,
    beat_at timestamp with time zone DEFAULT now() NOT NULL
);

ALTER TABLE ONLY public.attachment_blobs
    ADD CONSTRAINT attachment_blobs_pkey PRIMARY KEY (sha256);

ALTER TABLE ONLY public.attempts
    ADD CONSTRAINT attempts_pkey PRIMARY KEY (event_id, attempt);

ALTER TABLE ONLY public.audit
    ADD CONSTRAINT audit_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.console_jobs
    ADD CONSTRAINT console_jobs_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.console_login_attempts
    ADD CONSTRAINT console_login_attempts_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.console_oidc_logins
    ADD CONSTRAINT console_oidc_logins_pkey PRIMARY KEY (state);

ALTER TABLE ONLY public.console_sessions
    ADD CONSTRAINT console_sessions_pkey PRIMARY KEY (token_hash);

ALTER TABLE ONLY public.console_users
    ADD CONSTRAINT console_users_pkey PRIMARY KEY (username);

ALTER TABLE ONLY public.control_moved
    ADD CONSTRAINT control_moved_pkey PRIMARY KEY (request_id, n);

ALTER TABLE ONLY public.control_refusals
    ADD CONSTRAINT control_refusals_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.control_requests
    ADD CONSTRAINT control_requests_pkey PRIMARY KEY (request_id);

ALTER TABLE ONLY public.control_sent
    ADD CONSTRAINT control_sent_pkey PRIMARY KEY (request_id);

ALTER TABLE ONLY public.control_tests
    ADD CONSTRAINT control_tests_pkey PRIMARY KEY (request_id);

ALTER TABLE ONLY public.deskmail_migrations
    ADD CONSTRAINT deskmail_migrations_pkey PRIMARY KEY (name);

ALTER TABLE ONLY public.global_limits
    ADD CONSTRAINT global_limits_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.mail_attachments
    ADD CONSTRAINT mail_attachments_pkey PRIMARY KEY (event_id, sha256);

ALTER TABLE ONLY public.mail
    ADD CONSTRAINT mail_pkey PRIMARY KEY (event_id);

ALTER TABLE ONLY public.mail
    ADD CONSTRAINT mail_seq_key UNIQUE (seq);

ALTER TABLE ONLY public.projects
    ADD CONSTRAINT projects_pkey PRIMARY KEY (key);

ALTER TABLE ONLY public.quota_counters
    ADD CONSTRAINT quota_counters_pkey PRIMARY KEY (scope, day);

ALTER TABLE ONLY public.scheduler_heartbeats
    ADD CONSTRAINT scheduler_heartbeats_pkey PRIMARY KEY (scheduler);

CREATE INDEX audit_project ON public.audit USING btree (project, id);

CREATE INDEX console_login_attempts_address ON public.console_login_attempts USING btree (address, at) WHERE (NOT ok);

CREATE INDEX console_login_attempts_user ON public.console_login_attempts USING btree (username, at) WHERE (NOT ok);

CREATE INDEX console_sessions_expiry ON public.console_sessions USING btree (expires_at);

CREATE INDEX control_refusals_request ON public.control_refusals USING btree (request_id) WHERE (request_id IS NOT NULL);

CREATE INDEX control_requests_unfinished ON public.control_requests USING btree (answered_at) WHERE (work IS NOT NULL);

CREATE INDEX control_sent_at ON public.control_sent USING btree (sent_at);

CREATE INDEX mail_attachments_blob ON public.mail_attachments USING btree (sha256);

CREATE INDEX mail_backlog_drain ON public.mail USING btree (project, priority DESC, seq) WHERE (state = 'backlog'::text);

CREATE INDEX mail_backlog_list ON public.mail USING btree (seq) WHERE (state = 'backlog'::text);

CREATE INDEX mail_backlog_project_list ON public.mail USING btree (project, seq) WHERE (state = 'backlog'::text);

CREATE INDEX mail_movable ON public.mail USING btree (state, priority DESC, seq) WHERE (state = ANY (ARRAY['backlog'::text, 'suspended'::text, 'failed'::text, 'ambiguous'::text]));

CREATE INDEX mail_problems ON public.mail USING btree (project, seq) WHERE (state = ANY (ARRAY['failed'::text, 'ambiguous'::text]));

CREATE INDEX mail_project_state ON public.mail USING btree (project, state);

CREATE INDEX mail_queued_due ON public.mail USING btree (next_attempt_at, updated_at) WHERE (state = 'queued'::text);

CREATE INDEX mail_sending_lease ON public.mail USING btree (lease_until) WHERE (state = 'sending'::text);

CREATE INDEX mail_suspended_list ON public.mail USING btree (project, seq) WHERE (state = 'suspended'::text);

ALTER TABLE ONLY public.console_sessions
    ADD CONSTRAINT console_sessions_username_fkey FOREIGN KEY (username) REFERENCES public.console_users(username) ON DELETE CASCADE;
