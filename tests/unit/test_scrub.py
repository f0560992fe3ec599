"""The one scrubber for peers' words: a project's secrets masked in every form a peer may echo them."""

from __future__ import annotations

import base64
import json
import urllib.parse
import uuid

import pytest

from deskmail.workers.scrub import MASK, Scrubber, scrubbed
from deskmail.workers.settings import ProjectSettings
from deskmail.workers.transports.base import Delivered, Envelope, Outcome, TransportFailure

SECRET = "Tr0ub4dor&3-Canary"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


FORMS = [
    SECRET, b64(SECRET), b64(SECRET).rstrip("="), base64.urlsafe_b64encode(SECRET.encode()).decode().rstrip("="),
    b64(f"\0desk\0{SECRET}"), b64(f"desk\0desk\0{SECRET}"), b64(f"other-authzid\0someone\0{SECRET}"),
    urllib.parse.quote(SECRET, safe=""), urllib.parse.quote_plus(SECRET), json.dumps(SECRET)[1:-1],
    "".join(f"%{byte:02X}" for byte in SECRET.encode()),
    b64(f"user=desk@example.org\x01auth=Bearer {SECRET}\x01\x01"),
]


@pytest.mark.parametrize("form", FORMS)
def test_every_form_a_peer_may_echo_is_masked(form: str) -> None:
    text = Scrubber([SECRET], ["desk"]).text(f"535 5.7.8 rejected {form} (try again)")
    assert form not in text and SECRET not in text and MASK in text
    assert text.startswith("535 5.7.8 rejected ") and text.endswith(" (try again)")


def test_text_without_a_secret_is_left_alone() -> None:
    text = "550 5.1.1 <nobody@example.com>: Recipient address rejected; see https://example.com/a%20b"
    assert Scrubber([SECRET], ["desk"]).text(text) == text


def test_every_secret_of_the_settings_is_found_including_a_service_account_key() -> None:
    key = {"type": "service_account", "private_key": "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n"
                                                       "-----END PRIVATE KEY-----\n", "client_email": "a@b.iam"}
    settings = ProjectSettings("p", 1, "gmail_oauth2", {"gmail_oauth2": {"sender": "d@example.org",
                                                                         "service_account_key": key}})
    text = Scrubber.of(settings).text("bad key line MIIEvQIBADANBgkqhkiG9w0BAQEFAASC here")
    assert "MIIEvQIBADANBgkqhkiG9w0BAQEFAASC" not in text


class _Echoing:
    """A transport whose peer echoes the password, as a failure and as a success."""

    def __init__(self, fail: bool) -> None:
        self.fail = fail

    @scrubbed
    def send(self, settings: ProjectSettings, envelope: Envelope) -> Delivered:
        if self.fail:
            try:
                raise ValueError(f"peer said {SECRET}")
            except ValueError as exc:
                raise TransportFailure(Outcome.CONFIGURATION, f"535 {b64(chr(0) + 'desk' + chr(0) + SECRET)}",
                                       refused={"a@example.com": f"550 {SECRET}"}, advice=SECRET) from exc
        return Delivered(f"250 ok {SECRET}", {"b@example.com": f"550 {urllib.parse.quote(SECRET)}"})


SETTINGS = ProjectSettings("p", 7, "smtp", {"smtp": {"username": "desk", "password": SECRET}})
ENVELOPE = Envelope(uuid.uuid4(), "d@example.org", ("a@example.com",), b"", "<x@e>")


def test_a_transports_failure_leaves_scrubbed_and_without_its_cause() -> None:
    with pytest.raises(TransportFailure) as caught:
        _Echoing(fail=True).send(SETTINGS, ENVELOPE)
    failure = caught.value
    texts = [failure.detail, failure.problem, failure.advice or "", str(failure), *failure.refused.values()]
    assert all(SECRET not in t and b64(f"\0desk\0{SECRET}") not in t for t in texts)
    assert failure.__cause__ is None and failure.__context__ is None


def test_a_transports_success_leaves_scrubbed() -> None:
    delivered = _Echoing(fail=False).send(SETTINGS, ENVELOPE)
    assert SECRET not in delivered.detail and all("Canary" not in r for r in delivered.refused.values())
