-- The console's text filter in one place: does a mail's subject, or any recipient's address or name,
-- contain `p_text` (case-insensitive)? NULL matches every mail. Used by the page and the count alike.
CREATE FUNCTION deskmail_mail_mentions(p_subject text, p_event jsonb, p_text text)
RETURNS boolean LANGUAGE sql STABLE AS $$
    SELECT p_text IS NULL OR p_subject ILIKE '%' || p_text || '%'
        OR EXISTS (SELECT 1 FROM jsonb_array_elements(coalesce(p_event->'to', '[]') || coalesce(p_event->'cc', '[]')
                                                      || coalesce(p_event->'bcc', '[]')) AS r(v)
                    WHERE coalesce(r.v->>'address', r.v #>> '{}') ILIKE '%' || p_text || '%'
                       OR r.v->>'name' ILIKE '%' || p_text || '%')
$$;
