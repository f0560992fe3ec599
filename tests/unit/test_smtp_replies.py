"""The SMTP reply table: every row is reachable, provider answers mean what their notes say, RFC 5321 classes."""

from __future__ import annotations

import pytest

from deskmail.workers.transports.base import Outcome
from deskmail.workers.transports.replies import Scope
from deskmail.workers.transports.smtp_replies import RULES, classify, enhanced_status, rule_for

ANSWERS = [  # (code, text, outcome, scope), the answers providers document (notes/providers.md)
    (432, "432 4.3.2 Concurrent connections limit exceeded.", Outcome.TRANSIENT, Scope.SESSION),
    (535, "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant.",
     Outcome.CONFIGURATION, Scope.ACCOUNT),
    (550, "550 5.7.30 Basic authentication is not supported for Client Submission.", Outcome.CONFIGURATION,
     Scope.ACCOUNT),
    (530, "530 5.7.57 Client was not authenticated to send anonymous mail during MAIL FROM",
     Outcome.CONFIGURATION, Scope.ACCOUNT),
    (550, "550 5.7.233 tenant exceeded its external recipient rate limit", Outcome.QUOTA, Scope.TENANT),
    (550, "550 5.7.232 trial tenant exceeded its limit", Outcome.QUOTA, Scope.TENANT),
    (554, "554 5.2.252 SendAsDenied; desk@example.org not allowed to send as x@example.org",
     Outcome.CONFIGURATION, Scope.ACCOUNT),
    (550, "550 5.2.253 no licence", Outcome.CONFIGURATION, Scope.ACCOUNT),
    (550, "550 5.2.251 mailbox full, sending blocked", Outcome.QUOTA, Scope.ACCOUNT),
    (550, "550 5.2.255 invalid recipients, sending blocked", Outcome.QUOTA, Scope.ACCOUNT),
    (554, "554 5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException", Outcome.QUOTA,
     Scope.ACCOUNT),
    (550, "550 5.1.90 Your message can't be sent because you've reached your daily limit for message recipients",
     Outcome.QUOTA, Scope.ACCOUNT),
    (550, "550 5.7.708 Service unavailable. Access denied, traffic not accepted from this IP", Outcome.CONFIGURATION,
     Scope.TENANT),
    (550, "550 5.1.8 Access denied, bad outbound sender", Outcome.CONFIGURATION, Scope.ACCOUNT),
    (451, "451 4.7.500 Server busy. Please try again later", Outcome.TRANSIENT, Scope.ACCOUNT),
    (550, "550 5.4.5 Daily user sending limit exceeded.", Outcome.QUOTA, Scope.ACCOUNT),
    (550, "550 5.4.5 Daily SMTP relay limit exceeded for user", Outcome.QUOTA, Scope.TENANT),
    (550, "550 5.7.1 Daily SMTP relay limit exceeded for customer", Outcome.QUOTA, Scope.TENANT),
    (450, "450 4.2.1 Peak SMTP relay limit exceeded for customer", Outcome.TRANSIENT, Scope.TENANT),
    (450, "450 4.2.1 The user you are trying to contact is receiving mail too quickly", Outcome.TRANSIENT,
     Scope.RECIPIENT),
    (452, "452 4.5.3 Your message has too many recipients.", Outcome.QUOTA, Scope.MAIL),
    (454, "454 4.7.0 Too many login attempts, please try again later.", Outcome.TRANSIENT, Scope.ACCOUNT),
    (535, "535 5.7.8 Username and Password not accepted.", Outcome.CONFIGURATION, Scope.ACCOUNT),
    (421, "421 4.7.0 Try again later, closing connection.", Outcome.TRANSIENT, Scope.MAIL),
    (451, "451 4.3.0 try later", Outcome.TRANSIENT, Scope.MAIL),
    (550, "550 5.1.1 no such user", Outcome.PERMANENT, Scope.MAIL),
    (534, "534 5.7.9 Application-specific password required", Outcome.CONFIGURATION, Scope.ACCOUNT),
    (552, "552 quota exceeded for this account", Outcome.QUOTA, Scope.ACCOUNT),
    (554, "554 no enhanced status at all", Outcome.PERMANENT, Scope.MAIL),
    (535, "535 Basic authentication is disabled here", Outcome.CONFIGURATION, Scope.ACCOUNT),
    (554, "554 5.7.8 Authentication credentials invalid", Outcome.CONFIGURATION, Scope.ACCOUNT),
    (530, "530 Authentication required", Outcome.CONFIGURATION, Scope.ACCOUNT),
    (535, "535 Authentication failed", Outcome.CONFIGURATION, Scope.ACCOUNT),
    (538, "538 Encryption required for requested authentication mechanism", Outcome.CONFIGURATION,
     Scope.ACCOUNT),
]


@pytest.mark.parametrize("code, text, outcome, scope", ANSWERS, ids=[a[1][:40] for a in ANSWERS])
def test_each_documented_answer_gets_its_outcome_and_scope(code, text, outcome, scope):
    rule = rule_for(code, text)
    assert (rule.outcome, rule.scope) == (outcome, scope)
    assert classify(code, text) is outcome


def test_every_row_of_the_table_is_the_first_match_for_some_answer():
    hit = {rule_for(code, text) for code, text, _, _ in ANSWERS}
    assert [rule for rule in RULES if rule not in hit] == []


def test_every_provider_row_says_what_to_change():
    assert all(rule.advice for rule in RULES if rule.provider)


def test_the_enhanced_status_is_read_from_the_text_not_from_the_code():
    assert enhanced_status("550 5.7.139 Authentication unsuccessful") == "5.7.139"
    assert enhanced_status("250 2.0.0 OK 1.2.3.4.5") == "2.0.0"
    assert enhanced_status("550 no status 10.0.0.1") == ""


def test_an_answer_that_names_a_quota_only_in_another_status_is_not_taken_for_one():
    assert rule_for(550, "550 5.7.1 relaying denied").outcome is Outcome.PERMANENT
