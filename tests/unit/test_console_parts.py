"""The console's pure parts: where it may listen, the settings form, which actions it may send."""

from __future__ import annotations

import pytest

from deskmail.producers.console import fields
from deskmail.producers.console.actions import available
from deskmail.producers.console.config import ConsoleConfig, UnsafeListen, is_loopback
from deskmail.producers.console.views.login import _next


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.7", "::", "console.example.org"])
def test_plain_http_on_a_network_address_is_refused(host):
    with pytest.raises(UnsafeListen, match="DESKMAIL_CONSOLE_BEHIND_TLS_PROXY"):
        ConsoleConfig(host=host).check_listen()


@pytest.mark.parametrize("config", [ConsoleConfig(host="127.0.0.1"), ConsoleConfig(host="::1"),
                                    ConsoleConfig(host="localhost"),
                                    ConsoleConfig(host="0.0.0.0", behind_tls_proxy=True),
                                    ConsoleConfig(host="0.0.0.0", tls_cert="c.pem", tls_key="k.pem")])
def test_loopback_tls_or_a_declared_tls_proxy_may_listen(config):
    config.check_listen()


def test_the_behind_a_proxy_setting_reads_from_the_environment():
    assert ConsoleConfig.from_env({"DESKMAIL_CONSOLE_BEHIND_TLS_PROXY": "1"}).behind_tls_proxy
    assert not ConsoleConfig.from_env({}).behind_tls_proxy
    assert not is_loopback("127.0.0.1.example.org")


SAVED = {"mail_service": "smtp", "from_address": "desk@example.org",
         "smtp": {"host": "mail.example.org", "port": 587, "username": "desk", "password": "old-secret"}}


def test_a_blank_secret_field_keeps_the_saved_secret_and_a_typed_one_replaces_it():
    form = {"mail_service": "smtp", "from_address": "desk@example.org", "smtp.host": "mail.example.org",
            "smtp.port": "587", "smtp.username": "desk", "smtp.password": "", "smtp.verify_certificate": "1"}
    assert fields.document(form, SAVED)["smtp"]["password"] == "old-secret"
    assert fields.document(form | {"smtp.password": "new-secret"}, SAVED)["smtp"]["password"] == "new-secret"
    assert "password" not in fields.document(form, None)["smtp"]


def test_an_unchecked_box_whose_default_is_on_turns_it_off():
    form = {"mail_service": "smtp", "from_address": "desk@example.org", "smtp.host": "h", "smtp.port": "25"}
    assert fields.document(form, None)["smtp"]["verify_certificate"] is False
    assert "autodiscover" not in fields.document({"mail_service": "exchange", "from_address": "a@b.c"}, None).get(
        "exchange", {})


def test_numbers_limits_and_bad_values_in_the_form():
    form = {"mail_service": "smtp", "from_address": "desk@example.org", "smtp.host": "h", "smtp.port": "2525",
            "smtp.timeout_seconds": "7.5", "limits.per_day": "10"}
    doc = fields.document(form, None)
    assert doc["smtp"]["port"] == 2525 and doc["smtp"]["timeout_seconds"] == 7.5
    assert doc["limits"] == {"per_day": 10, "recipients_per_mail": None}
    with pytest.raises(fields.FormProblem, match="smtp.port: must be a whole number"):
        fields.document(form | {"smtp.port": "twenty"}, None)
    with pytest.raises(fields.FormProblem, match="choose a mail service"):
        fields.document({"mail_service": "carrier-pigeon"}, None)


def test_every_mail_service_has_its_fields_with_secrets_marked():
    by_service = fields.service_fields()
    assert list(by_service) == ["smtp", "exchange", "exchange_oauth2", "gmail_oauth2"]
    secrets = {f.name for fs in by_service.values() for f in fs if f.kind.startswith("secret")}
    assert secrets == {"smtp.password", "exchange.password", "exchange_oauth2.client_secret",
                       "exchange_oauth2.certificate.private_key", "gmail_oauth2.service_account_key",
                       "gmail_oauth2.client_secret", "gmail_oauth2.refresh_token"}


def test_saved_settings_show_their_values_and_only_the_names_of_their_secrets():
    values, secrets = fields.shown_values({"mail_service": "smtp", "smtp": {"host": "h"},
                                           "secret_names": ["smtp.password"]})
    assert values == {"mail_service": "smtp", "smtp.host": "h"} and secrets == {"smtp.password"}


def test_the_console_sends_only_actions_the_control_worker_knows():
    for action in ("backlog.resume", "backlog.suspend", "suspended.resume", "failed.retry", "ambiguous.resend",
                   "ambiguous.close", "limits.set", "auto_resume.set", "settings.set"):
        assert available(action), action
    assert not available("no.such") and not available("backlog.delete")


@pytest.mark.parametrize("raw, expected", [("/backlog", "/backlog"), ("//evil.example", "/"),
                                           ("https://evil.example/", "/"), ("/\\evil", "/"), (None, "/")])
def test_after_login_the_console_goes_only_to_its_own_pages(raw, expected):
    assert _next(raw) == expected
