"""The schemas package: the contract publishers read, and its validation."""

from __future__ import annotations

import pickle
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from deskmail import schemas
from deskmail.schemas import InvalidPayload, Problem

EVENT = "notification-event.v1"
CONTROL = "control-message.v1"
SETTINGS = "project-settings.v1"
EVENT_ID = "0b7c6f0e-3d55-4d3a-9a43-1f4a9c1e2b7d"
OTHER_ID = "5f1d2a9c-8e7b-4c6d-a1b2-c3d4e5f60718"


def event(**changes: Any) -> dict[str, Any]:
    """A minimal valid event with `changes` applied (None removes a field)."""
    payload = {
        "event_id": EVENT_ID,
        "project": "helpdesk",
        "kind": "notification",
        "to": ["alice@example.com"],
        "subject": "Your ticket was updated",
        "text": "Hello",
    }
    payload.update(changes)
    return {key: value for key, value in payload.items() if value is not None}


def control(**changes: Any) -> dict[str, Any]:
    """A control message with the required fields and `changes` applied."""
    message = {
        "request_id": OTHER_ID,
        "requested_by": "admin",
        "requested_at": "2025-01-31T09:30:00+01:00",
    }
    return {**message, **changes}


def settings(**changes: Any) -> dict[str, Any]:
    """Valid SMTP settings with `changes` applied."""
    document = {
        "mail_service": "smtp",
        "from_address": "desk@example.com",
        "smtp": {"host": "mail.example.com", "port": 587, "username": "desk", "password": "s3cret"},
    }
    return {**document, **changes}


def found(name: str, payload: Any) -> list[tuple[str, str]]:
    """The problems as (path, message) pairs, for exact comparison."""
    return [(problem.path, problem.message) for problem in schemas.validate(name, payload)]


def at(name: str, payload: Any, path: str) -> list[str]:
    """The messages of the problems at one path."""
    return [message for problem_path, message in found(name, payload) if problem_path == path]


# --- the schema documents ---------------------------------------------------

@pytest.mark.parametrize("name", [EVENT, CONTROL, SETTINGS])
def test_every_schema_is_a_valid_draft_2020_12_document_with_a_versioned_id(name: str) -> None:
    document = schemas.load_schema(name)
    Draft202012Validator.check_schema(document)
    assert document["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert document["$id"] == f"https://deskmail.dev/schemas/{name}.json"
    assert name in schemas.SCHEMA_NAMES


def test_every_event_property_is_described() -> None:
    properties = schemas.load_schema(EVENT)["properties"]
    undescribed = [name for name, schema in properties.items() if not schema.get("description")]
    assert undescribed == []


def test_load_schema_returns_a_copy_that_callers_may_change() -> None:
    schemas.load_schema(EVENT)["properties"].clear()
    assert "subject" in schemas.load_schema(EVENT)["properties"]
    assert found(EVENT, event()) == []


def test_unknown_schema_name_is_refused_with_the_known_names() -> None:
    with pytest.raises(LookupError, match="notification-event.v1"):
        schemas.validate("../secrets", {})


# --- events: structure -------------------------------------------------------

def test_minimal_event_is_valid() -> None:
    assert found(EVENT, event()) == []


def test_full_event_with_every_field_is_valid() -> None:
    payload = event(
        kind="record", cc=[{"address": "bob@example.com", "name": "Bob Müller"}],
        bcc=["audit@example.com"], reply_to=["support@example.com"], html="<p>Hello</p>",
        headers={"X-Ticket-Id": "42"}, record={"type": "ticket", "id": "42"},
        created_at="2025-01-31T09:30:00.123Z",
    )
    assert found(EVENT, payload) == []


def test_missing_required_field_is_reported_at_the_field_itself() -> None:
    assert found(EVENT, event(subject=None)) == [("subject", "is required")]


@pytest.mark.parametrize(
    ("changes", "path", "message"),
    [
        ({"event_id": "not-a-uuid"}, "event_id", "must be a UUID (8-4-4-4-12 hex digits)"),
        ({"project": "-bad"}, "project", "must be 1 to 64 letters, digits, _ . or -, starting with a letter or digit"),
        ({"kind": "spam"}, "kind", "must be one of: notification, record"),
        ({"subject": "x" * 999}, "subject", "must be at most 998 characters"),
        ({"subject": 5}, "subject", "must be a string"),
        ({"text": "x" * 1_000_001}, "text", "must be at most 1000000 characters"),
        ({"to": ["a@example.com"] * 1001}, "to", "must have at most 1000 items"),
        ({"cc": "bob@example.com"}, "cc", "must be a list"),
        ({"to": ["a@example.com", 7]}, "to[1]", "must be a string or an object"),
        ({"to": ["a" * 321 + "@example.com"]}, "to[0]", "must be at most 320 characters"),
        ({"reply_to": ["r@example.com"] * 11}, "reply_to", "must have at most 10 items"),
        ({"headers": {f"X-H{i}": "v" for i in range(21)}}, "headers", "must have at most 20 entries"),
        ({"headers": {"X-Ticket": 42}}, "headers.X-Ticket", "must be a string"),
        ({"record": {"type": "ticket"}}, "record.id", "is required"),
        ({"record": {"type": "", "id": "1"}}, "record.type", "must not be empty"),
        ({"created_at": "2025-02-30T10:00:00Z"}, "created_at",
         "must be an RFC 3339 date-time with offset, e.g. 2025-01-31T09:30:00Z"),
        ({"created_at": "2025-01-31T10:00:00"}, "created_at",
         "must be an RFC 3339 date-time with offset, e.g. 2025-01-31T09:30:00Z"),
    ],
)
def test_every_field_error_names_its_path(changes: dict[str, Any], path: str, message: str) -> None:
    assert (path, message) in found(EVENT, event(**changes))


def test_project_with_a_trailing_newline_is_rejected_although_python_dollar_would_allow_it() -> None:
    assert at(EVENT, event(project="helpdesk\n"), "project") == [
        "must be 1 to 64 letters, digits, _ . or -, starting with a letter or digit"
    ]


def test_unknown_top_level_field_is_reported_at_its_own_path() -> None:
    assert found(EVENT, event(priority="high")) == [("priority", "is not allowed")]


def test_text_and_html_both_missing_is_reported_once_at_the_root() -> None:
    assert found(EVENT, event(text=None)) == [("(root)", "needs text, html or both")]


def test_html_alone_is_enough_for_a_body() -> None:
    assert found(EVENT, event(text=None, html="<p>Hi</p>")) == []


def test_payload_that_is_not_an_object_is_reported_at_the_root() -> None:
    assert found(EVENT, ["not", "an", "event"]) == [("(root)", "must be an object")]


# --- events: recipients ------------------------------------------------------

def test_bad_address_in_to_1_is_reported_with_email_validators_reason() -> None:
    messages = at(EVENT, event(to=["alice@example.com", "bob@"]), "to[1]")
    assert len(messages) == 1
    assert messages[0].startswith("is not a valid e-mail address: ")
    assert "after the @-sign" in messages[0]


def test_display_name_in_a_bare_address_string_is_rejected() -> None:
    messages = at(EVENT, event(to=["Bob <bob@example.com>"]), "to[0]")
    assert len(messages) == 1 and messages[0].startswith("is not a valid e-mail address: ")


def test_object_form_recipient_is_valid_and_its_address_is_checked() -> None:
    assert found(EVENT, event(to=[{"address": "bob@example.com", "name": "Bob"}])) == []
    messages = at(EVENT, event(to=[{"address": "nobody", "name": "Bob"}]), "to[0].address")
    assert len(messages) == 1 and messages[0].startswith("is not a valid e-mail address: ")


def test_object_form_recipient_without_address_or_with_unknown_key_names_both_paths() -> None:
    assert found(EVENT, event(to=[{"name": "Bob", "nick": "b"}])) == [
        ("to[0].address", "is required"),
        ("to[0].nick", "is not allowed"),
    ]


def test_bad_reply_to_address_is_reported_at_its_path() -> None:
    messages = at(EVENT, event(reply_to=[{"address": "x@"}]), "reply_to[0].address")
    assert len(messages) == 1 and messages[0].startswith("is not a valid e-mail address: ")


def test_event_without_any_recipient_is_rejected() -> None:
    assert found(EVENT, event(to=None)) == [("(root)", "needs at least one recipient in to, cc or bcc")]
    assert found(EVENT, event(to=[], cc=[], bcc=[])) == [
        ("(root)", "needs at least one recipient in to, cc or bcc")
    ]


def test_reply_to_alone_is_not_a_recipient() -> None:
    assert ("(root)", "needs at least one recipient in to, cc or bcc") in found(
        EVENT, event(to=None, reply_to=["r@example.com"])
    )


def test_bcc_alone_is_enough_recipients() -> None:
    assert found(EVENT, event(to=None, bcc=["audit@example.com"])) == []


# --- events: header injection (CVE-2024-6923) ------------------------------------

LINE_BREAK = "contains a line break; header text must be one line"
ENCODED_WORD = "looks like an RFC 2047 encoded word (=?...?=); send plain Unicode text instead"


@pytest.mark.parametrize("subject", ["Hi\r\nBcc: evil@example.com", "Hi\nthere", "Hi\rthere",
                                     "Hi\u2028there", "Hi\u2029there", "Hi\x85there", "Hi\x0bthere"])
def test_line_break_in_subject_is_rejected(subject: str) -> None:
    assert at(EVENT, event(subject=subject), "subject") == [LINE_BREAK]


def test_nul_and_other_control_characters_in_subject_are_rejected_but_tab_is_allowed() -> None:
    assert at(EVENT, event(subject="Hi\x00"), "subject") == [
        "the text contains U+0000 (NUL, which PostgreSQL and mail cannot carry)"
    ]
    assert at(EVENT, event(subject="Hi\x1b[31m"), "subject") == [
        "contains the control character U+001B; header text must be printable"
    ]
    assert found(EVENT, event(subject="Hi\tthere")) == []


@pytest.mark.parametrize("subject", ["=?utf-8?q?hi=0D=0ABcc:_evil@x.com?=", "Re: =?UTF-8?B?aGk=?= there",
                                     "=??Q??="])
def test_encoded_word_in_subject_is_rejected(subject: str) -> None:
    assert at(EVENT, event(subject=subject), "subject") == [ENCODED_WORD]


def test_plain_unicode_and_harmless_question_marks_in_subject_are_allowed() -> None:
    assert found(EVENT, event(subject="Grüße – is =? a problem? no ?= 日本語")) == []


def test_header_value_display_name_and_record_fields_are_checked_as_header_text() -> None:
    payload = event(
        headers={"X-Ref": "a\r\nBcc: evil@example.com"},
        cc=[{"address": "bob@example.com", "name": "=?utf-8?q?Bob?="}],
        record={"type": "ticket\n", "id": "4\u20282"},
    )
    assert found(EVENT, payload) == [
        ("cc[0].name", ENCODED_WORD),
        ("headers.X-Ref", LINE_BREAK),
        ("record.id", LINE_BREAK),
        ("record.type", LINE_BREAK),
    ]


def test_header_name_without_x_prefix_is_rejected_with_its_path() -> None:
    assert found(EVENT, event(headers={"Bcc": "evil@example.com"})) == [
        ("headers.Bcc",
         "header names must start with X- and contain only letters, digits and hyphens (at most 77 characters)")
    ]


def test_header_name_with_a_trailing_newline_is_rejected() -> None:
    assert at(EVENT, event(headers={"X-Ref\n": "1"}), "headers.X-Ref\\n") == [
        "header names must start with X- and contain only letters, digits and hyphens (at most 77 characters)"
    ]


def test_reserved_x_deskmail_header_is_rejected_in_any_case() -> None:
    reserved = "the X-Deskmail- prefix is reserved for deskmail's own headers"
    assert found(EVENT, event(headers={"X-Deskmail-Event": "1"})) == [("headers.X-Deskmail-Event", reserved)]
    assert found(EVENT, event(headers={"X-DESKMAIL-Event": "1"})) == [("headers.X-DESKMAIL-Event", reserved)]


def test_header_names_repeated_in_another_case_are_rejected() -> None:
    assert found(EVENT, event(headers={"X-Ref": "1", "X-REF": "2"})) == [
        ("headers.X-REF", "repeats a header name (header names ignore case)")
    ]


# --- events: many problems at once ---------------------------------------------

def test_multiple_problems_are_all_reported_sorted_by_path() -> None:
    payload = event(event_id="nope", kind="spam", subject="a\nb", text=None,
                    to=[f"user{i}@example.com" for i in range(10)] + ["broken", "also broken"],
                    extra=True)
    paths = [path for path, _ in found(EVENT, payload)]
    assert paths == ["(root)", "event_id", "extra", "kind", "subject", "to[10]", "to[11]"]


def test_invalid_payload_lists_every_problem_and_survives_pickling() -> None:
    problems = (Problem("subject", "is required"), Problem("to[1]", "is not a valid e-mail address: x"))
    error = InvalidPayload(problems)
    assert isinstance(error, ValueError)
    assert str(error) == "subject: is required; to[1]: is not a valid e-mail address: x"
    copied = pickle.loads(pickle.dumps(error))
    assert copied.problems == problems and str(copied) == str(error)


def test_problem_prints_as_path_colon_message() -> None:
    assert str(Problem("smtp.port", "must be at least 1")) == "smtp.port: must be at least 1"


def test_messages_never_quote_the_rejected_value() -> None:
    secret = "hunter2-canary"
    document = settings(smtp={"host": "h", "port": 25, "username": "u", "password": [secret]})
    assert found(SETTINGS, document) == [("smtp.password", "must be a string")]


# --- normalize_event and unique_recipients ------------------------------------------

def test_normalize_event_turns_every_recipient_into_an_object_and_keeps_order() -> None:
    payload = event(
        to=["Zed@Example.COM", {"address": "amy@EXAMPLE.com", "name": "Amy"}],
        cc=[{"address": "bob@example.com", "name": ""}],
        reply_to=["Help@Example.com"],
    )
    normalized = schemas.normalize_event(payload)
    assert normalized["to"] == [{"address": "Zed@example.com"}, {"address": "amy@example.com", "name": "Amy"}]
    assert normalized["cc"] == [{"address": "bob@example.com"}]
    assert normalized["reply_to"] == [{"address": "Help@example.com"}]
    assert "bcc" not in normalized


def test_normalize_event_changes_nothing_else_and_leaves_the_input_alone() -> None:
    payload = event(headers={"X-Ref": "1"}, record={"type": "ticket", "id": "9"})
    normalized = schemas.normalize_event(payload)
    assert normalized is not payload
    assert payload["to"] == ["alice@example.com"]
    assert {k: v for k, v in normalized.items() if k != "to"} == {k: v for k, v in payload.items() if k != "to"}


def test_normalize_event_raises_invalid_payload_with_all_problems() -> None:
    with pytest.raises(InvalidPayload) as caught:
        schemas.normalize_event(event(subject="a\r\nb", to=["bad"]))
    assert [problem.path for problem in caught.value.problems] == ["subject", "to[0]"]
    assert str(caught.value).startswith("subject: contains a line break")


def test_normalized_event_is_still_valid() -> None:
    normalized = schemas.normalize_event(event(to=["A@Example.com"], cc=["b@example.com"]))
    assert found(EVENT, normalized) == []


def test_unique_recipients_dedupes_across_to_cc_and_bcc_case_insensitively_in_order() -> None:
    normalized = schemas.normalize_event(event(
        to=["alice@example.com", "Bob@example.com"],
        cc=["ALICE@EXAMPLE.COM", {"address": "carol@example.com", "name": "Carol"}],
        bcc=["bob@EXAMPLE.com", "dave@example.com"],
        reply_to=["erin@example.com"],
    ))
    assert schemas.unique_recipients(normalized) == [
        "alice@example.com", "Bob@example.com", "carol@example.com", "dave@example.com"
    ]


def test_unique_recipients_does_not_fold_sharp_s_into_ss() -> None:
    normalized = schemas.normalize_event(event(to=["straße@example.com", "strasse@example.com"]))
    assert schemas.unique_recipients(normalized) == ["straße@example.com", "strasse@example.com"]


# --- control messages ------------------------------------------------------------

def test_valid_control_messages_pass() -> None:
    for message in (
        control(action="limits.set", project="helpdesk", per_day=500, recipients_per_mail=None),
        control(action="limits.set", **{"global": True}, per_day=None),
        control(action="backlog.resume", ids=[EVENT_ID, OTHER_ID]),
        control(action="suspended.resume", project="helpdesk", all=True),
        control(action="auto_resume.set", project="helpdesk", enabled=False),
        control(action="project.pause", project="helpdesk", signature="ab" * 32),
    ):
        assert found(CONTROL, message) == [], message


def test_control_message_missing_required_fields_names_each_of_them() -> None:
    assert found(CONTROL, {"action": "project.unpause", "project": "p"}) == [
        ("request_id", "is required"), ("requested_at", "is required"), ("requested_by", "is required"),
    ]


@pytest.mark.parametrize("changes", [{}, {"global": False}, {"project": "helpdesk", "global": True}])
def test_limits_set_needs_project_or_global_but_not_both(changes: dict[str, Any]) -> None:
    assert found(CONTROL, control(action="limits.set", **changes)) == [
        ("(root)", "limits.set needs either project or global: true, not both")
    ]


@pytest.mark.parametrize("action", ["backlog.resume", "backlog.suspend", "suspended.resume"])
@pytest.mark.parametrize("changes", [{}, {"all": False}, {"ids": [EVENT_ID], "all": True}])
def test_backlog_and_suspended_actions_need_ids_or_all_but_not_both(action: str, changes: dict[str, Any]) -> None:
    assert found(CONTROL, control(action=action, **changes)) == [
        ("(root)", "needs either ids or all: true, not both")
    ]


def test_auto_resume_set_needs_project_and_enabled() -> None:
    assert found(CONTROL, control(action="auto_resume.set")) == [
        ("enabled", "is required for auto_resume.set"), ("project", "is required for auto_resume.set"),
    ]


def test_control_message_field_errors_name_their_paths() -> None:
    message = control(action="backlog.resume", ids=[EVENT_ID, "x", EVENT_ID], per_day=-1,
                      recipients_per_mail=2.5, signature="not-hex", requested_at="yesterday")
    assert found(CONTROL, message) == [
        ("ids", "must not contain duplicates"),
        ("ids[1]", "must be a UUID (8-4-4-4-12 hex digits)"),
        ("per_day", "must be at least 0"),
        ("recipients_per_mail", "must be an integer or null"),
        ("requested_at", "must be an RFC 3339 date-time with offset, e.g. 2025-01-31T09:30:00Z"),
        ("signature", "must be a hex HMAC-SHA256 (64 hex digits)"),
    ]


def test_unknown_action_lists_the_allowed_ones() -> None:
    assert found(CONTROL, control(action="backlog.delete", all=True)) == [
        ("action", "must be one of: backlog.resume, backlog.suspend, suspended.resume, failed.retry, "
                   "ambiguous.resend, ambiguous.close, auto_resume.set, limits.set, project.pause, "
                   "project.unpause, settings.set, settings.test, keys.rotate")
    ]


# --- project settings --------------------------------------------------------------

def test_valid_settings_for_every_mail_service_pass() -> None:
    for document in (
        settings(time_zone="Europe/Berlin", limits={"per_day": 1000, "recipients_per_mail": None},
                 from_name="Service Desk", reply_to="help@example.com"),
        settings(smtp={"host": "relay", "port": 25, "auth": "none", "security": "none"}),
        settings(mail_service="exchange", exchange={"ews_url": "https://mail.example.com/EWS/Exchange.asmx",
                                                    "username": "CORP\\desk", "password": "p"}),
        settings(mail_service="exchange", exchange={"autodiscover": True, "username": "u", "password": "p"}),
        settings(mail_service="exchange_oauth2", exchange_oauth2={
            "tenant_id": "t", "client_id": "c", "sender": "desk@example.com",
            "certificate": {"private_key": "-----BEGIN PRIVATE KEY-----", "thumbprint": "AB" * 20}}),
        settings(mail_service="gmail_oauth2", gmail_oauth2={
            "sender": "desk@example.com", "client_id": "c", "client_secret": "s", "refresh_token": "r"}),
        settings(mail_service="gmail_oauth2", gmail_oauth2={"sender": "desk@example.com", "service_account_key": {
            "client_email": "sa@p.iam.gserviceaccount.com", "private_key": "k", "token_uri": "https://t"}}),
    ):
        assert found(SETTINGS, document) == [], document


@pytest.mark.parametrize("service", ["smtp", "exchange", "exchange_oauth2", "gmail_oauth2"])
def test_settings_without_the_block_of_the_chosen_service_are_rejected(service: str) -> None:
    document = {"mail_service": service, "from_address": "desk@example.com"}
    assert found(SETTINGS, document) == [(service, f"is required when mail_service is {service}")]


def test_settings_with_a_bad_time_zone_are_rejected() -> None:
    message = "is not a known IANA time zone name, e.g. Europe/Berlin or UTC"
    for zone in ("Mars/Olympus_Mons", "utc", "America", "../../etc/passwd", ""):
        assert found(SETTINGS, settings(time_zone=zone)) == [("time_zone", message)], zone


def test_settings_addresses_and_from_name_are_checked() -> None:
    document = settings(from_address="desk", reply_to="help@", from_name="Desk\r\nBcc: x@example.com",
                        mail_service="exchange_oauth2",
                        exchange_oauth2={"tenant_id": "t", "client_id": "c", "client_secret": "s", "sender": "@x"})
    problems = found(SETTINGS, document)
    assert [path for path, _ in problems] == ["exchange_oauth2.sender", "from_address", "from_name", "reply_to"]
    assert problems[2][1] == LINE_BREAK
    assert all(message.startswith("is not a valid e-mail address: ")
               for path, message in problems if path != "from_name")


def test_smtp_field_errors_name_their_paths() -> None:
    document = settings(smtp={"host": "", "port": 70000, "security": "maybe", "auth": "login",
                              "timeout_seconds": 0, "verify_certificate": "yes", "proxy": "x"})
    assert found(SETTINGS, document) == [
        ("smtp.host", "must not be empty"),
        ("smtp.password", "is required unless auth is none"),
        ("smtp.port", "must be at most 65535"),
        ("smtp.proxy", "is not allowed"),
        ("smtp.security", "must be one of: none, starttls, tls"),
        ("smtp.timeout_seconds", "must be at least 1"),
        ("smtp.username", "is required unless auth is none"),
        ("smtp.verify_certificate", "must be true or false"),
    ]


def test_a_float_port_is_not_an_integer() -> None:
    document = settings(smtp={"host": "h", "port": 587.0, "auth": "none"})
    assert found(SETTINGS, document) == [("smtp.port", "must be an integer")]


def test_exchange_needs_ews_url_or_autodiscover_but_not_both() -> None:
    block = {"username": "u", "password": "p"}
    assert found(SETTINGS, settings(mail_service="exchange", exchange=block)) == [
        ("exchange.ews_url", "is required unless autodiscover is true")
    ]
    both = {**block, "autodiscover": True, "ews_url": "https://mail.example.com/EWS/Exchange.asmx"}
    assert found(SETTINGS, settings(mail_service="exchange", exchange=both)) == [
        ("exchange", "give either ews_url or autodiscover: true, not both")
    ]
    assert found(SETTINGS, settings(mail_service="exchange", exchange={**block, "ews_url": "not a url"})) == [
        ("exchange.ews_url", "must be an absolute URL, e.g. https://host.example.com/path")
    ]


def test_exchange_oauth2_needs_client_secret_or_certificate() -> None:
    block = {"tenant_id": "t", "client_id": "c", "sender": "desk@example.com"}
    assert found(SETTINGS, settings(mail_service="exchange_oauth2", exchange_oauth2=block)) == [
        ("exchange_oauth2.client_secret", "is required unless certificate is given")
    ]


def test_gmail_oauth2_needs_a_refresh_token_without_a_service_account_key() -> None:
    block = {"sender": "desk@example.com", "client_id": "c", "client_secret": "s"}
    assert found(SETTINGS, settings(mail_service="gmail_oauth2", gmail_oauth2=block)) == [
        ("gmail_oauth2.refresh_token", "is required unless service_account_key is given")
    ]


def test_secret_paths_lists_every_secret_of_the_settings() -> None:
    assert set(schemas.secret_paths()) == {
        ("smtp", "password"),
        ("exchange", "password"),
        ("exchange_oauth2", "client_secret"),
        ("exchange_oauth2", "certificate", "private_key"),
        ("gmail_oauth2", "service_account_key"),
        ("gmail_oauth2", "client_secret"),
        ("gmail_oauth2", "refresh_token"),
    }


def test_events_and_control_messages_carry_no_secrets() -> None:
    assert schemas.secret_paths(EVENT) == ()
    assert schemas.secret_paths(CONTROL) == ()
