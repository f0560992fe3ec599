"""Single sign-on to the console against a local OpenID Connect provider (code flow with PKCE)."""

from __future__ import annotations

import pytest

from deskmail.producers.console.config import ConsoleConfig
from tests.peers.oidc import CLIENT_ID, CLIENT_SECRET, OidcPeer

pytestmark = pytest.mark.integration


@pytest.fixture
def provider():
    with OidcPeer("olga@example.org") as p:
        yield p


@pytest.fixture
def console_config(provider):
    return ConsoleConfig(oidc_issuer=provider.issuer, oidc_client_id=CLIENT_ID, oidc_client_secret=CLIENT_SECRET)


def test_a_known_user_logs_in_with_single_sign_on_and_gets_the_role_of_their_account(store, provider, console,
                                                                                    browser):
    store.add_console_user("olga@example.org", None, "viewer")
    page = browser.new_context(base_url=console).new_page()
    page.goto("/login")
    page.click("text=Log in with single sign-on")
    page.wait_for_url(console + "/")
    assert "olga@example.org (viewer)" in page.inner_text("header")
    assert store.console_user("olga@example.org").password_hash is None


def test_someone_the_provider_knows_but_the_console_does_not_is_refused(store, provider, console, browser):
    page = browser.new_context(base_url=console).new_page()
    page.goto("/login")
    page.click("text=Log in with single sign-on")
    assert "olga@example.org has no console account" in page.inner_text("main")
    page.goto("/")
    assert page.url.startswith(console + "/login")


def test_a_replayed_callback_is_refused(store, provider, console, browser):
    store.add_console_user("olga@example.org", None, "admin")
    page = browser.new_context(base_url=console).new_page()
    callbacks = []
    page.on("request", lambda r: callbacks.append(r.url) if "/login/oidc/callback" in r.url else None)
    page.goto("/login")
    page.click("text=Log in with single sign-on")
    page.wait_for_url(console + "/")
    answer = browser.new_context(base_url=console).new_page().goto(callbacks[0])
    assert answer.status == 400


def test_a_callback_opened_in_another_browser_is_refused_and_the_login_still_works_where_it_began(
        store, provider, console, browser):
    store.add_console_user("olga@example.org", None, "admin")
    page = browser.new_context(base_url=console).new_page()
    provider.hold = True  # the provider shows the callback URL instead of following it
    page.goto("/login")
    page.click("text=Log in with single sign-on")
    held = [page.inner_text("#callback")]
    other = browser.new_context(base_url=console).new_page()
    assert other.goto(held[0]).status == 400
    assert "started in another browser" in other.inner_text("main")
    page.goto(held[0])
    page.wait_for_url(console + "/")
    assert "olga@example.org (admin)" in page.inner_text("header")
