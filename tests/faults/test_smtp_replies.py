"""4xx and 5xx at every step of the SMTP exchange, and a slow peer: one worker and scheduler for the
module, one project and SMTP peer per test."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from tests.faults.ledger import judge, ledger, query
from tests.faults.traffic import events
from tests.peers.smtp import SmtpPeer

USERS = {"desk": "s3cret-Pa55"}
TRANSIENT = {"greeting": "421 4.3.2 Service shutting down", "ehlo": "421 4.3.2 Try again later",
             "auth": "454 4.7.0 Temporary authentication failure", "mail": "451 4.3.0 Mail server busy",
             "rcpt": "450 4.2.1 Mailbox busy", "data": "451 4.3.0 Not now",
             "final": "451 4.3.0 Queue full, try again"}
PERMANENT = {"greeting": "554 5.3.2 No SMTP service here", "ehlo": "550 5.7.1 Not welcome",
             "auth": "535 5.7.8 Authentication credentials invalid", "mail": "550 5.7.1 Sender not allowed",
             "rcpt": "550 5.1.1 No such user", "data": "554 5.3.4 Message refused",
             "final": "554 5.6.0 Message content rejected"}


class FirstCalls:
    """A scripted reply for the first `n` calls at a step, then the normal answer."""

    def __init__(self, reply: str, n: int = 2) -> None:
        self.reply, self.n, self.calls = reply, n, 0
        self._lock = threading.Lock()

    def __call__(self) -> str | None:
        with self._lock:
            self.calls += 1
            return self.reply if self.calls <= self.n else None


def _project(site, peer, **smtp) -> str:  # noqa: ANN001
    return site.project(peer, f"p-{uuid.uuid4().hex[:8]}", auth="plain", username="desk",
                        password=USERS["desk"], **smtp)


@pytest.mark.parametrize("step", list(TRANSIENT))
def test_a_transient_refusal_at_each_smtp_step_is_retried_and_sent_once(shared_site, record, step):
    script = FirstCalls(TRANSIENT[step], n=2)
    with SmtpPeer(users=USERS, auth_require_tls=False, step_replies={step: script}) as peer:
        project = _project(shared_site, peer, per_day=3)
        record(f"SMTP {TRANSIENT[step][:3]} at {step}", "retried with backoff; each mail sent once")
        ids = shared_site.publisher.publish_many(events(3, project))
        started = time.monotonic()
        verdict = judge(shared_site.db_url, ids, lambda: peer.messages, timeout=60, per_day=3,
                        fault_ended=started, expect_states={"sent": 3})
        record.verdict(verdict, refusals=min(script.calls, script.n))


@pytest.mark.parametrize("step", list(PERMANENT))
def test_a_permanent_refusal_at_each_smtp_step_fails_the_mail_once_with_the_servers_words(shared_site, record,
                                                                                          step):
    reply = PERMANENT[step]
    with SmtpPeer(users=USERS, auth_require_tls=False, step_replies={step: reply}) as peer:
        project = _project(shared_site, peer, per_day=3)
        record(f"SMTP {reply[:3]} at {step}", "failed (permanent or configuration), with the server's words; "
                                              "never sent, never retried")
        ids = shared_site.publisher.publish_many(events(2, project))
        started = time.monotonic()
        verdict = judge(shared_site.db_url, ids, lambda: peer.messages, timeout=60, per_day=3,
                        fault_ended=started, expect_states={"failed": 2})
        rows = ledger(shared_site.db_url, ids)
        words = [r.detail for r in rows.values() if reply[:3] not in r.detail]
        if words:
            verdict.problems.append(f"the ledger does not quote the server's {reply[:3]}: {words[0][:120]}")
        record.verdict(verdict, reasons=sorted({r.reason for r in rows.values()}))


def test_mail_that_never_left_gives_its_unit_of_the_day_back(shared_site, record):
    with SmtpPeer(users=USERS, auth_require_tls=False) as peer:
        project = shared_site.project(peer, f"p-{uuid.uuid4().hex[:8]}", auth="plain", username="desk",
                                      password="wrong-password", per_day=2)
        record("wrong password on a project with per_day 2, then fixed",
               "both mails failed (configuration) give their units back; the next mail is sent, not backlog")
        failed = shared_site.publisher.publish_many(events(2, project))
        judge(shared_site.db_url, failed, [], timeout=60, expect_states={"failed": 2})
        _project_fix(shared_site, peer, project)
        later = shared_site.publisher.publish_many(events(1, project, label="after the fix"))
        verdict = judge(shared_site.db_url, later, lambda: peer.messages, timeout=60, per_day=2,
                        expect_states={"sent": 1})
        held = query(shared_site.db_url, "SELECT coalesce(sum(sent), 0) FROM quota_counters WHERE scope = %s",
                     (project,))[0][0]
        if held != 1:
            verdict.problems.append(f"the day's counter holds {held} units for 1 mail that may have left")
        record.verdict(verdict, units_held=held)


def _project_fix(site, peer, project: str) -> None:  # noqa: ANN001
    site.project(peer, project, auth="plain", username="desk", password=USERS["desk"], per_day=2)


def test_slow_rcpt_replies_under_the_command_timeout_send_each_mail_once(shared_site, record):
    with SmtpPeer(users=USERS, auth_require_tls=False, rcpt_delay=3.6) as peer:
        project = _project(shared_site, peer, per_day=3)
        record("slow SMTP peer: each RCPT answered after 3.6 s (timeout 5 s), 2 recipients",
               "each mail sent once, by the worker that claimed it (no takeover of a live send)")
        ids = shared_site.publisher.publish_many(events(3, project, to=["a@example.com", "b@example.com"]))
        started = time.monotonic()
        verdict = judge(shared_site.db_url, ids, lambda: peer.messages, timeout=90, per_day=3,
                        allow_flagged_duplicates=False, expect_states={"sent": 3}, quiet=9, fault_ended=started)
        record.verdict(verdict, takeovers=sum(r.takeovers for r in ledger(shared_site.db_url, ids).values()))


def test_a_slow_final_reply_sends_each_mail_once(shared_site, record):
    with SmtpPeer(users=USERS, auth_require_tls=False, final_reply_delay=8.0) as peer:
        project = _project(shared_site, peer, per_day=3)
        record("slow SMTP peer: final 250 after 8 s (final reply timeout 20 s)",
               "each mail sent once, by the worker that claimed it (no takeover of a live send)")
        ids = shared_site.publisher.publish_many(events(3, project))
        started = time.monotonic()
        verdict = judge(shared_site.db_url, ids, lambda: peer.messages, timeout=90, per_day=3,
                        allow_flagged_duplicates=False, expect_states={"sent": 3}, quiet=9, fault_ended=started)
        record.verdict(verdict, takeovers=sum(r.takeovers for r in ledger(shared_site.db_url, ids).values()))
