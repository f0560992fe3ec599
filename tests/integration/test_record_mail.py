"""A technician's reply as a service desk sends it, end to end through each of the four mail services to their
local peers: attachments byte-identical (re-parsed with the stdlib's strict policy), an inline logo with its
content id, threading headers, the agent's name; the size limits of SMTP, Gmail and Graph; where the bytes live."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import email
import email.message
import email.policy
import hashlib
import json
import os
import pathlib
import uuid
from dataclasses import dataclass
from typing import Callable, Iterator

import dramatiq
import pytest

from deskmail.producers.publisher import InvalidEvent, envelope
from tests.conftest import wait_until
from tests.integration.helpers import gmail_settings, smtp_settings
from tests.peers.ews import EwsPeer
from tests.peers.google_token import GoogleTokenPeer
from tests.peers.microsoft import MicrosoftPeer, graph_error
from tests.peers.smtp import SmtpPeer
from deskmail.workers.app import enqueuer
from deskmail.workers.attachments import clean_up
from deskmail.workers.config import Config
from deskmail.workers.scheduler import hand_on_due
from deskmail.workers.selftest import TEST_ATTACHMENT, self_test

SENDER = "desk@example.org"
PASSWORD = "s3cret-Pa55"
EWS_USER, EWS_PASSWORD = "EXAMPLE\\desk", "Pa55-Canary-Ews!"
GRAPH_SECRET = "Qx8~Canary-Secret_42"
CUSTOMER_MAIL = "<CAF=x7Q+1042@mail.customer.example>"
EARLIER_MAIL = "<CAF=x7Q+1041@mail.customer.example>"
LOGO = bytes.fromhex("89504e470d0a1a0a") + os.urandom(2_000)
REPORT = os.urandom(60_000)
LOG = "Drucker offline seit 09:12\nFehler 0x1F\n".encode()
UMLAUT_NAME = "Prüfbericht März – Größe.pdf"
VAR = pathlib.Path(__file__).resolve().parents[2] / "var"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def ticket_reply(**extra) -> dict:
    """A technician's reply on ticket 1042: two attachments, an inline logo, threaded under the customer's mail."""
    return {"event_id": str(uuid.uuid4()), "project": "alpha", "kind": "record",
            "to": [{"address": "kunde@example.com", "name": "Kunde"}], "subject": "Re: [#1042] Drucker druckt nicht",
            "text": "Guten Tag,\n\nanbei der Prüfbericht und das Protokoll.\n\nAlice\n",
            "html": '<p>Guten Tag,</p><p>anbei der Prüfbericht.</p><img src="cid:logo@desk.example.org" alt="Logo">',
            "from_name": "Alice via Service Desk", "record": {"type": "ticket", "id": "1042"},
            "in_reply_to": CUSTOMER_MAIL, "references": [EARLIER_MAIL, CUSTOMER_MAIL],
            "attachments": [
                {"filename": UMLAUT_NAME, "content_type": "application/pdf", "content": b64(REPORT)},
                {"filename": "drucker.log", "content_type": "text/plain", "content": b64(LOG)},
                {"filename": "logo.png", "content_type": "image/png", "content": b64(LOGO),
                 "content_id": "logo@desk.example.org"}],
            **extra}


def strict(data: bytes) -> email.message.EmailMessage:
    """The message as the stdlib parses it with its strict policy (a defect raises)."""
    return email.message_from_bytes(data, policy=email.policy.strict)  # type: ignore[return-value]


def files_of(message: email.message.EmailMessage) -> dict[str, tuple[str, str | None, str | None]]:
    """{file name: (sha256, content id, disposition)} of every non-multipart part with a file name."""
    return {part.get_filename(): (hashlib.sha256(part.get_payload(decode=True)).hexdigest(), part["Content-ID"],
                                  part.get_content_disposition())
            for part in message.walk() if part.get_filename()}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Service:
    """One mail service wired to its local peer: its settings, and the raw messages the peer received."""

    name: str
    settings: dict
    received: Callable[[int], list[bytes]]
    peer: object


@pytest.fixture(params=["smtp", "exchange", "exchange_oauth2", "gmail_oauth2"])
def service(request, tls_ca) -> Iterator[Service]:
    """Each of the four mail services against its local peer."""
    with contextlib.ExitStack() as stack:
        yield _service(request.param, tls_ca, stack)


def _service(name: str, tls_ca, stack: contextlib.ExitStack, **smtp_options) -> Service:
    if name == "smtp":
        smtp = stack.enter_context(SmtpPeer(security="starttls", cert=tls_ca.issue(), users={"desk": PASSWORD},
                                            **smtp_options))
        return Service(name, smtp_settings(smtp, tls_ca.ca_path),
                       lambda n: [r.data for r in smtp.wait_for(n, timeout=30)], smtp)
    if name == "exchange":
        ews = stack.enter_context(EwsPeer(tls_ca.issue(), users={EWS_USER: EWS_PASSWORD}))
        block = {"ews_url": ews.url, "username": EWS_USER, "password": EWS_PASSWORD, "auth_type": "ntlm",
                 "ca_file": str(tls_ca.ca_path), "timeout_seconds": 30}
        return Service(name, {"mail_service": "exchange", "from_address": SENDER, "exchange": block},
                       lambda n: [i.mime for i in ews.received.wait_for(n, timeout=30)], ews)
    if name == "exchange_oauth2":
        graph = stack.enter_context(MicrosoftPeer(tls_ca.issue(), client_secret=GRAPH_SECRET))
        block = {"tenant_id": graph.tenant, "client_id": graph.client_id, "client_secret": GRAPH_SECRET,
                 "sender": SENDER, "authority_url": graph.url, "graph_url": graph.url,
                 "ca_file": str(tls_ca.ca_path), "timeout_seconds": 30}
        return Service(name, {"mail_service": "exchange_oauth2", "from_address": SENDER, "exchange_oauth2": block},
                       lambda n: [m.data for m in graph.sent.wait_for(n, timeout=30)], graph)
    smtp = stack.enter_context(SmtpPeer(security="starttls", cert=tls_ca.issue(), xoauth2_tokens={"ya29.test-token"},
                                        **smtp_options))
    token = stack.enter_context(GoogleTokenPeer(tls_ca.issue(), refresh_tokens={"1//good": ("cid", "csecret")}))
    settings = gmail_settings(smtp, token, tls_ca.ca_path, client_id="cid", client_secret="csecret",
                              refresh_token="1//good", timeout_seconds=30)
    return Service(name, settings, lambda n: [r.data for r in smtp.wait_for(n, timeout=30)], smtp)


def send_one(runtime, store, worker, publisher, service: Service, ev: dict, state: str = "sent"):
    """Save the service's settings, start a worker, publish ev; the mail once it is in `state`."""
    runtime.settings.save("alpha", service.settings)
    worker()
    publisher.publish(ev)
    return wait_until(lambda: (m := store.get_mail(ev["event_id"])) and m.state == state and m, timeout=60)


def test_a_ticket_reply_arrives_intact_threaded_and_under_the_agents_name(runtime, store, worker, publisher,
                                                                          service):
    ev = ticket_reply()
    mail = send_one(runtime, store, worker, publisher, service, ev)
    [data] = service.received(1)
    if service.name == "smtp":
        VAR.mkdir(exist_ok=True)
        (VAR / "ticket-reply.eml").write_bytes(data)
    assert_intact_ticket_reply(data, ev)
    assert mail.message_id == f"<{ev['event_id']}@example.org>"


def assert_intact_ticket_reply(data: bytes, ev: dict) -> None:
    """The ticket reply as sent: threaded, from the agent, its files byte-identical, the logo inline."""
    message = strict(data)
    assert message["Message-ID"] == f"<{ev['event_id']}@example.org>"
    assert message["In-Reply-To"] == CUSTOMER_MAIL
    assert message["References"].split() == [EARLIER_MAIL, CUSTOMER_MAIL]
    assert message["From"] == "Alice via Service Desk <desk@example.org>"
    assert message["Auto-Submitted"] is None and message["X-Auto-Response-Suppress"] is None
    assert files_of(message) == {UMLAUT_NAME: (sha(REPORT), None, "attachment"),
                                 "drucker.log": (sha(LOG), None, "attachment"),
                                 "logo.png": (sha(LOGO), "<logo@desk.example.org>", "inline")}
    html = next(part for part in message.walk() if part.get_content_type() == "text/html")
    assert 'src="cid:logo@desk.example.org"' in html.get_content()
    assert [p.get_content_type() for p in message.walk()] == [
        "multipart/mixed", "multipart/alternative", "text/plain", "multipart/related", "text/html", "image/png",
        "application/pdf", "text/plain"]


@pytest.mark.parametrize("route", ["smtp", "ews"])
def test_a_ticket_reply_arrives_intact_over_the_smtp_and_ews_routes_of_exchange_oauth2(runtime, store, worker,
                                                                                       publisher, tls_ca, route):
    with contextlib.ExitStack() as stack:
        graph = _service("exchange_oauth2", tls_ca, stack)
        block = graph.settings["exchange_oauth2"]
        if route == "smtp":
            outlook = "https://outlook.office365.com/.default"
            peer = stack.enter_context(SmtpPeer(security="starttls", cert=tls_ca.issue(),
                                                xoauth2_tokens={graph.peer.token_for(outlook)}))
            block.update(route="smtp", smtp_host=peer.host, smtp_port=peer.port)
            received = lambda: peer.wait_for(1, timeout=30)[0].data  # noqa: E731
        else:
            peer = stack.enter_context(EwsPeer(tls_ca.issue()))
            peer.tokens.add(graph.peer.token_for(f"https://{peer.host}:{peer.port}/.default"))
            block.update(route="ews", ews_url=peer.url)
            received = lambda: peer.received.wait_for(1, timeout=30)[0].mime  # noqa: E731
        ev = ticket_reply()
        send_one(runtime, store, worker, publisher, graph, ev)
        assert_intact_ticket_reply(received(), ev)


def test_a_20_mb_attachment_with_an_umlaut_name_round_trips(runtime, store, worker, publisher, service):
    big = os.urandom(20 * 1024 * 1024)
    ev = ticket_reply(attachments=[{"filename": "Größenprüfung Übersicht.bin", "content_type":
                                    "application/octet-stream", "content": b64(big)}])
    send_one(runtime, store, worker, publisher, service, ev)
    [data] = service.received(1)
    assert files_of(strict(data)) == {"Größenprüfung Übersicht.bin": (sha(big), None, "attachment")}
    if service.name == "exchange_oauth2":  # over Graph's 4 MB: a draft, the file through an upload session
        [sent] = service.peer.sent.snapshot()
        assert sent.path == "draft" and len(service.peer.upload_chunks.snapshot()) == 7
        assert strict(data)["Message-ID"] == f"<{ev['event_id']}@example.org>"
        assert strict(data)["References"].split() == [EARLIER_MAIL, CUSTOMER_MAIL]


def test_a_small_mail_goes_to_graph_by_send_mail_and_a_large_one_as_a_draft_with_an_upload_session(
        runtime, store, worker, publisher, tls_ca):
    with contextlib.ExitStack() as stack:
        graph = _service("exchange_oauth2", tls_ca, stack)
        send_one(runtime, store, worker, publisher, graph, ticket_reply())
        large = ticket_reply(attachments=[*ticket_reply()["attachments"],
                                          {"filename": "scan.tif", "content_type": "image/tiff",
                                           "content": b64(big := os.urandom(4 * 1024 * 1024 + 1))}])
        publisher.publish(large)
        wait_until(lambda: (m := store.get_mail(large["event_id"])) and m.state == "sent", timeout=60)
        small_sent, large_sent = graph.peer.sent.wait_for(2, timeout=10)
    assert (small_sent.path, large_sent.path) == ("sendMail", "draft")
    message = strict(large_sent.data)
    assert files_of(message) == {UMLAUT_NAME: (sha(REPORT), None, "attachment"),
                                 "drucker.log": (sha(LOG), None, "attachment"),
                                 "logo.png": (sha(LOGO), "<logo@desk.example.org>", "inline"),
                                 "scan.tif": (sha(big), None, "attachment")}
    assert message["Message-ID"] == f"<{large['event_id']}@example.org>"
    assert message["In-Reply-To"] == CUSTOMER_MAIL and message["From"] == "Alice via Service Desk <desk@example.org>"
    assert graph.peer.drafts == {} and graph.peer.deleted_drafts == []


@pytest.mark.parametrize("name", ["smtp", "gmail_oauth2"])
def test_a_mail_over_the_servers_size_fails_before_data_with_both_sizes(runtime, store, worker, publisher,
                                                                        tls_ca, name):
    with contextlib.ExitStack() as stack:
        service = _service(name, tls_ca, stack, data_size_limit=100_000)
        ev = ticket_reply(attachments=[{"filename": "big.bin", "content_type": "application/octet-stream",
                                        "content": b64(os.urandom(150_000))}])
        mail = send_one(runtime, store, worker, publisher, service, ev, state="failed")
    assert mail.reason == "permanent" and mail.attempts == 1
    assert "over the 100000 bytes" in mail.detail and "150000 bytes of attachments" in mail.detail
    assert service.peer.mail_from_count == 0 and service.peer.messages == []


def test_a_notification_says_it_is_automatic_and_offers_one_click_unsubscribe(runtime, store, worker, publisher,
                                                                              tls_ca):
    with contextlib.ExitStack() as stack:
        service = _service("smtp", tls_ca, stack)
        service.settings["list_unsubscribe_url"] = "https://desk.example.org/unsubscribe?p={project}&to={to}"
        ev = {"event_id": str(uuid.uuid4()), "project": "alpha", "kind": "notification",
              "to": ["a+b@example.com"], "subject": "Ticket #1042 updated", "text": "Updated.\n"}
        send_one(runtime, store, worker, publisher, service, ev)
        [data] = service.received(1)
    message = strict(data)
    assert message["Auto-Submitted"] == "auto-generated" and message["X-Auto-Response-Suppress"] == "All"
    assert message["List-Unsubscribe"] == "<https://desk.example.org/unsubscribe?p=alpha&to=a%2Bb@example.com>"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert message["In-Reply-To"] is None and message["References"] is None


def test_record_mails_of_one_ticket_thread_under_one_root_when_they_give_no_references(runtime, store, worker,
                                                                                       publisher, tls_ca):
    with contextlib.ExitStack() as stack:
        service = _service("smtp", tls_ca, stack)
        first, second = (ticket_reply(attachments=[], in_reply_to=None, references=None) for _ in range(2))
        other = ticket_reply(attachments=[], in_reply_to=None, references=None, record={"type": "ticket", "id": "7"})
        for ev in (first, second, other):
            for key in ("attachments", "in_reply_to", "references"):
                ev.pop(key)
            send_one(runtime, store, worker, publisher, service, ev)
        messages = [strict(d) for d in service.received(3)]
    roots = [m["References"] for m in messages]
    assert roots[0] == roots[1] == messages[0]["In-Reply-To"] != roots[2]
    assert roots[0].startswith("<thread.") and roots[0].endswith("@example.org>")


def test_the_bytes_leave_the_event_at_admission_and_the_same_file_is_stored_once(runtime, store, worker,
                                                                                  publisher, tls_ca):
    with contextlib.ExitStack() as stack:
        service = _service("smtp", tls_ca, stack)
        events = [ticket_reply() for _ in range(3)]
        for ev in events:
            send_one(runtime, store, worker, publisher, service, ev)
    with store.pool.connection() as conn:
        blobs = conn.execute("SELECT sha256, size FROM attachment_blobs ORDER BY size").fetchall()
        sizes = conn.execute("SELECT max(pg_column_size(event)) AS n FROM mail").fetchone()["n"]
    assert {(b["sha256"], b["size"]) for b in blobs} >= {(sha(LOG), len(LOG)), (sha(LOGO), len(LOGO)),
                                                          (sha(REPORT), len(REPORT))}
    assert len(blobs) == 3 and sizes < 4000
    stored = store.get_mail(events[0]["event_id"]).event["attachments"]
    assert [a.get("content") for a in stored] == [None, None, None]
    assert stored[2] == {"filename": "logo.png", "content_type": "image/png", "content_id": "logo@desk.example.org",
                         "inline": True, "sha256": sha(LOGO), "size": len(LOGO)}


def test_backlog_mail_keeps_its_attachments_and_clean_up_deletes_only_what_no_mail_needs(runtime, store, worker,
                                                                                         publisher, tls_ca):
    with contextlib.ExitStack() as stack:
        service = _service("smtp", tls_ca, stack)
        service.settings["limits"] = {"per_day": 1}
        sent = ticket_reply(attachments=[{"filename": "a.bin", "content_type": "application/octet-stream",
                                          "content": b64(first := os.urandom(1000))}])
        waiting = ticket_reply(attachments=[{"filename": "b.bin", "content_type": "application/octet-stream",
                                             "content": b64(second := os.urandom(1000))}])
        send_one(runtime, store, worker, publisher, service, sent)
        publisher.publish(waiting)
        wait_until(lambda: (m := store.get_mail(waiting["event_id"])) and m.state == "backlog")
        assert clean_up(store, retention=3600, grace=3600) == 0  # used just now: within the grace period
        assert clean_up(store, retention=3600, grace=0) == 1
        assert set(store.attachment_contents(store.get_mail(waiting["event_id"]).event)) == {sha(second)}
        assert store.attachment_contents(store.get_mail(sent["event_id"]).event) == {}
        store.move([waiting["event_id"]], "alpha", "backlog", "suspended", "suspended by a test")
        assert clean_up(store, retention=0, grace=0) == 0  # suspended mail is kept, with its attachments
        store.move([waiting["event_id"]], "alpha", "suspended", "queued", "resumed by a test")
        hand_on_due(store, enqueuer(worker()))
        wait_until(lambda: store.get_mail(waiting["event_id"]).state == "sent", timeout=30)
        _, data = service.received(2)
    assert files_of(strict(data)) == {"b.bin": (sha(second), None, "attachment")}
    assert sha(first) != sha(second)


def test_caps_are_checked_by_the_publisher_and_again_at_admission_naming_the_attachment(runtime, store, worker,
                                                                                        publisher, config):

    small = dataclasses.replace(config, attachment_max_bytes=1000)
    too_big = ticket_reply(attachments=[{"filename": "huge.bin", "content_type": "application/octet-stream",
                                         "content": b64(os.urandom(1001))}])
    publisher.caps = small.attachment_caps()
    with pytest.raises(InvalidEvent, match=r"attachments\[0\]: 'huge.bin' is 1001 bytes, over the 1000 bytes"):
        publisher.publish(too_big)
    broker = worker(cfg=small)
    body = json.loads(envelope(too_big))
    broker.enqueue(dramatiq.Message(queue_name="deskmail.admit", actor_name="deskmail.admit", args=body["args"],
                                    kwargs={}, options={}))
    mail = wait_until(lambda: store.get_mail(too_big["event_id"]))
    assert mail.state == "rejected" and "'huge.bin' is 1001 bytes" in mail.detail
    assert too_big["attachments"][0]["content"] not in json.dumps(mail.event or {}) + (mail.detail or "")
    assert Config.from_env({}).attachment_caps().per_event == 25 * 1024 * 1024


def test_the_test_action_can_send_a_small_attachment_through_each_service(runtime, service):
    runtime.settings.save("alpha", service.settings)
    checkup = self_test(runtime, "alpha", attachment=True)
    assert checkup.accepted, checkup.as_dict()
    [data] = service.received(1)
    [(name, (_, _, disposition))] = files_of(strict(data)).items()
    assert (name, disposition) == (TEST_ATTACHMENT, "attachment")


def test_a_mail_whose_attachment_was_cleaned_up_fails_naming_it_and_the_settings_stay_unblamed(
        runtime, store, worker, publisher, tls_ca):
    with contextlib.ExitStack() as stack:
        service = _service("smtp", tls_ca, stack)
        service.settings["limits"] = {"per_day": 0}
        runtime.settings.save("alpha", service.settings)
        store.set_pause("alpha", "paused by a test")
        ev = ticket_reply()
        worker()
        publisher.publish(ev)
        wait_until(lambda: (m := store.get_mail(ev["event_id"])) and m.state == "backlog")
        with store.pool.connection() as conn:
            conn.execute("DELETE FROM attachment_blobs WHERE size = %s", (len(LOG),))
        store.move([ev["event_id"]], "alpha", "backlog", "queued", "resumed by a test")
        hand_on_due(store, enqueuer(worker()))
        mail = wait_until(lambda: (m := store.get_mail(ev["event_id"])) and m.state == "failed" and m)
    assert mail.reason == "permanent" and "attachment 'drucker.log' is no longer stored" in mail.detail
    assert store.get_project("alpha").config_error is None and service.peer.mail_from_count == 0


def test_a_large_graph_mail_refused_at_send_is_retried_with_a_new_draft_and_the_old_one_deleted(
        runtime, store, worker, publisher, tls_ca):
    with contextlib.ExitStack() as stack:
        graph = _service("exchange_oauth2", tls_ca, stack)
        graph.peer.graph_replies.append(graph_error(503, "ServiceUnavailable", "Try again later.",
                                                    **{"Retry-After": "0"}))
        large = ticket_reply(attachments=[{"filename": "scan.tif", "content_type": "image/tiff",
                                           "content": b64(big := os.urandom(5 * 1024 * 1024))}])
        runtime.settings.save("alpha", graph.settings)
        enqueue = enqueuer(worker())
        publisher.publish(large)
        wait_until(lambda: store.get_mail(large["event_id"]) and graph.peer.deleted_drafts, timeout=60)
        retried = wait_until(lambda: (m := store.get_mail(large["event_id"])) and m.state == "queued" and m)
        assert retried.attempts == 1 and "503" in retried.detail and graph.peer.sent.snapshot() == []
        wait_until(lambda: hand_on_due(store, enqueue), timeout=10)  # the scheduler's part: the retry is due
        mail = wait_until(lambda: (m := store.get_mail(large["event_id"])) and m.state == "sent" and m, timeout=60)
        [sent] = graph.peer.sent.wait_for(1, timeout=10)
    assert sent.path == "draft" and files_of(strict(sent.data)) == {"scan.tif": (sha(big), None, "attachment")}
    assert mail.attempts == 2 and len(graph.peer.deleted_drafts) == 1 and graph.peer.drafts == {}
