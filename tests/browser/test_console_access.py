"""Console access: accounts from the command line, login throttling, sessions that end, where it listens."""

from __future__ import annotations

import io

import pytest

from deskmail.producers.cli import main
from deskmail.producers.console.auth import MAX_FAILURES_PER_USER, token_hash
from tests.browser.conftest import ADMIN, PASSWORD, login

pytestmark = pytest.mark.integration


@pytest.fixture
def cli(runtime, monkeypatch, capsys):
    """Run `deskmail ...` on the test database; returns (exit status, stdout, stderr)."""
    monkeypatch.setenv("DESKMAIL_DATABASE_URL", runtime.config.database_url)
    monkeypatch.setenv("DESKMAIL_AMQP_URL", runtime.config.amqp_url)

    def run(*argv: str, stdin: str = "") -> tuple[int, str, str]:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
        status = main(list(argv))
        out = capsys.readouterr()
        return status, out.out, out.err
    return run


def test_console_users_are_added_with_an_argon2_hash_and_audited(cli, store):
    assert cli("console-user", "add", "bob", "--role", "viewer", "--password-stdin", stdin="a long password\n")[0] == 0
    user = store.console_user("bob")
    assert user.role == "viewer" and user.password_hash.startswith("$argon2id$")
    assert "a long password" not in user.password_hash
    assert cli("console-user", "add", "bob", "--role", "admin", "--password-stdin", stdin="another password\n")[0] == 1
    status, _, err = cli("console-user", "add", "eve", "--role", "admin", "--password-stdin", stdin="short\n")
    assert status == 2 and "at least 12 characters" in err
    assert [(a["actor"].startswith("cli:"), a["action"]) for a in store.console_audit()] == [
        (True, "console_user.add")]


def test_a_new_password_ends_the_users_sessions_and_removal_ends_the_account(cli, store):
    cli("console-user", "add", "bob", "--role", "admin", "--password-stdin", stdin="a long password\n")
    store.add_console_session(token_hash("tok"), "bob", "csrf", "password", 3600)
    assert store.console_session(token_hash("tok")).role == "admin"
    assert cli("console-user", "passwd", "bob", "--password-stdin", stdin="a new long password\n")[0] == 0
    assert store.console_session(token_hash("tok")) is None
    assert cli("console-user", "remove", "bob")[0] == 0
    assert store.console_user("bob") is None
    assert cli("console-user", "remove", "bob")[0] == 1


def test_the_console_refuses_plain_http_on_a_network_address(cli):
    status, _, err = cli("console", "--host", "0.0.0.0")
    assert status == 2 and "refusing to serve the console over plain HTTP on 0.0.0.0" in err


def test_logins_are_throttled_after_repeated_failures_even_with_the_right_password(console, browser, store):
    context = browser.new_context(base_url=console)
    page = context.new_page()
    for _ in range(MAX_FAILURES_PER_USER):
        page.goto("/login")
        page.fill("input[name=username]", ADMIN)
        page.fill("input[name=password]", "wrong password")
        page.click("button[type=submit]")
        assert "Wrong user name or password." in page.inner_text(".notice")
    page.goto("/login")
    page.fill("input[name=username]", ADMIN)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    assert "Too many failed logins" in page.inner_text(".notice")
    assert page.url.startswith(console + "/login")
    assert not [c for c in context.cookies() if c["name"] == "__Host-deskmail-session"]


def test_logging_out_ends_the_session_on_the_server(console, browser, store):
    page = login(browser, console, ADMIN)
    token = next(c["value"] for c in page.context.cookies() if c["name"] == "__Host-deskmail-session")
    assert store.console_session(token_hash(token)) is not None
    page.click("text=Log out")
    page.wait_for_url(console + "/login")
    assert store.console_session(token_hash(token)) is None
