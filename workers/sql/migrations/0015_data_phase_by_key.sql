-- The DATA phase of a group of leased mails, marked by primary key whatever the statistics say.
--
-- Each sending thread's mark is one of these rows; a process's threads write theirs together. As a
-- plain statement the planner, on statistics taken before a burst (a few mails in 'sending'), chose
-- to read the whole 'sending' index for every group (hundreds of entries, live and dead, during a
-- burst), or, while the table was still small when the plan was cached, to scan the table. Here the
-- ids drive the lookup: the state is compared with IS NOT DISTINCT FROM, which no partial index on
-- state matches, and the plan is made with sequential scans, bitmaps and hash or merge joins off, so
-- it is one primary-key lookup per id for the life of the cached plan. The plan is always the generic
-- one: with the number of ids known, a custom plan looked cheaper every time, so each call planned
-- its statement again.

CREATE FUNCTION deskmail_enter_data(p_ids uuid[], p_tokens uuid[])
RETURNS SETOF uuid
LANGUAGE plpgsql
SET enable_seqscan = off SET enable_bitmapscan = off SET enable_hashjoin = off SET enable_mergejoin = off
SET plan_cache_mode = force_generic_plan
AS $$
BEGIN
    RETURN QUERY
    UPDATE mail m SET phase = 'data'
      FROM unnest(p_ids, p_tokens) AS e(event_id, token)
     WHERE m.event_id = e.event_id AND m.lease_token = e.token AND m.state IS NOT DISTINCT FROM 'sending'
    RETURNING m.event_id;
END
$$;

-- The claim of a batch, planned the same way: by primary key, one lookup per id (with the statistics
-- of a few queued mails the plain statement read the whole queued index for every claim: tens of
-- thousands of entries per claim during a burst). The rows are locked in event id order, so
-- concurrent batches never deadlock.
CREATE FUNCTION deskmail_claim(p_ids uuid[], p_worker text, p_lease double precision, p_service text)
RETURNS TABLE (event_id uuid, project text, kind text, priority smallint, event jsonb, message_id text,
               attempt integer, lease_token uuid, claimed_at timestamptz, received_at timestamptz,
               deferred text[], settings_key text, settings_version integer)
LANGUAGE plpgsql
SET enable_seqscan = off SET enable_bitmapscan = off SET enable_hashjoin = off SET enable_mergejoin = off
SET plan_cache_mode = force_generic_plan
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
