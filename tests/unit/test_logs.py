"""Log lines: JSON when asked, the mail's fields on every line about it, the level honoured after dramatiq's set-up."""

from __future__ import annotations

import io
import json
import logging

import pytest

from deskmail.workers import logcontext
from deskmail.workers.logs import configure_logging


@pytest.fixture
def stream():
    """Root logging into a string, as dramatiq's CLI leaves it (a handler already there); restored after."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    out = io.StringIO()
    root.handlers = [logging.StreamHandler(out)]
    root.setLevel(logging.DEBUG)
    outside = logcontext.start()  # no mail, whatever an earlier test left in this thread
    yield out
    logcontext.end(outside)
    root.handlers, root.level = saved[0], saved[1]


def test_json_lines_carry_event_project_service_attempt_and_host(stream):
    configure_logging("INFO", "json")
    token = logcontext.start(event_id="e-1", project="alpha")
    logcontext.bind(service="smtp", attempt=2)
    logging.getLogger("deskmail.workers.delivery").info("mail %s sent", "e-1")
    logcontext.end(token)
    logging.getLogger("deskmail.workers.delivery").info("between mails")
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["message"] == "mail e-1 sent" and first["level"] == "INFO"
    assert first["logger"] == "deskmail.workers.delivery"
    assert (first["event_id"], first["project"], first["service"], first["attempt"]) == ("e-1", "alpha", "smtp", 2)
    assert first["host"] == logcontext.HOST and first["host"]
    assert second["event_id"] is None and second["project"] is None


def test_the_level_replaces_the_one_dramatiq_set_and_text_lines_end_with_the_context(stream):
    configure_logging("WARNING", "text")
    token = logcontext.start(event_id="e-2")
    logging.getLogger("deskmail.workers.delivery").info("hidden")
    logging.getLogger("deskmail.workers.delivery").warning("shown")
    logcontext.end(token)
    [line] = stream.getvalue().splitlines()
    assert line.endswith("deskmail.workers.delivery: shown [event_id=e-2]")


def test_a_message_holding_a_newline_stays_one_json_line(stream):
    configure_logging("INFO", "json")
    logging.getLogger("x").warning("two\nlines")
    [line] = stream.getvalue().splitlines()
    assert json.loads(line)["message"] == "two\nlines"
