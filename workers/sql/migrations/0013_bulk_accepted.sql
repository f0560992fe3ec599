-- A bulk action answers as soon as its selection is fixed and counted: from that commit on it is
-- accepted, and the request keeps what it has to do (`work`: the control message, without its
-- signature) until its last batch, so that whoever goes on with it (the redelivered message, or the
-- scheduler if nobody reports progress) does the same. `answered_at` is the time of the last progress.
ALTER TABLE control_requests ADD COLUMN work jsonb;
CREATE INDEX control_requests_unfinished ON control_requests (answered_at) WHERE work IS NOT NULL;

-- Today in a project's time zone (UTC for a project without a row): the day a unit it takes now counts in.
CREATE FUNCTION deskmail_project_today(p_project text)
RETURNS date LANGUAGE sql STABLE AS $$
    SELECT (now() AT TIME ZONE coalesce((SELECT time_zone FROM projects WHERE key = p_project), 'UTC'))::date
$$;
