"""Poison events published raw onto deskmail.admit (past any publisher's checks): each must end
`rejected`, and neither the scheduler nor any other mail may stop because of it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid

import pika
import pytest

from deskmail.producers.publisher import InvalidEvent
from tests.faults.conftest import REPO
from tests.faults.ledger import judge, query
from tests.faults.traffic import events
from tests.integration.helpers import event
from tests.peers.smtp import SmtpPeer
from deskmail.workers.constants import Queue

DEPTH = 100_000
SUBJECT_OF = {"NUL in text": "nul", "lone surrogate in text": "surrogate", f"JSON nested {DEPTH:,} deep": "deep"}


def _envelope(body: str, message_id: str) -> bytes:
    """A Dramatiq envelope around an event given as JSON text (so it can hold anything JSON can)."""
    return ('{"queue_name":"deskmail.admit","actor_name":"deskmail.admit","args":[' + body + '],'
            '"kwargs":{},"options":{},"message_id":"' + message_id + '","message_timestamp":'
            + str(int(time.time() * 1000)) + '}').encode("ascii")


def _poison(marker: str) -> dict[str, bytes]:
    """The three poison events by name; each carries `marker` in its subject."""
    nul = event(subject=f"{marker} nul", text="before\u0000after")
    surrogate = event(subject=f"{marker} surrogate")
    deep = event(subject=f"{marker} deep")
    surrogate_json = json.dumps(surrogate).replace('"Hello.\\n"', '"lone \\ud800 surrogate"')
    deep_json = json.dumps(deep)[:-1] + ', "record": ' + "[" * DEPTH + "]" * DEPTH + "}"
    return {"NUL in text": (nul["event_id"], _envelope(json.dumps(nul), nul["event_id"])),
            "lone surrogate in text": (surrogate["event_id"], _envelope(surrogate_json, surrogate["event_id"])),
            f"JSON nested {DEPTH:,} deep": (deep["event_id"], _envelope(deep_json, deep["event_id"]))}


def _publish_raw(amqp_url: str, bodies: list[bytes]) -> None:
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = conn.channel()
        channel.confirm_delivery()
        for body in bodies:
            channel.basic_publish("", Queue.ADMIT, body, pika.BasicProperties(
                delivery_mode=2, priority=1, content_type="application/json", content_encoding="utf-8"),
                mandatory=True)
    finally:
        conn.close()


REJECTED = ("SELECT state FROM mail WHERE event_id = %s::uuid "
            "OR (state = 'rejected' AND position(%s in coalesce(raw, '')) > 0)")


def test_poison_events_end_rejected_and_stop_neither_the_scheduler_nor_other_mail(site, record):
    marker = f"poison-{uuid.uuid4().hex[:8]}"
    poison = _poison(marker)
    # the good mail is refused once (451), so it is sent only if the scheduler keeps handing on retries
    refused = {"n": 0}

    def first_final_reply_refused() -> str | None:
        refused["n"] += 1
        return "451 4.3.0 Try again" if refused["n"] <= 2 else None

    with SmtpPeer(step_replies={"final": first_final_reply_refused}) as peer:
        site.project(peer, per_day=10)
        site.worker()
        scheduler = site.scheduler()
        record("poison events published raw on deskmail.admit: " + ", ".join(poison),
               "each ends `rejected` with the reason; other mail (including a retry the scheduler hands on) is sent")
        _publish_raw(site.amqp_url, [body for _, body in poison.values()])
        started = time.monotonic()
        good = site.publisher.publish_many(events(2, label="after the poison"))
        verdict = judge(site.db_url, good, lambda: peer.messages, timeout=45, per_day=10, fault_ended=started,
                        expect_states={"sent": 2})
        states = {}
        deadline = time.monotonic() + 15
        for name, (event_id, _body) in poison.items():
            while True:
                rows = query(site.db_url, REJECTED, (event_id, f"{marker} {SUBJECT_OF[name]}"))
                states[name] = rows[0][0] if rows else "(no ledger row)"
                if states[name] == "rejected" or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
        for name, state in states.items():
            if state != "rejected":
                verdict.problems.append(f"{name}: {state}, not rejected")
        if scheduler.restarts:
            verdict.problems.append(f"the scheduler crashed ({scheduler.restarts} restarts)")
        record.verdict(verdict, poison=states, scheduler_tracebacks=scheduler.log().count("Traceback"))


@pytest.mark.parametrize("text, field", [("before\u0000after", "text"), ("lone \ud800", "text")])
def test_the_publisher_refuses_text_nobody_can_store_and_names_the_field(site, record, text, field):
    what = "NUL" if "\u0000" in text else "lone surrogate"
    record(f"publisher given a {what} in text", "InvalidEvent naming `text`; nothing published, no traceback")
    try:
        site.publisher.publish(event(text=text))
    except InvalidEvent as exc:
        record.note(f"InvalidEvent: {str(exc)[:120]}")
        assert field in str(exc)
    except Exception as exc:  # noqa: BLE001 - the point: anything else is the failure
        record.note(f"{type(exc).__name__}: {str(exc)[:120]}")
        raise AssertionError(f"publish raised {type(exc).__name__}, not InvalidEvent: {exc}") from exc
    else:
        record.note("published without complaint")
        raise AssertionError("the publisher published an event PostgreSQL cannot store")


def test_deskmail_publish_reports_poison_lines_as_bad_lines_without_a_traceback(site, record):
    record("`deskmail publish` given NUL, lone-surrogate and deeply nested lines among good ones",
           "the good line published; each bad line reported with its number; exit 1; no traceback")
    lines = [json.dumps(event()),
             json.dumps(event(text="a\u0000b")),
             json.dumps(event()).replace('"Hello.\\n"', '"\\ud800"'),
             json.dumps(event())[:-1] + ', "record": ' + "[" * DEPTH + "]" * DEPTH + "}"]
    done = subprocess.run([sys.executable, "-m", "deskmail.producers.cli", "publish", "-"],
                          input="\n".join(lines) + "\n", capture_output=True, text=True, cwd=REPO, env=site.env(),
                          timeout=60)
    reported = [n for n in (2, 3, 4) if f"line {n}:" in done.stderr]
    record.note(f"exit {done.returncode}, {len(done.stdout.split())} published, bad lines reported: {reported}"
                + ("; traceback" if "Traceback" in done.stderr else ""))
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    assert done.returncode == 1 and reported == [2, 3, 4], done.stderr[-2000:]
    assert len(done.stdout.split()) == 1
