"""The Graph answer table: every row is reachable and Graph's documented answers mean what the notes say."""

from __future__ import annotations

import pytest

from deskmail.workers.transports.base import Outcome
from deskmail.workers.transports.graph_replies import RULES, rule_for
from deskmail.workers.transports.replies import Scope

ANSWERS = [  # (status, error code, message, outcome, scope, step)
    (403, "ErrorExceededMessageLimit", "Quota exceeded", Outcome.QUOTA, Scope.ACCOUNT, ""),
    (429, "ApplicationThrottled", "Application is over its MailboxConcurrency limit.", Outcome.TRANSIENT,
     Scope.ACCOUNT, ""),
    (503, "ResourceUnhealthy", "the mailbox server is unhealthy", Outcome.TRANSIENT, Scope.ACCOUNT, ""),
    (429, "TooManyRequests", "slow down", Outcome.TRANSIENT, Scope.ACCOUNT, ""),
    (504, "", "Gateway Timeout", Outcome.TRANSIENT, Scope.SESSION, ""),
    (413, "RequestEntityTooLarge", "request too large", Outcome.PERMANENT, Scope.MAIL, ""),
    (401, "InvalidAuthenticationToken", "Access token validation failure.", Outcome.CONFIGURATION, Scope.ACCOUNT,
     "authentication"),
    (404, "MailboxNotEnabledForRESTAPI", "The mailbox is either inactive, soft-deleted, or is hosted on-premise.",
     Outcome.CONFIGURATION, Scope.ACCOUNT, "sender"),
    (403, "ErrorAccessDenied", "Blocked by tenant configured AppOnly AccessPolicy settings.",
     Outcome.CONFIGURATION, Scope.ACCOUNT, "sender"),
    (403, "ErrorSendAsDenied", "The user account which was used to submit this request does not have the right",
     Outcome.CONFIGURATION, Scope.ACCOUNT, "sender"),
    (400, "ErrorInvalidRecipients", "At least one recipient isn't valid.", Outcome.PERMANENT, Scope.MAIL, ""),
]


@pytest.mark.parametrize("status, code, message, outcome, scope, step", ANSWERS, ids=[a[1] for a in ANSWERS])
def test_each_documented_graph_answer_gets_its_outcome_scope_and_step(status, code, message, outcome, scope, step):
    rule = rule_for(status, code, message)
    assert (rule.outcome, rule.scope, rule.step) == (outcome, scope, step)


def test_every_row_of_the_graph_table_is_the_first_match_for_some_answer():
    hit = {rule_for(status, code, message) for status, code, message, *_ in ANSWERS}
    assert [rule for rule in RULES if rule not in hit] == []


def test_every_configuration_row_says_what_to_change():
    assert all(rule.advice for rule in RULES if rule.outcome is Outcome.CONFIGURATION)
