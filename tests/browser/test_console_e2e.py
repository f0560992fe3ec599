"""The admin console in a real browser, end to end against real workers, RabbitMQ, PostgreSQL and an SMTP
peer: log in, Test a project's settings, then steer a backlog of 15 mails screen by screen."""

from __future__ import annotations

import re

import pytest

from tests.browser.conftest import ADMIN, VIEWER, login, shot
from tests.conftest import wait_until
from tests.integration.helpers import event, smtp_settings
from tests.peers.smtp import SmtpPeer

pytestmark = pytest.mark.integration


@pytest.fixture
def peer(tls_ca):
    with SmtpPeer(security="starttls", cert=tls_ca.issue(), users={"desk": "s3cret-Pa55"}) as p:
        yield p


def delivered_ids(peer) -> set[str]:
    """Event ids of the mails the peer accepted (deskmail derives the Message-ID from the event id)."""
    return {m.message["Message-ID"] for m in peer.messages}


def message_id(store, event_id: str) -> str:
    return store.get_mail(event_id).message_id


def states(store, ids) -> list[str]:
    """Each mail's state; `unadmitted` while its event still waits on the admit queue."""
    return [m.state if (m := store.get_mail(i)) else "unadmitted" for i in ids]


def watch_csp(page) -> list[str]:
    """Collect Content Security Policy violations the page reports."""
    seen: list[str] = []
    page.on("console", lambda m: seen.append(m.text) if "Content Security Policy" in m.text else None)
    return seen


def test_an_admin_tests_settings_then_resumes_suspends_and_drains_a_backlog(runtime, store, worker, publisher,
                                                                              peer, tls_ca, console, browser):
    runtime.settings.save("alpha", smtp_settings(peer, tls_ca.ca_path))  # what `deskmail settings set` does today
    worker()
    page = login(browser, console, ADMIN)
    violations = watch_csp(page)
    shot(page, "01-projects")

    # SMTP Settings: the saved password shows as "set" and is never in the page; Test streams its steps.
    page.click("text=SMTP Settings")
    assert page.locator("label.secret .tag").first.inner_text() == "set"
    assert "s3cret-Pa55" not in page.content()
    page.fill("input[name='limits.per_day']", "10")
    shot(page, "02-smtp-settings")
    page.click("#test")
    page.wait_for_selector("#test-result .job[data-state=passed]", timeout=30_000)
    steps = page.locator("#test-result li.step").all_inner_texts()
    assert [s.split()[0] for s in steps] == ["ok"] * len(steps) and any("send" in s for s in steps), steps
    assert "the test mail was accepted" in page.inner_text("#test-result")
    test_mail = peer.wait_for(1)[0].message
    assert test_mail["Subject"] == "deskmail test mail for project alpha" and test_mail["To"] == "desk@example.org"
    shot(page, "03-smtp-test")

    # Update: the settings go through settings.set (secrets sealed by the console), the limit too.
    version = store.get_project("alpha").settings_version
    page.click("#update")
    page.wait_for_selector("#update-result li")
    result = page.inner_text("#update-result")
    assert re.search(r"Mail service settings: done", result), result
    project = store.get_project("alpha")
    assert project.per_day == 10 and project.settings_version == version + 1
    assert b"s3cret-Pa55" not in (project.secrets or b"") and "s3cret-Pa55" not in str(project.settings)

    # 25 mails over a limit of 10: 10 go, 15 wait in the backlog.
    ids = [publisher.publish(event("alpha", subject=f"Ticket #{i:02d}")) for i in range(25)]
    wait_until(lambda: states(store, ids).count("sent") == 10 and states(store, ids).count("backlog") == 15, 30)
    assert len(peer.wait_for(11)) == 11
    page.goto("/backlog")
    assert page.inner_text("#total") == "15 mail(s) match"
    assert page.locator("input.pick").count() == 15
    shot(page, "04-backlog")

    # Select 3 and Resume: the confirmation tells the quota, and exactly those 3 arrive.
    boxes = page.locator("input.pick")
    chosen = [boxes.nth(i).get_attribute("value") for i in range(3)]
    for i in range(3):
        boxes.nth(i).check()
    assert page.inner_text("#selected-count") == "3 selected"
    page.click("button.act[data-action='backlog.resume']")
    confirm = page.inner_text("#confirm .confirm")
    assert "Resume 3 mail(s)?" in confirm
    assert "project alpha: takes 3 of today's quota; 10 sent so far today of 10, so 13 of 10 after" in confirm
    shot(page, "05-backlog-confirm")
    page.click("#confirm-apply")
    page.wait_for_selector("#confirm .job[data-state=passed]", timeout=30_000)
    assert "3 mail(s) done" in page.inner_text("#confirm")
    shot(page, "06-backlog-resumed")
    wait_until(lambda: states(store, chosen) == ["sent"] * 3, 30)
    peer.wait_for(14)
    assert delivered_ids(peer) >= {message_id(store, i) for i in chosen}
    assert states(store, ids).count("backlog") == 12

    # Suspend 2: they are listed under Suspended Mails.
    page.goto("/backlog?project=alpha")
    assert page.inner_text("#total") == "12 mail(s) match"
    suspended = [page.locator("input.pick").nth(i).get_attribute("value") for i in (0, 1)]
    for i in (0, 1):
        page.locator("input.pick").nth(i).check()
    page.click("button.act[data-action='backlog.suspend']")
    assert "Suspend 2 mail(s)?" in page.inner_text("#confirm .confirm")
    assert "quota" not in page.inner_text("#confirm .confirm")
    page.click("#confirm-apply")
    page.wait_for_selector("#confirm .job[data-state=passed]", timeout=30_000)
    page.goto("/suspended")
    assert sorted(page.locator("input.pick").evaluate_all("els => els.map(e => e.value)")) == sorted(suspended)
    shot(page, "07-suspended")

    # Auto Resume on and the limit raised: the rest of the backlog drains, the suspended two never go.
    page.goto("/projects/alpha/smtp")
    page.check("input[name=auto_resume]")
    page.fill("input[name='limits.per_day']", "100")
    page.click("#update")
    page.wait_for_selector("#update-result li")
    assert "Auto Resume: done" in page.inner_text("#update-result")
    wait_until(lambda: states(store, ids).count("sent") == 23, 30)
    peer.wait_for(24)
    assert states(store, suspended) == ["suspended"] * 2
    assert not delivered_ids(peer) & {message_id(store, i) for i in suspended}
    assert store.get_project("alpha").paused_reason is None
    page.goto("/backlog")
    assert page.inner_text("#total") == "0 mail(s) match"

    # The other screens render, and the audit names the console user behind each change.
    for path, name in (("/", "08-projects-after"), ("/failed", "09-failed"), ("/ambiguous", "10-ambiguous"),
                       (f"/mail/{chosen[0]}", "11-mail"), ("/global", "12-global-settings")):
        page.goto(path)
        shot(page, name)
    page.goto(f"/mail/{chosen[0]}")
    assert "sent" in page.inner_text("dl.facts")
    assert "250" in page.inner_text("table.attempts")
    assert re.search(r"Subject\tTicket #\d\d", page.inner_text("table.headers"))
    page.goto("/audit?actor=console:ada")
    audit = page.locator("table.list tbody tr").all_inner_texts()
    assert sum("backlog.resume" in r for r in audit) == 1 and sum("backlog.suspend" in r for r in audit) == 1
    assert all("console:ada" in r for r in audit)
    shot(page, "13-audit")
    assert violations == []


def backlog_of(store, subjects: list[str]) -> list[str]:
    """Mails put straight into the backlog (no pipeline needed to show or suspend them)."""
    ids = []
    for subject in subjects:
        ev = event("alpha", subject=subject)
        store.admit(ev, priority=1, recipients=1)
        ids.append(ev["event_id"])
    with store.pool.connection() as conn:
        conn.execute("UPDATE mail SET state = 'backlog', reason = 'daily_limit'")
    return ids


def test_all_matching_selects_past_the_page_and_the_bulk_action_shows_its_progress(store, worker, console, browser):
    printers = backlog_of(store, [f"printer jam {i}" for i in range(60)])
    others = backlog_of(store, [f"network down {i}" for i in range(5)])
    worker()
    page = login(browser, console, ADMIN)
    page.goto("/backlog?text=PRINTER")
    assert page.inner_text("#total") == "60 mail(s) match" and page.locator("input.pick").count() == 50
    assert page.locator("#select-matching").is_hidden()
    page.check("#select-page")
    assert page.inner_text("#selected-count") == "50 selected"
    page.click("#select-matching")
    assert page.inner_text("#selected-count") == "all 60 matching selected"
    page.click("button.act[data-action='backlog.suspend']")
    assert "Suspend 60 mail(s) (all matching)?" in page.inner_text("#confirm .confirm")
    page.click("#confirm-apply")
    page.wait_for_selector("#confirm .job[data-state=passed]", timeout=30_000)
    assert page.locator("#confirm progress").get_attribute("value") == "60"
    shot(page, "15-backlog-bulk-done")
    assert states(store, printers) == ["suspended"] * 60
    assert states(store, others) == ["backlog"] * 5


def test_a_viewer_sees_the_backlog_but_cannot_resume(runtime, store, console, browser):
    backlog_of(store, ["one waiting mail"])
    page = login(browser, console, VIEWER)
    page.goto("/backlog")
    assert page.inner_text("#total") == "1 mail(s) match"
    assert page.locator("button.act").count() == 0
    assert page.locator("input.pick").first.is_disabled()
    csrf = page.locator("#selection input[name=csrf]").get_attribute("value")
    first = store.console_mail_page("backlog", {})[0]["event_id"]
    refused = page.request.post("/mails/confirm", form={"csrf": csrf, "action": "backlog.resume", "ids": str(first)})
    assert refused.status == 403 and "viewer" in refused.text()
    shot(page, "14-backlog-as-viewer")


def test_a_form_posted_without_its_csrf_token_is_refused(runtime, store, console, browser):
    page = login(browser, console, ADMIN)
    refused = page.request.post("/global", form={"per_day": "5"})
    assert refused.status == 403 and "security token" in refused.text()
    forged = page.request.post("/global", form={"per_day": "5", "csrf": "forged"})
    assert forged.status == 403
    assert store.global_limits().per_day is None
    assert store.console_audit() == []


def test_the_login_page_and_every_response_carry_the_security_headers(console, browser):
    context = browser.new_context(base_url=console)
    page = context.new_page()
    answer = page.goto("/backlog")
    assert page.url.startswith(console + "/login")
    csp = answer.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    shot(page, "00-login")
    page.fill("input[name=username]", ADMIN)
    page.fill("input[name=password]", "correct horse battery")
    page.click("button[type=submit]")
    cookie = next(c for c in context.cookies() if c["name"] == "__Host-deskmail-session")
    assert cookie["httpOnly"] and cookie["secure"] and cookie["sameSite"] == "Strict"


def test_update_after_a_failing_test_saves_nothing_and_says_what_to_change(runtime, store, worker, peer, tls_ca,
                                                                          console, browser):
    runtime.settings.save("alpha", smtp_settings(peer, tls_ca.ca_path, per_day=10))
    worker()
    page = login(browser, console, ADMIN)
    page.goto("/projects/alpha/smtp")
    page.fill("input[name='smtp.password']", "a wrong password")
    page.fill("input[name='limits.per_day']", "50")
    page.check("input[name=test_first]")
    page.click("#update")
    page.wait_for_selector("#update-result .job[data-state=failed]", timeout=30_000)
    failed = page.inner_text("#update-result li.step.failed")
    assert "authentication" in failed and "What to change:" in failed
    assert "FAILED at authentication; nothing was updated" in page.inner_text("#update-result")
    shot(page, "16-smtp-test-failed")
    assert store.get_project("alpha").per_day == 10
    assert peer.messages == []


def test_settings_the_schema_refuses_are_shown_in_the_page_and_not_tested(runtime, store, peer, tls_ca, console,
                                                                          browser):
    runtime.settings.save("alpha", smtp_settings(peer, tls_ca.ca_path))
    page = login(browser, console, ADMIN)
    page.goto("/projects/alpha/smtp")
    page.fill("input[name='smtp.host']", "")
    page.click("#test")
    page.wait_for_selector("#test-result .notice.bad")
    assert "smtp.host" in page.inner_text("#test-result")
    page.select_option("select[name=mail_service]", "exchange")
    page.wait_for_selector("input[name='exchange.ews_url']")
    assert page.inner_text("#service-fields legend") == "Exchange"
    assert page.locator("label.secret .tag").first.inner_text() == "not set"
    shot(page, "17-smtp-settings-exchange")
    assert peer.messages == []


def test_failed_mails_are_retried_and_ambiguous_ones_resent_or_closed(runtime, store, worker, peer, tls_ca, console,
                                                                      browser):
    runtime.settings.save("alpha", smtp_settings(peer, tls_ca.ca_path))
    failed = backlog_of(store, ["failed once"])
    ambiguous = backlog_of(store, ["maybe delivered", "surely delivered"])
    with store.pool.connection() as conn:
        conn.execute("UPDATE mail SET state = 'failed', detail = '554 5.7.1 rejected' WHERE event_id = %s",
                     (failed[0],))
        conn.execute("UPDATE mail SET state = 'ambiguous', detail = 'no reply after DATA' "
                     "WHERE event_id = ANY(%s)", (ambiguous,))
    worker()
    page = login(browser, console, ADMIN)
    for path, action, box, name in (("/failed", "failed.retry", 0, "18-failed-retry"),
                                    ("/ambiguous", "ambiguous.close", 1, "19-ambiguous-close"),
                                    ("/ambiguous", "ambiguous.resend", 0, None)):
        page.goto(path)
        page.locator("input.pick").nth(box).check()
        page.click(f"button.act[data-action='{action}']")
        page.click("#confirm-apply")
        page.wait_for_selector("#confirm .job[data-state=passed]", timeout=30_000)
        if name:
            shot(page, name)
    wait_until(lambda: states(store, failed + ambiguous) == ["sent"] * 3, 30)
    assert {m.message["Subject"] for m in peer.wait_for(2)} == {"failed once", "maybe delivered"}
    assert len(peer.messages) == 2  # the closed one was marked sent, not sent again
