-- deskmail schema v1: projects and their settings, global limits, quota counters,
-- the mail ledger (which is also the backlog and the suspended list).

CREATE TABLE projects (
    key                 text PRIMARY KEY,
    mail_service        text,
    settings            jsonb,            -- non-secret settings; NULL: use the `default` project's
    secrets             bytea,            -- Fernet token of the secrets, bound to this key
    settings_version    integer NOT NULL DEFAULT 0,
    time_zone           text NOT NULL DEFAULT 'UTC',
    per_day             integer CHECK (per_day >= 0),
    recipients_per_mail integer CHECK (recipients_per_mail >= 0),
    paused_reason       text,
    paused_at           timestamptz,
    auto_resume         boolean NOT NULL DEFAULT false,
    config_error        text,
    config_error_at     timestamptz,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE global_limits (
    id                  boolean PRIMARY KEY DEFAULT true CHECK (id),
    per_day             integer CHECK (per_day >= 0),          -- MAIL_LIMIT_PER_DAY_SMTP
    recipients_per_mail integer CHECK (recipients_per_mail >= 0), -- RECIPIENTS_LIMIT_PER_MAIL_SMTP
    time_zone           text NOT NULL DEFAULT 'UTC',
    updated_at          timestamptz NOT NULL DEFAULT now()
);
INSERT INTO global_limits (id) VALUES (true);

-- One row per scope and day; scope is a project key, or '*' for the global count.
CREATE TABLE quota_counters (
    scope text NOT NULL,
    day   date NOT NULL,
    sent  integer NOT NULL,
    PRIMARY KEY (scope, day)
);

CREATE TABLE mail (
    event_id        uuid PRIMARY KEY,
    seq             bigint GENERATED ALWAYS AS IDENTITY UNIQUE,  -- arrival order
    project         text,
    kind            text,
    priority        smallint NOT NULL DEFAULT 1,
    state           text NOT NULL,
    reason          text,
    detail          text,
    event           jsonb,
    raw             text,
    subject         text,
    recipients      integer,
    mail_service    text,
    message_id      text,
    attempts        integer NOT NULL DEFAULT 0,
    takeovers       integer NOT NULL DEFAULT 0,
    refused         jsonb,
    deferred        text[],          -- after a partial delivery: the recipients still to send to
    next_attempt_at timestamptz,
    created_at      timestamptz,
    received_at     timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    claimed_at      timestamptz,
    sent_at         timestamptz,
    CONSTRAINT mail_state_known CHECK (state IN
        ('queued', 'sending', 'sent', 'backlog', 'suspended', 'failed', 'ambiguous', 'rejected'))
);
CREATE INDEX mail_backlog_drain ON mail (project, priority DESC, seq) WHERE state = 'backlog';
CREATE INDEX mail_backlog_list ON mail (seq) WHERE state = 'backlog';
CREATE INDEX mail_backlog_project_list ON mail (project, seq) WHERE state = 'backlog';
CREATE INDEX mail_suspended_list ON mail (project, seq) WHERE state = 'suspended';
CREATE INDEX mail_queued_due ON mail (next_attempt_at, updated_at) WHERE state = 'queued';
CREATE INDEX mail_sending_claimed ON mail (claimed_at) WHERE state = 'sending';
CREATE INDEX mail_project_state ON mail (project, state);

-- Takes one unit of quota for a scope's day unless that would pass the limit (NULL or 0: no limit).
-- Atomic under any concurrency: the conditional upsert holds the row lock; no row means "over".
CREATE FUNCTION deskmail_take_quota(p_scope text, p_day date, p_limit integer)
RETURNS boolean LANGUAGE sql AS $$
    INSERT INTO quota_counters AS q (scope, day, sent) VALUES (p_scope, p_day, 1)
    ON CONFLICT (scope, day) DO UPDATE SET sent = q.sent + 1
        WHERE coalesce(p_limit, 0) = 0 OR q.sent + 1 <= p_limit
    RETURNING true
$$;
