"""Pure parts of the control plane and of bad-input keeping: timestamps, terminal-safe text, bounds."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

import pytest

from deskmail import schemas
from deskmail.producers.cli.controls import printable
from deskmail.producers.control import control_message
from deskmail.workers.deadletters import envelope_refusal
from deskmail.workers.rejects import capped, excerpt, rejected_id

UTC = timezone.utc


@pytest.mark.parametrize("text, expected", [
    ("2026-11-24T10:00:00Z", datetime(2026, 11, 24, 10, 0, tzinfo=UTC)),
    ("2026-11-24t10:00:00z", datetime(2026, 11, 24, 10, 0, tzinfo=UTC)),
    ("2026-12-31T23:59:60Z", datetime(2027, 1, 1, 0, 0, tzinfo=UTC)),
    ("2026-11-24T11:30:00+01:30", datetime(2026, 11, 24, 10, 0, tzinfo=UTC)),
    ("2026-11-24T05:00:00-05:00", datetime(2026, 11, 24, 10, 0, tzinfo=UTC)),
    ("2026-11-24T10:00:00.123456789Z", datetime(2026, 11, 24, 10, 0, 0, 123456, tzinfo=UTC)),
])
def test_every_form_of_requested_at_the_schema_accepts_is_read_as_utc(text, expected):
    from deskmail.workers.control import parse_requested_at
    message = control_message("project.pause", "", project="alpha")
    message["requested_at"] = text
    assert schemas.validate("control-message.v1", message) == []
    assert parse_requested_at(text) == expected


@pytest.mark.parametrize("text", ["9999-12-31T23:59:60Z", "0001-01-01T00:00:00+01:00", "2026-02-30T10:00:00Z",
                                  "2026-11-24T10:00:00+24:00", "yesterday", None, 17])
def test_a_requested_at_that_is_no_instant_gives_none_and_never_raises(text):
    from deskmail.workers.control import parse_requested_at
    assert parse_requested_at(text) is None


def test_attacker_written_text_is_shown_with_control_characters_escaped():
    shown = printable("admin\x1b[2J\r\nfake entry\x07\x9b1m\u202eevil\\")
    assert shown == "admin\\x1b[2J\\r\\nfake entry\\x07\\x9b1m\\u202eevil\\\\"
    assert printable("Zoë@desk-01") == "Zoë@desk-01"


def test_a_long_problem_list_is_capped_with_the_count_of_the_rest():
    text = capped(f"headers.X-{i}: unknown" for i in range(200_000))
    assert text.endswith("; ... and 199,980 more problems") and len(text) < 1_000


def test_an_excerpt_keeps_8_kib_and_says_how_much_more_there_was():
    raw = b"x" * 1_000_000
    text = excerpt(raw)
    assert text.startswith("x" * 8192) and text.endswith("(991,808 more bytes)") and len(text) < 8300
    assert excerpt("é".encode()[:1] + b"\x00") == "\ufffd\\u0000"


def test_a_rejected_id_is_stable_for_the_same_bytes_and_distinct_otherwise():
    assert rejected_id(b"a") == rejected_id(b"a") != rejected_id(b"b")
    assert isinstance(rejected_id(b""), uuid.UUID)


def envelope(**changes):
    base = {"queue_name": "deskmail.admit", "actor_name": "deskmail.admit", "args": [{}], "kwargs": {},
            "options": {}, "message_id": "m", "message_timestamp": 1}
    return {**base, **changes}


@pytest.mark.parametrize("bad, reason", [
    (envelope(extra=1), "unknown key"),
    (envelope(actor_name="deskmail.control"), "actor_name"),
    (envelope(actor_name="deskmail.nope"), "actor_name"),
    (envelope(queue_name="deskmail.control"), "queue_name"),
    (envelope(options={"time_limit": "soon"}), "options.time_limit"),
    (envelope(options={"pipe_target": {}}), "unknown option"),
    (envelope(options=[]), "options"),
    (envelope(args={}), "args"),
    ([1, 2], "not a JSON object"),
])
def test_a_dead_letter_dramatiq_would_refuse_is_named_as_such(bad, reason):
    assert reason in envelope_refusal(bad)


def test_a_clean_admit_envelope_is_one_to_admit_again():
    assert envelope_refusal(envelope(options={"retries": 30, "broker_priority": 5})) is None
    assert envelope_refusal(envelope(queue_name="deskmail.admit.DQ", options={"eta": 1.5})) is None
