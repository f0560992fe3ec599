-- Admin control: the audit trail and the answers to control requests (idempotency by request id).

CREATE TABLE audit (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at         timestamptz NOT NULL DEFAULT now(),
    actor      text NOT NULL,
    action     text NOT NULL,
    project    text,
    params     jsonb NOT NULL DEFAULT '{}',
    touched    integer NOT NULL DEFAULT 0,
    result     jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_project ON audit (project, id);

CREATE TABLE control_requests (
    request_id  uuid PRIMARY KEY,
    action      text NOT NULL,
    answered_at timestamptz NOT NULL DEFAULT now(),
    answer      jsonb NOT NULL
);

-- Adds n units to a scope's day whatever the limit: an admin's resume overrides the limit
-- but still counts in the day's total.
CREATE FUNCTION deskmail_add_quota(p_scope text, p_day date, p_n integer)
RETURNS void LANGUAGE sql AS $$
    INSERT INTO quota_counters AS q (scope, day, sent) VALUES (p_scope, p_day, p_n)
    ON CONFLICT (scope, day) DO UPDATE SET sent = q.sent + EXCLUDED.sent
$$;
