"""A worker process SIGKILLed at each point of the SMTP exchange, and recovery by the scheduler."""

from __future__ import annotations

import time

from tests.faults.ledger import DOMAIN, judge, ledger, message_ids
from tests.faults.traffic import Once, events
from tests.peers.smtp import SmtpPeer
from deskmail.workers.message import message_id_for

N = 20


class KillAt(Once):
    """Kills the worker at the 5th mail reaching the hook; remembers that mail's recipient."""

    def __init__(self, worker) -> None:  # noqa: ANN001
        super().__init__(5, worker.kill_workers)
        self.recipient: str | None = None

    def __call__(self, envelope: object = None) -> None:
        with self._lock:
            self.calls += 1
            fire = self.calls == self.nth
            if fire and envelope is not None:
                self.recipient = envelope.rcpt_tos[0]
        if fire:
            self.action()
            self.fired_at = time.monotonic()


def _kill_run(site, record, point: str, expected: str):  # noqa: ANN001, ANN202
    worker = site.worker()
    site.scheduler()
    trigger = KillAt(worker)
    hooks = {"before DATA": "on_data_command", "inside the DATA window": "before_data_reply",
             "after the reply": "after_data_reply"}
    with SmtpPeer(**{hooks[point]: trigger}) as peer:
        site.project(peer, per_day=N)
        record(f"worker SIGKILL {point}", expected)
        # one recipient per mail, so the mail the worker died on can be named
        ids = site.publisher.publish_many([e | {"to": [f"user{i}@example.com"]} for i, e in enumerate(events(N))])
        verdict = judge(site.db_url, ids, lambda: peer.messages, timeout=90, per_day=N,
                        fault_ended=_fired(trigger), expect_states={"sent": N})
        copies = message_ids(peer.messages)
        killed = [i for i in ids if copies.get(message_id_for(i, DOMAIN), 0) > 1]
        record.verdict(verdict, restarts=worker.restarts, doubled=killed, killed_at=trigger.recipient)
        return ids, trigger, worker, peer


def _fired(trigger: Once) -> float:
    deadline = time.monotonic() + 30
    while trigger.fired_at is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert trigger.fired_at is not None, "the fault hook never ran"
    return trigger.fired_at


def test_worker_killed_before_data_leaves_a_mail_sent_once_later_unflagged(site, record):
    ids, trigger, worker, peer = _kill_run(
        site, record, "before DATA", "all sent; the one killed before DATA sent once, not flagged "
                                     "(others then inside their DATA window: at most one flagged copy)")
    assert worker.restarts >= 1
    killed = ids[int(trigger.recipient.removeprefix("user").partition("@")[0])]
    copies = message_ids(peer.messages).get(message_id_for(killed, DOMAIN), 0)
    row = ledger(site.db_url, [killed])[killed]
    assert copies == 1 and not row.duplicate_risk, (
        f"the mail killed before its end of DATA: {copies} copies, duplicate_risk {row.duplicate_risk}; "
        "it is safe to send again and must be neither doubled nor flagged")


def test_worker_killed_inside_the_data_window_sends_at_most_one_flagged_second_copy(site, record):
    _kill_run(site, record, "inside the DATA window",
              "all sent; the killed mail at most twice, and then flagged duplicate_risk")


def test_worker_killed_after_the_reply_loses_nothing_and_sends_no_unflagged_copy(site, record):
    _kill_run(site, record, "after the reply",
              "all sent; a second copy only if the reply was not recorded, and then flagged")
