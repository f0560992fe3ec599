-- The outcomes of plain deliveries (the mail sent, nothing to refund, no configuration error, no
-- pause), written for a whole group in one statement instead of deskmail_record_outcome's four per
-- mail, with the same effect: each mail's attempt row (its phase as it stood), then, where the lease
-- is still the writer's and the mail is being sent (or was queued again by a takeover), the mail
-- `sent`, and the configuration error of the projects that sent cleared. Returns the mails whose lease
-- was the writer's (the others took only their attempt row). Rows are locked in event id order, like
-- every writer of mail rows; no mail may appear twice. A group holding any other outcome (or a mail
-- twice) goes through deskmail_record_outcome, one by one, as before (deskmail_record_outcomes,
-- below, on the word of workers.store).

CREATE FUNCTION deskmail_record_deliveries(p_rows jsonb, p_worker text)
RETURNS SETOF uuid
LANGUAGE plpgsql
SET enable_seqscan = off SET enable_bitmapscan = off SET enable_hashjoin = off SET enable_mergejoin = off
SET plan_cache_mode = force_generic_plan
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

-- A group's outcomes, whatever they are: set-wise when the caller says all are plain deliveries and no
-- mail is there twice (p_plain, decided by workers.store, which builds the rows), else each through
-- deskmail_record_outcome in the rows' order (event id order). Returns the mails whose lease was the
-- writer's, that is, those that took their outcome.
CREATE FUNCTION deskmail_record_outcomes(p_rows jsonb, p_worker text, p_plain boolean)
RETURNS SETOF uuid
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
