-- Control plane: refused control messages are kept apart from answers, so a forged or expired
-- message never takes the request id it carries (the admin's real request with that id is
-- still applied later); rejected input keeps an excerpt and its size instead of the whole body.

CREATE TABLE control_refusals (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    request_id  uuid,            -- as claimed by the message; not unique, never an answer
    refused_at  timestamptz NOT NULL DEFAULT now(),
    reason      text NOT NULL
);
CREATE INDEX control_refusals_request ON control_refusals (request_id) WHERE request_id IS NOT NULL;

ALTER TABLE mail ADD COLUMN raw_size bigint;  -- bytes of a rejected message; `raw` holds an excerpt
