-- A batch of events admitted by one function call: the same decisions, in the same order, as
-- deskmail_admit made mail by mail, with a handful of statements per batch instead of eight per mail.
--
-- The quota counters a batch may take from are locked first, projects in key order and the global
-- counter last, so two batches never wait on each other in a cycle. The events are then decided in
-- order against those locked counts (exact: a unit is taken only while the count is below its limit),
-- inserted in one statement, and the counters written once. Which events are in the ledger already is
-- read once the locks are held, so a batch that admitted one of them under the same locks is seen. A
-- mail another transaction admitted first all the same (one that took no lock: its project was paused
-- or unknown there) takes nothing: its units are not written, and the answer is that mail's own, marked
-- not new; the later events of this batch were decided with that unit counted, so they can only have
-- been held back, never let past a limit. A project that reaches a limit is paused as before, so
-- the later events of the batch find it paused.

CREATE FUNCTION deskmail_admit_batch(p_rows jsonb)
RETURNS TABLE (event_id uuid, state text, reason text, detail text, mail_service text, is_new boolean)
LANGUAGE plpgsql AS $$
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

-- deskmail_admit stays for the admission workers of the previous release while a rolling upgrade
-- replaces them (they decide mail by mail under the same counters); nothing of this release calls it.
