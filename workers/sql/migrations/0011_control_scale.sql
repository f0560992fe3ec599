-- A control plane that scales: bulk actions move mails in batches (each batch committed with the
-- request's progress, so the command shows it), keep the ids they moved only when asked, and
-- answer through NOTIFY; the commands' requests are remembered so that one nobody answered can be
-- listed and cancelled; the Test action runs on a worker of the project's transport queue.

-- Batches of a bulk action take the oldest mails of a state, records first, across all projects.
CREATE INDEX mail_movable ON mail (state, priority DESC, seq)
 WHERE state IN ('backlog', 'suspended', 'failed', 'ambiguous');

-- The ids a bulk action moved, when its command asked for them (`--ids`), paged by n.
CREATE TABLE control_moved (
    request_id  uuid NOT NULL,
    n           bigint GENERATED ALWAYS AS IDENTITY,
    event_id    uuid NOT NULL,
    PRIMARY KEY (request_id, n)
);

-- Every request a command published: one without an answer is pending until it expires.
CREATE TABLE control_sent (
    request_id    uuid PRIMARY KEY,
    action        text NOT NULL,
    project       text,
    requested_by  text NOT NULL,
    requested_at  timestamptz NOT NULL,
    sent_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX control_sent_at ON control_sent (sent_at);

-- A Test action handed to a transport worker: what to test; taken once by the worker that runs it.
CREATE TABLE control_tests (
    request_id      uuid PRIMARY KEY,
    project         text NOT NULL,          -- the project whose settings are tested (maybe `default`)
    mail_service    text NOT NULL,
    to_address      text,
    attach          boolean NOT NULL DEFAULT false,  -- a small attachment on the test mail
    settings        jsonb,                  -- settings not saved yet (secrets sealed apart), else NULL
    sealed_secrets  text,
    message         jsonb NOT NULL,         -- the control message, for the audit entry at the end
    created_at      timestamptz NOT NULL DEFAULT now(),
    started_at      timestamptz,
    worker          text
);
