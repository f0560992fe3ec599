-- Named queries: each block starts with `-- name: <name>`; loaded once by workers.sql.

-- name: admit
SELECT state, reason, detail, mail_service, is_new
  FROM deskmail_admit(%(event_id)s, %(project)s, %(kind)s, %(priority)s, %(event)s,
                      %(subject)s, %(recipients)s, %(created_at)s);

-- name: reject
INSERT INTO mail (event_id, project, kind, state, reason, detail, raw, event)
VALUES (%(event_id)s, %(project)s, %(kind)s, 'rejected', 'invalid_event', %(detail)s, %(raw)s, %(event)s)
ON CONFLICT (event_id) DO NOTHING;

-- name: claim
UPDATE mail m
   SET state = 'sending', attempts = m.attempts + 1, claimed_at = now(), updated_at = now()
  FROM (SELECT p.key, p.settings_version
          FROM projects p, mail x
         WHERE x.event_id = %(event_id)s AND p.key IN (x.project, 'default') AND p.settings IS NOT NULL
         ORDER BY p.key = x.project DESC LIMIT 1) AS s
 WHERE m.event_id = %(event_id)s AND m.state = 'queued'
   AND (m.next_attempt_at IS NULL OR m.next_attempt_at <= now())
RETURNING m.event_id, m.project, m.kind, m.event, m.message_id, m.attempts, m.received_at, m.deferred,
          s.key AS settings_key, s.settings_version;

-- name: mark_sent
-- Also clears the project's configuration error: a send that works proves the settings right.
WITH sent AS (
    UPDATE mail SET state = 'sent', detail = %(detail)s, refused = coalesce(%(refused)s, refused),
           message_id = %(message_id)s, deferred = NULL, sent_at = now(), updated_at = now(),
           next_attempt_at = NULL
     WHERE event_id = %(event_id)s AND state = 'sending'
    RETURNING project)
UPDATE projects SET config_error = NULL, config_error_at = NULL
 WHERE key = (SELECT project FROM sent) AND config_error IS NOT NULL;

-- name: mark_final
UPDATE mail SET state = %(state)s, reason = %(reason)s, detail = %(detail)s,
       refused = coalesce(%(refused)s, refused), message_id = coalesce(%(message_id)s, message_id),
       updated_at = now(), next_attempt_at = NULL
 WHERE event_id = %(event_id)s AND state = 'sending';

-- name: mark_retry
UPDATE mail SET state = 'queued', detail = %(detail)s, refused = coalesce(%(refused)s, refused),
       deferred = coalesce(%(deferred)s, deferred),
       next_attempt_at = now() + make_interval(secs => %(delay)s), updated_at = now()
 WHERE event_id = %(event_id)s AND state = 'sending';

-- name: mark_backlog
UPDATE mail SET state = 'backlog', reason = %(reason)s, detail = %(detail)s, updated_at = now(),
       next_attempt_at = NULL
 WHERE event_id = %(event_id)s AND state = 'sending';

-- name: pause_project
UPDATE projects SET paused_reason = %(reason)s, paused_at = now(), updated_at = now()
 WHERE key = %(project)s AND paused_reason IS NULL;

-- name: record_config_error
UPDATE projects SET config_error = %(detail)s, config_error_at = now()
 WHERE key = %(project)s;

-- name: get_mail
SELECT event_id, seq, project, kind, priority, state, reason, detail, subject, recipients, mail_service,
       message_id, attempts, takeovers, refused, next_attempt_at, created_at, received_at, updated_at,
       claimed_at, sent_at, event
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

-- name: recover_stale_sending
UPDATE mail
   SET state = CASE WHEN takeovers >= 1 THEN 'ambiguous' ELSE 'queued' END,
       detail = CASE WHEN takeovers >= 1
                     THEN 'worker stopped twice while sending; the mail may or may not have been delivered'
                     ELSE 'worker stopped while sending; sent again with the same Message-ID' END,
       takeovers = takeovers + 1, updated_at = now(), next_attempt_at = NULL
 WHERE event_id IN (SELECT event_id FROM mail WHERE state = 'sending'
                      AND claimed_at < now() - make_interval(secs => %(stale_after)s)
                    LIMIT %(limit)s FOR UPDATE SKIP LOCKED)
RETURNING event_id, state, priority, mail_service;

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

-- name: lock_selected
SELECT m.event_id, m.project, m.state FROM mail m
 WHERE m.event_id = ANY(%(ids)s)
 ORDER BY m.priority DESC, m.seq FOR UPDATE;

-- name: lock_all_in_state
SELECT m.event_id, m.project, m.state FROM mail m
 WHERE m.state = %(state)s AND (%(project)s::text IS NULL OR m.project = %(project)s)
 ORDER BY m.priority DESC, m.seq FOR UPDATE;

-- name: requeue_resumed
-- Resumed mails become due now; the scheduler and the control actor hand them to the broker
-- in bounded batches, so a large backlog interleaves with fresh mail instead of starving it.
UPDATE mail SET state = 'queued', reason = NULL, detail = %(detail)s, next_attempt_at = now(),
       updated_at = now()
 WHERE event_id = ANY(%(ids)s);

-- name: count_resumed_quota
SELECT m.project, (now() AT TIME ZONE coalesce(p.time_zone, 'UTC'))::date AS day, count(*)::int AS n
  FROM mail m LEFT JOIN projects p ON p.key = m.project
 WHERE m.event_id = ANY(%(ids)s) GROUP BY m.project, p.time_zone;

-- name: add_quota
SELECT deskmail_add_quota(%(scope)s, %(day)s, %(n)s);

-- name: global_day
SELECT (now() AT TIME ZONE time_zone)::date AS day FROM global_limits;

-- name: suspend_selected
UPDATE mail SET state = 'suspended', detail = %(detail)s, updated_at = now()
 WHERE event_id = ANY(%(ids)s);

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
