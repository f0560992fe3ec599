-- The admin console: its users, their sessions, login attempts (for throttling) and the progress of
-- long console jobs (a Test action's steps, a bulk resume), kept here so that any console instance
-- behind a load balancer can answer for any of them.

CREATE TABLE console_users (
    username      text PRIMARY KEY CHECK (username ~ '^[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}$'),
    password_hash text,                  -- argon2id; NULL: single sign-on (OIDC) only
    role          text NOT NULL CHECK (role IN ('admin', 'viewer')),
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- Only a SHA-256 of the session cookie is stored: a copy of this table opens no session.
CREATE TABLE console_sessions (
    token_hash  bytea PRIMARY KEY,
    username    text NOT NULL REFERENCES console_users (username) ON DELETE CASCADE,
    csrf_token  text NOT NULL,
    via         text NOT NULL DEFAULT 'password',
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);
CREATE INDEX console_sessions_expiry ON console_sessions (expires_at);

CREATE TABLE console_login_attempts (
    id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at        timestamptz NOT NULL DEFAULT now(),
    username  text NOT NULL,
    address   text NOT NULL,
    ok        boolean NOT NULL
);
CREATE INDEX console_login_attempts_user ON console_login_attempts (username, at) WHERE NOT ok;
CREATE INDEX console_login_attempts_address ON console_login_attempts (address, at) WHERE NOT ok;

-- A single sign-on login under way: state, nonce and PKCE verifier until the provider calls back.
CREATE TABLE console_oidc_logins (
    state       text PRIMARY KEY,
    nonce       text NOT NULL,
    verifier    text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE console_jobs (
    id           uuid PRIMARY KEY,
    kind         text NOT NULL CHECK (kind IN ('test', 'bulk')),
    title        text NOT NULL,
    requested_by text NOT NULL,
    project      text,
    total        integer NOT NULL DEFAULT 0,
    done         integer NOT NULL DEFAULT 0,
    steps        jsonb NOT NULL DEFAULT '[]',
    ok           boolean,              -- NULL while running
    summary      text,
    started_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz
);
