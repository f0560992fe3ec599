-- Attachments leave the event at admission: their bytes are stored once per content hash (the same file
-- sent to 5,000 recipients is one row), and the ledger row's event keeps only references (sha256, size).
-- `used_at` is refreshed by admissions that find the blob already stored (at most once a minute, so a
-- popular file is not a hot row), and the clean-up spares blobs used within its grace period: a blob an
-- admission still in flight refers to is never deleted under it.
CREATE TABLE attachment_blobs (
    sha256     text PRIMARY KEY,            -- hex digest of content
    size       bigint NOT NULL,
    content    bytea NOT NULL,
    stored_at  timestamptz NOT NULL DEFAULT now(),
    used_at    timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE attachment_blobs ALTER COLUMN content SET STORAGE EXTERNAL;  -- files are mostly compressed already

-- Which mail refers to which blob; what the clean-up asks "is this still needed?".
CREATE TABLE mail_attachments (
    event_id uuid NOT NULL,
    sha256   text NOT NULL,
    PRIMARY KEY (event_id, sha256)
);
CREATE INDEX mail_attachments_blob ON mail_attachments (sha256);
