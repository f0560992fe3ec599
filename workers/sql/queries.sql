-- Named queries: each block starts with `-- name: <name>`; loaded once by workers.sql.

-- name: admit
-- A batch of events admitted in one transaction (one commit for all), decided in order as
-- deskmail_admit_batch describes: quota taken unit by unit against locked counters, never overshot.
SELECT event_id, state, reason, detail, mail_service, is_new FROM deskmail_admit_batch(%(rows)s);

-- name: claim
-- The claim is a lease: a fresh token per mail, renewed while the exchange runs (renew_leases).
-- A mail that was lost inside the DATA window carries duplicate_risk from here on. One statement
-- claims a whole batch; mails not queued (taken, done, not due) are simply not returned.
SELECT event_id, project, kind, priority, event, message_id, attempt, lease_token, claimed_at, received_at,
       deferred, settings_key, settings_version
  FROM deskmail_claim(%(ids)s::uuid[], %(worker)s, %(lease)s, %(service)s);

-- name: reroute
-- Queued mails whose project now sends through another mail service than the queue they came on
-- go to that service's queue: settings apply to every mail not sent yet (an admin's fix is meant
-- for them), and a worker deployed for one service never sends through another.
UPDATE mail m SET mail_service = s.mail_service, updated_at = now()
  FROM (SELECT x.event_id, s.mail_service
          FROM mail x
          CROSS JOIN LATERAL (SELECT p.mail_service FROM projects p
                               WHERE p.key IN (x.project, 'default') AND p.settings IS NOT NULL
                               ORDER BY p.key = x.project DESC LIMIT 1) AS s
         WHERE x.event_id = ANY(%(ids)s::uuid[])) AS s
 WHERE m.event_id = s.event_id AND m.state = 'queued' AND s.mail_service IS DISTINCT FROM %(service)s
RETURNING m.event_id, m.priority, m.mail_service;

-- name: record_and_enter
-- The outcomes of the mails workers finished since their last DATA, and the DATA phase of their next
-- mails, in one round trip: a process's sending threads write together (workers.gate), and no mail is
-- in both lists (the two touch different rows). A mail missing from `entered`: its lease was taken over.
WITH recorded AS (
    SELECT d AS event_id FROM deskmail_record_outcomes(%(rows)s, %(worker)s, %(plain)s) AS d
), entered AS (
    SELECT d AS event_id FROM deskmail_enter_data(%(ids)s::uuid[], %(tokens)s::uuid[]) AS d
)
SELECT coalesce((SELECT array_agg(event_id) FROM recorded), '{}') AS recorded,
       coalesce((SELECT array_agg(event_id) FROM entered), '{}') AS entered;

-- name: renew_leases
-- Rows another statement holds are skipped (renewed next time): the renewer never waits, so it
-- never deadlocks with a worker writing its outcomes.
UPDATE mail m SET lease_until = now() + make_interval(secs => %(lease)s), takeover_marked_at = NULL
  FROM (SELECT x.event_id FROM mail x
          JOIN unnest(%(ids)s::uuid[], %(tokens)s::uuid[]) AS held(event_id, token)
            ON x.event_id = held.event_id AND x.lease_token = held.token
         WHERE x.state = 'sending' ORDER BY x.event_id FOR UPDATE OF x SKIP LOCKED) AS held
 WHERE m.event_id = held.event_id
RETURNING m.event_id;

-- name: record_outcomes
-- The outcomes of a batch of attempts in one round trip (deskmail_record_outcomes): the mails that took theirs.
SELECT d AS event_id FROM deskmail_record_outcomes(%(rows)s, %(worker)s, %(plain)s) AS d;

-- name: pause_project
UPDATE projects SET paused_reason = %(reason)s, paused_at = now(), updated_at = now()
 WHERE key = %(project)s AND paused_reason IS NULL;

-- name: record_config_error
UPDATE projects SET config_error = %(detail)s, config_error_at = now()
 WHERE key = %(project)s;

-- name: get_mail
SELECT event_id, seq, project, kind, priority, state, reason, detail, subject, recipients, mail_service,
       message_id, attempts, takeovers, duplicate_risk, phase, claimed_by, lease_until, refused, next_attempt_at,
       created_at, received_at, updated_at, claimed_at, sent_at, event
  FROM mail WHERE event_id = %(event_id)s;

-- name: get_project
SELECT key, mail_service, settings, secrets, settings_version, time_zone, per_day, recipients_per_mail,
       paused_reason, paused_at, auto_resume, config_error, config_error_at, updated_at
  FROM projects WHERE key = %(key)s;

-- name: list_projects
SELECT key, mail_service, settings, secrets, settings_version, time_zone, per_day, recipients_per_mail,
       paused_reason, paused_at, auto_resume, config_error, config_error_at, updated_at
  FROM projects ORDER BY key;

-- name: save_settings
INSERT INTO projects AS p (key, mail_service, settings, secrets, settings_version, time_zone, per_day,
                           recipients_per_mail)
VALUES (%(key)s, %(mail_service)s, %(settings)s, %(secrets)s, 1, %(time_zone)s, %(per_day)s,
        %(recipients_per_mail)s)
ON CONFLICT (key) DO UPDATE
   SET mail_service = EXCLUDED.mail_service, settings = EXCLUDED.settings, secrets = EXCLUDED.secrets,
       settings_version = p.settings_version + 1, time_zone = EXCLUDED.time_zone,
       per_day = CASE WHEN %(has_limits)s THEN EXCLUDED.per_day ELSE p.per_day END,
       recipients_per_mail = CASE WHEN %(has_limits)s THEN EXCLUDED.recipients_per_mail
                                  ELSE p.recipients_per_mail END,
       config_error = NULL, config_error_at = NULL, updated_at = now();

-- name: get_global_limits
SELECT per_day, recipients_per_mail, time_zone FROM global_limits;

-- name: set_global_limits
UPDATE global_limits
   SET per_day = CASE WHEN %(set_per_day)s THEN %(per_day)s ELSE per_day END,
       recipients_per_mail = CASE WHEN %(set_recipients)s THEN %(recipients_per_mail)s
                                  ELSE recipients_per_mail END,
       updated_at = now();

-- name: project_counts
SELECT state, count(*) AS n FROM mail WHERE project = %(project)s GROUP BY state;

-- name: count_by_project_state
SELECT project, state, count(*) AS n FROM mail GROUP BY project, state ORDER BY project, state;

-- name: sent_today
SELECT coalesce((SELECT sent FROM quota_counters
                  WHERE scope = %(scope)s AND day = (now() AT TIME ZONE %(time_zone)s)::date), 0) AS sent;

-- name: take_due_retries
UPDATE mail SET next_attempt_at = NULL, updated_at = now()
 WHERE event_id IN (SELECT event_id FROM mail
                     WHERE state = 'queued' AND next_attempt_at <= now()
                     ORDER BY next_attempt_at, priority DESC, seq LIMIT %(limit)s FOR UPDATE SKIP LOCKED)
RETURNING event_id, priority, mail_service;

-- name: take_stale_queued
UPDATE mail SET updated_at = now()
 WHERE event_id IN (SELECT event_id FROM mail
                     WHERE state = 'queued' AND next_attempt_at IS NULL
                       AND updated_at < now() - make_interval(secs => %(stale_after)s)
                     ORDER BY updated_at LIMIT %(limit)s FOR UPDATE SKIP LOCKED)
RETURNING event_id, priority, mail_service;

-- name: take_over
SELECT event_id, state, priority, mail_service FROM deskmail_take_over(%(grace)s, %(limit)s);

-- name: list_attempts
SELECT attempt, worker, started_at, ended_at, phase, outcome, detail
  FROM attempts WHERE event_id = %(event_id)s ORDER BY attempt;

-- name: replace_secrets
UPDATE projects SET secrets = %(new)s WHERE key = %(key)s AND secrets = %(old)s;

-- name: list_state
-- Backlog or suspended mails in arrival order, paged by seq (keyset), on partial indexes.
SELECT seq, event_id, project, kind, recipients, subject, reason, detail, received_at
  FROM mail
 WHERE state = %(state)s AND seq > %(after)s
   AND (%(project)s::text IS NULL OR project = %(project)s)
   AND (%(reason)s::text IS NULL OR reason = %(reason)s)
 ORDER BY seq LIMIT %(limit)s;

-- name: move_batch
-- One batch of a bulk action, in one statement. The batch is the next `limit` mails of the selection:
-- the mails of `state` (of the project) up to seq `through`, records first, rows another transaction
-- holds left to it; or, when `ids` are given, those of them still in `state` (and of the project),
-- waited for. They are locked, then moved to `to` through their row addresses (a TID scan: the lock
-- keeps each row where it is, and no join lets the planner read the whole ledger): resumed, retried
-- or resent (queued), suspended, or closed as sent. A queued mail that holds no unit takes one of its
-- project's today and one of the global today, as an admin override; an ambiguous mail sent again
-- keeps the one it holds and is flagged (a copy may exist). Queued mails are handed to the broker by
-- the control actor right after the commit, so they are not due for the scheduler (next_attempt_at
-- NULL); a lost wake-up is still caught by take_stale_queued. The units are counted from the locked
-- rows: the caller takes the batch again when fewer moved than were locked (a row that changed under
-- its lock and kept its state; see Store.move_batch).
WITH today AS (
    SELECT (now() AT TIME ZONE g.time_zone)::date AS global_day FROM global_limits g
), picked AS (
    SELECT * FROM (SELECT m.ctid AS at, m.project, m.quota_day IS NULL AS takes,
                          m.global_quota_day IS NULL AS takes_global FROM mail m
                    WHERE %(ids)s::uuid[] IS NULL AND m.state = %(state)s AND m.seq <= %(through)s
                      AND (%(since)s::timestamptz IS NULL OR m.updated_at <= %(since)s::timestamptz)
                      AND (%(project)s::text IS NULL OR m.project = %(project)s)
                    ORDER BY m.priority DESC, m.seq LIMIT %(limit)s FOR UPDATE SKIP LOCKED) AS next_in_state
    UNION ALL
    SELECT * FROM (SELECT m.ctid, m.project, m.quota_day IS NULL, m.global_quota_day IS NULL
                     FROM unnest(%(ids)s::uuid[]) AS given(event_id) JOIN mail m ON m.event_id = given.event_id
                    WHERE %(ids)s::uuid[] IS NOT NULL AND m.state = %(state)s
                      AND (%(project)s::text IS NULL OR m.project = %(project)s)
                    ORDER BY m.priority DESC, m.seq FOR UPDATE OF m) AS given_ids
), moved AS (
    UPDATE mail m
       SET state = %(to)s::text, detail = %(detail)s, updated_at = now(),
           reason = CASE %(to)s::text WHEN 'queued' THEN NULL WHEN 'sent' THEN 'closed_by_admin' ELSE m.reason END,
           next_attempt_at = CASE WHEN %(to)s::text = 'queued' THEN NULL ELSE m.next_attempt_at END,
           lifetime_from = CASE WHEN %(to)s::text = 'queued' THEN now() ELSE m.lifetime_from END,
           deferred = CASE WHEN %(to)s::text = 'queued' THEN NULL ELSE m.deferred END,
           duplicate_risk = m.duplicate_risk OR (%(to)s::text = 'queued' AND m.state = 'ambiguous'),
           sent_at = CASE WHEN %(to)s::text = 'sent' THEN coalesce(m.sent_at, now()) ELSE m.sent_at END,
           quota_day = CASE WHEN %(to)s::text = 'queued' AND m.quota_day IS NULL
                            THEN deskmail_project_today(m.project) ELSE m.quota_day END,
           global_quota_day = CASE WHEN %(to)s::text = 'queued' AND m.global_quota_day IS NULL
                                   THEN (SELECT global_day FROM today) ELSE m.global_quota_day END
     WHERE m.ctid = ANY(ARRAY(SELECT at FROM picked)) AND m.state = %(state)s
    RETURNING m.event_id, m.priority, m.mail_service, m.project
), quota AS (
    SELECT deskmail_add_quota(scope, day, n) FROM (
        SELECT project AS scope, deskmail_project_today(project) AS day, count(*)::int AS n FROM picked
         WHERE takes AND %(to)s::text = 'queued' GROUP BY project
        UNION ALL
        SELECT '*', (SELECT global_day FROM today), count(*)::int FROM picked
         WHERE takes_global AND %(to)s::text = 'queued' HAVING count(*) > 0
    ) AS units
)
SELECT (SELECT count(*) FROM picked)::int AS picked, (SELECT count(*) FROM quota) AS scopes,
       moved.event_id, moved.priority, moved.mail_service, moved.project
  FROM (SELECT 1) AS one LEFT JOIN moved ON true;  -- one row even when nothing moved, for `picked`

-- name: selected_states
-- Where the given mails are now (after a batch): the command hears why those not moved were not.
SELECT m.event_id, m.project, m.state FROM unnest(%(ids)s::uuid[]) AS given(event_id)
  JOIN mail m ON m.event_id = given.event_id;

-- name: make_due
-- Moved mails nobody hands to the broker right away: the scheduler's due step takes them.
UPDATE mail SET next_attempt_at = now() WHERE event_id = ANY(%(ids)s) AND state = 'queued';

-- name: bulk_selection
-- What a bulk action over a whole list takes, fixed when it is accepted: the mails of the state (of
-- the project) up to the newest one now, as they are now (`since`): mails that arrive later, and mails
-- that come back into the state while the action runs (a retried mail that fails again, a resent one that
-- ends ambiguous again), are not part of it.
SELECT count(*)::int AS n, coalesce(max(seq), 0) AS through, now() AS since FROM mail
 WHERE state = %(state)s AND (%(project)s::text IS NULL OR project = %(project)s);

-- name: count_in_state
SELECT count(*)::int AS n FROM mail
 WHERE state = %(state)s AND (%(project)s::text IS NULL OR project = %(project)s);

-- name: project_known
-- A project is known when it has a row (settings, limits) or any mail in the ledger.
SELECT EXISTS (SELECT 1 FROM projects WHERE key = %(project)s)
       OR EXISTS (SELECT 1 FROM mail WHERE project = %(project)s) AS known;

-- name: unpause_project
UPDATE projects SET paused_reason = NULL, paused_at = NULL, updated_at = now()
 WHERE key = %(project)s AND paused_reason IS NOT NULL;

-- name: unpause_all
UPDATE projects SET paused_reason = NULL, paused_at = NULL, updated_at = now()
 WHERE paused_reason IS NOT NULL;

-- name: control_answer
SELECT answer FROM control_requests WHERE request_id = %(request_id)s;

-- name: record_control
INSERT INTO control_requests (request_id, action, answer) VALUES (%(request_id)s, %(action)s, %(answer)s)
ON CONFLICT (request_id) DO NOTHING;

-- name: record_audit
INSERT INTO audit (actor, action, project, params, touched, result)
VALUES (%(actor)s, %(action)s, %(project)s, %(params)s, %(touched)s, %(result)s);

-- name: list_audit
SELECT id, at, actor, action, project, params, touched, result FROM audit
 WHERE (%(project)s::text IS NULL OR project = %(project)s)
 ORDER BY id DESC LIMIT %(limit)s;

-- name: set_project_limits
UPDATE projects
   SET per_day = CASE WHEN %(set_per_day)s THEN %(per_day)s ELSE per_day END,
       recipients_per_mail = CASE WHEN %(set_recipients)s THEN %(recipients_per_mail)s
                                  ELSE recipients_per_mail END,
       updated_at = now()
 WHERE key = %(project)s;

-- name: auto_resume
SELECT deskmail_auto_resume(%(project)s, %(now)s, %(max)s) AS resumed;

-- name: auto_resume_candidates
SELECT p.key FROM projects p
 WHERE p.auto_resume AND (%(project)s::text IS NULL OR p.key = %(project)s)
   AND EXISTS (SELECT 1 FROM mail m WHERE m.project = p.key AND m.state = 'backlog')
 ORDER BY p.key;

-- name: set_auto_resume
UPDATE projects SET auto_resume = %(enabled)s, updated_at = now() WHERE key = %(project)s;

-- Operations: the scheduler's heartbeat and the gauges the metrics endpoint computes on each scrape.
-- Each gauge block returns label columns and a `value` column.

-- name: record_heartbeat
WITH gone AS (DELETE FROM scheduler_heartbeats WHERE beat_at < now() - interval '1 day')
INSERT INTO scheduler_heartbeats (scheduler) VALUES (%(scheduler)s)
ON CONFLICT (scheduler) DO UPDATE SET beat_at = now();

-- name: last_heartbeat
SELECT max(beat_at) AS beat_at, extract(epoch FROM now() - max(beat_at))::float8 AS age,
       count(*) FILTER (WHERE beat_at > now() - make_interval(secs => %(max_age)s))::int AS fresh
  FROM scheduler_heartbeats;

-- name: applied_migrations
SELECT name FROM deskmail_migrations ORDER BY name;

-- name: services_in_use
SELECT DISTINCT mail_service FROM projects WHERE mail_service IS NOT NULL AND settings IS NOT NULL;

-- name: gauge_mails
-- Sent and rejected mails pile up forever and are counted by the workers' counters instead.
SELECT coalesce(project, '(none)') AS project, state, count(*)::float8 AS value
  FROM mail WHERE state NOT IN ('sent', 'rejected') GROUP BY 1, 2;

-- name: gauge_backlog
SELECT coalesce(project, '(none)') AS project, state, coalesce(reason, '') AS reason, count(*)::float8 AS value
  FROM mail WHERE state IN ('backlog', 'suspended') GROUP BY 1, 2, 3;

-- name: gauge_quota
-- Today's units and the limit per project (in its time zone) and globally ('*'); limit 0: none.
SELECT p.key AS scope, coalesce(q.sent, 0)::float8 AS used, coalesce(p.per_day, 0)::float8 AS lim
  FROM projects p
  LEFT JOIN quota_counters q ON q.scope = p.key AND q.day = (now() AT TIME ZONE p.time_zone)::date
UNION ALL
SELECT '*', coalesce(q.sent, 0)::float8, coalesce(g.per_day, 0)::float8
  FROM global_limits g
  LEFT JOIN quota_counters q ON q.scope = '*' AND q.day = (now() AT TIME ZONE g.time_zone)::date;

-- name: gauge_paused
SELECT key AS project, paused_reason AS reason,
       extract(epoch FROM now() - coalesce(paused_at, now()))::float8 AS value
  FROM projects WHERE paused_reason IS NOT NULL;

-- name: gauge_config_errors
SELECT key AS project, extract(epoch FROM now() - coalesce(config_error_at, now()))::float8 AS value
  FROM projects WHERE config_error IS NOT NULL;

-- name: gauge_oldest_waiting
-- Mails that could be sent now and are not: queued and due (a retry's wait is not waiting).
SELECT coalesce(project, '(none)') AS project,
       extract(epoch FROM now() - min(coalesce(next_attempt_at, received_at)))::float8 AS value
  FROM mail WHERE state = 'queued' AND (next_attempt_at IS NULL OR next_attempt_at <= now())
 GROUP BY 1;

-- name: claim_control_request
-- Taken inside the transaction that applies the request: a concurrent duplicate waits on the
-- primary key until this one commits, then finds it applied (no row returned).
INSERT INTO control_requests (request_id, action, answer) VALUES (%(request_id)s, %(action)s, '{}')
ON CONFLICT (request_id) DO NOTHING
RETURNING request_id;

-- name: answer_control_request
-- The answer, or the progress of a request still running; the NOTIFY goes out when it commits. A
-- request answered for good has no work left.
UPDATE control_requests
   SET answer = %(answer)s, answered_at = now(),
       work = CASE WHEN (%(answer)s::jsonb ->> 'running')::boolean THEN work END
 WHERE request_id = %(request_id)s;

-- name: accept_control_work
-- A bulk action accepted: its selection counted in the answer, its work kept until its last batch.
UPDATE control_requests SET answer = %(answer)s, answered_at = now(), work = %(work)s
 WHERE request_id = %(request_id)s;

-- name: stalled_control_work
-- Accepted bulk actions still running that nobody reported progress on for `seconds`: the scheduler
-- goes on with them. Taking one counts as progress, so one that keeps failing waits its turn again
-- behind the others instead of being taken first at every step.
UPDATE control_requests SET answered_at = now()
 WHERE request_id IN (SELECT request_id FROM control_requests
                       WHERE work IS NOT NULL AND (answer ->> 'running')::boolean
                         AND answered_at < now() - make_interval(secs => %(seconds)s)
                       ORDER BY answered_at LIMIT %(limit)s FOR UPDATE SKIP LOCKED)
RETURNING request_id, work;

-- name: listen_control
LISTEN deskmail_control;

-- name: unlisten_control
UNLISTEN deskmail_control;

-- name: notify_control
SELECT pg_notify('deskmail_control', %(request_id)s::text);

-- name: lock_control_progress
-- The running request's row is its cursor: runners of the same request take batches one at a time.
SELECT answer FROM control_requests WHERE request_id = %(request_id)s FOR UPDATE;

-- name: keep_moved_ids
INSERT INTO control_moved (request_id, event_id) SELECT %(request_id)s, unnest(%(ids)s::uuid[]);

-- name: list_moved_ids
SELECT n, event_id FROM control_moved WHERE request_id = %(request_id)s AND n > %(after)s ORDER BY n
 LIMIT %(limit)s;

-- name: record_control_sent
INSERT INTO control_sent (request_id, action, project, requested_by, requested_at)
VALUES (%(request_id)s, %(action)s, %(project)s, %(requested_by)s, %(requested_at)s)
ON CONFLICT (request_id) DO NOTHING;

-- name: list_control_pending
-- Published, neither answered nor refused, and not expired: a control worker may still apply it.
SELECT s.request_id, s.action, s.project, s.requested_by, s.requested_at, s.sent_at,
       s.requested_at + make_interval(secs => %(max_age)s) AS expires_at
  FROM control_sent s
 WHERE NOT EXISTS (SELECT 1 FROM control_requests r WHERE r.request_id = s.request_id)
   AND NOT EXISTS (SELECT 1 FROM control_refusals f WHERE f.request_id = s.request_id)
   AND s.requested_at > now() - make_interval(secs => %(max_age)s)
 ORDER BY s.sent_at;

-- name: get_control_sent
SELECT request_id, action, project, requested_by, requested_at, sent_at FROM control_sent
 WHERE request_id = %(request_id)s;

-- name: add_control_test
INSERT INTO control_tests (request_id, project, mail_service, to_address, attach, settings, sealed_secrets, message)
VALUES (%(request_id)s, %(project)s, %(mail_service)s, %(to)s, %(attach)s, %(settings)s, %(sealed_secrets)s,
        %(message)s);

-- name: take_control_test
-- Taken once: a redelivered or forged Test message finds nothing to run.
UPDATE control_tests SET started_at = now(), worker = %(worker)s
 WHERE request_id = %(request_id)s AND started_at IS NULL
RETURNING request_id, project, mail_service, to_address, attach, settings, sealed_secrets, message, created_at;

-- name: record_control_refusal
INSERT INTO control_refusals (request_id, reason) VALUES (%(request_id)s, %(reason)s);

-- name: list_rejected
-- Rejected events of every project, unknown ones and events with no readable project included.
SELECT seq, event_id, project, kind, reason, detail, raw_size, received_at FROM mail
 WHERE state = 'rejected' AND seq > %(after)s AND (%(project)s::text IS NULL OR project = %(project)s)
 ORDER BY seq LIMIT %(limit)s;

-- name: control_refusal
SELECT reason FROM control_refusals WHERE request_id = %(request_id)s ORDER BY id DESC LIMIT 1;

-- name: keep_rejected
-- A rejected message keeps a bounded excerpt and its size; the whole body is never stored.
INSERT INTO mail (event_id, project, kind, state, reason, detail, raw, raw_size)
VALUES (%(event_id)s, %(project)s, %(kind)s, 'rejected', %(reason)s, %(detail)s, %(raw)s, %(raw_size)s)
ON CONFLICT (event_id) DO NOTHING;

-- name: reachable
SELECT 1 AS up;
-- Admin console ------------------------------------------------------------------------------

-- name: console_mail_page
-- One page of mails in a state, in arrival order (keyset on seq), with the console's filters:
-- project, reason, kind, and text in the subject or any recipient's address or name.
SELECT m.seq, m.event_id, m.project, m.kind, m.recipients, m.subject, m.reason, m.detail, m.received_at,
       m.updated_at, m.attempts
  FROM mail m
 WHERE m.state = %(state)s AND m.seq > %(after)s
   AND (%(project)s::text IS NULL OR m.project = %(project)s)
   AND (%(reason)s::text IS NULL OR m.reason = %(reason)s)
   AND (%(kind)s::text IS NULL OR m.kind = %(kind)s)
   AND deskmail_mail_mentions(m.subject, m.event, %(text)s::text)
 ORDER BY m.seq LIMIT %(limit)s;

-- name: console_mail_count
-- How many mails match the same filters, per project (the confirmation's quota figures).
SELECT m.project, count(*)::int AS n
  FROM mail m
 WHERE m.state = %(state)s
   AND (%(project)s::text IS NULL OR m.project = %(project)s)
   AND (%(reason)s::text IS NULL OR m.reason = %(reason)s)
   AND (%(kind)s::text IS NULL OR m.kind = %(kind)s)
   AND deskmail_mail_mentions(m.subject, m.event, %(text)s::text)
 GROUP BY m.project ORDER BY m.project;

-- name: console_selection_count
SELECT m.project, count(*)::int AS n FROM mail m
 WHERE m.event_id = ANY(%(ids)s) AND m.state = %(state)s GROUP BY m.project ORDER BY m.project;

-- name: console_mail_reasons
SELECT DISTINCT reason FROM mail WHERE state = %(state)s AND reason IS NOT NULL ORDER BY reason;

-- name: console_audit
SELECT id, at, actor, action, project, params, touched, result FROM audit
 WHERE (%(project)s::text IS NULL OR project = %(project)s)
   AND (%(actor)s::text IS NULL OR actor ILIKE '%%' || %(actor)s || '%%')
   AND (%(action)s::text IS NULL OR action = %(action)s)
   AND (%(before)s::bigint IS NULL OR id < %(before)s)
 ORDER BY id DESC LIMIT %(limit)s;

-- name: console_audit_actions
SELECT DISTINCT action FROM audit ORDER BY action;

-- name: console_user_get
SELECT username, password_hash, role, created_at, updated_at FROM console_users WHERE username = %(username)s;

-- name: console_user_list
SELECT username, password_hash, role, created_at, updated_at FROM console_users ORDER BY username;

-- name: console_user_add
INSERT INTO console_users (username, password_hash, role) VALUES (%(username)s, %(password_hash)s, %(role)s)
ON CONFLICT (username) DO NOTHING;

-- name: console_user_remove
DELETE FROM console_users WHERE username = %(username)s;

-- name: console_user_passwd
-- A new password ends every session of the user.
WITH changed AS (
    UPDATE console_users SET password_hash = %(password_hash)s, updated_at = now()
     WHERE username = %(username)s RETURNING username)
DELETE FROM console_sessions WHERE username IN (SELECT username FROM changed);

-- name: console_user_exists
SELECT 1 FROM console_users WHERE username = %(username)s;

-- name: console_session_add
INSERT INTO console_sessions (token_hash, username, csrf_token, via, expires_at)
VALUES (%(token_hash)s, %(username)s, %(csrf_token)s, %(via)s, now() + make_interval(secs => %(lifetime)s));

-- name: console_session_get
-- The role is read from the user on every request: a role change or removal counts at once.
SELECT s.username, u.role, s.csrf_token, s.via, s.expires_at
  FROM console_sessions s JOIN console_users u USING (username)
 WHERE s.token_hash = %(token_hash)s AND s.expires_at > now();

-- name: console_session_remove
DELETE FROM console_sessions WHERE token_hash = %(token_hash)s OR expires_at < now();

-- name: console_login_attempt
INSERT INTO console_login_attempts (username, address, ok) VALUES (%(username)s, %(address)s, %(ok)s);

-- name: console_login_failures
SELECT (SELECT count(*) FROM console_login_attempts
         WHERE username = %(username)s AND NOT ok AND at > now() - make_interval(secs => %(window)s))::int AS by_user,
       (SELECT count(*) FROM console_login_attempts
         WHERE address = %(address)s AND NOT ok AND at > now() - make_interval(secs => %(window)s))::int AS by_address;

-- name: console_login_forget
-- A successful login forgets the user's failures, and attempts older than a day go.
DELETE FROM console_login_attempts
 WHERE (username = %(username)s AND NOT ok) OR at < now() - interval '1 day';

-- name: console_oidc_begin
INSERT INTO console_oidc_logins (state, nonce, verifier) VALUES (%(state)s, %(nonce)s, %(verifier)s);

-- name: console_oidc_finish
-- Each state is good for one callback, within ten minutes.
DELETE FROM console_oidc_logins WHERE state = %(state)s AND created_at > now() - interval '10 minutes'
RETURNING state, nonce, verifier;

-- name: console_job_add
INSERT INTO console_jobs (id, kind, title, requested_by, project, total)
VALUES (%(id)s, %(kind)s, %(title)s, %(requested_by)s, %(project)s, %(total)s);

-- name: console_job_sweep
DELETE FROM console_jobs WHERE started_at < now() - interval '7 days';

-- name: console_job_progress
UPDATE console_jobs SET done = %(done)s, steps = %(steps)s WHERE id = %(id)s;

-- name: console_job_finish
UPDATE console_jobs SET done = %(done)s, steps = %(steps)s, ok = %(ok)s, summary = %(summary)s,
       finished_at = now()
 WHERE id = %(id)s;

-- name: console_job_get
SELECT id, kind, title, requested_by, project, total, done, steps, ok, summary, started_at, finished_at
  FROM console_jobs WHERE id = %(id)s;

-- name: store_attachment_blob
-- Stored once per content hash; a blob already there is only marked as used (at most once a minute).
INSERT INTO attachment_blobs AS b (sha256, size, content) VALUES (%(sha256)s, %(size)s, %(content)s)
ON CONFLICT (sha256) DO UPDATE SET used_at = now() WHERE b.used_at < now() - interval '1 minute';

-- name: link_mail_attachments
INSERT INTO mail_attachments (event_id, sha256) SELECT %(event_id)s, unnest(%(hashes)s::text[])
ON CONFLICT DO NOTHING;

-- name: attachment_contents
SELECT sha256, content FROM attachment_blobs WHERE sha256 = ANY(%(hashes)s);

-- name: delete_unused_attachments
-- Blobs no mail needs any more: none that can still be sent (queued, sending, backlog, suspended) refers
-- to them, nor a failed or ambiguous one younger than the retention (an admin may retry or resend it),
-- and no admission used them within the grace period.
DELETE FROM attachment_blobs b
 WHERE b.sha256 IN (SELECT x.sha256 FROM attachment_blobs x
                     WHERE x.used_at < now() - make_interval(secs => %(grace)s)
                       AND NOT EXISTS (
                           SELECT 1 FROM mail_attachments ma JOIN mail m ON m.event_id = ma.event_id
                            WHERE ma.sha256 = x.sha256
                              AND (m.state IN ('queued', 'sending', 'backlog', 'suspended')
                                   OR (m.state IN ('failed', 'ambiguous')
                                       AND m.updated_at > now() - make_interval(secs => %(retention)s))))
                     LIMIT %(limit)s FOR UPDATE SKIP LOCKED);
