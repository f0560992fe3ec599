"""The EWS answer table: each ResponseCode family gets its outcome, and every row is reachable."""

from __future__ import annotations

import pytest

from deskmail.workers.transports.base import Outcome
from deskmail.workers.transports.ews_replies import RULES, rule_for
from deskmail.workers.transports.replies import Scope

ANSWERS = [  # (ResponseCode, text, outcome, scope, step)
    ("ErrorQuotaExceeded", "", Outcome.QUOTA, Scope.ACCOUNT, ""),
    ("", "STOREDRV.Submission.Exception:SubmissionQuotaExceededException", Outcome.QUOTA, Scope.ACCOUNT, ""),
    ("ErrorSendAsDenied", "not allowed", Outcome.CONFIGURATION, Scope.ACCOUNT, "sender"),
    ("ErrorImpersonateUserDenied", "", Outcome.CONFIGURATION, Scope.ACCOUNT, "sender"),
    ("ErrorInvalidRecipients", "At least one recipient isn't valid.", Outcome.PERMANENT, Scope.RECIPIENT, ""),
    ("ErrorServerBusy", "busy", Outcome.TRANSIENT, Scope.SESSION, ""),
    ("ErrorMailboxMoveInProgress", "", Outcome.TRANSIENT, Scope.SESSION, ""),
    ("ErrorItemSave", "could not save", Outcome.PERMANENT, Scope.MAIL, ""),
]


@pytest.mark.parametrize("code, text, outcome, scope, step", ANSWERS, ids=[a[0] or a[1][:20] for a in ANSWERS])
def test_each_ews_answer_gets_its_outcome_scope_and_step(code, text, outcome, scope, step):
    rule = rule_for(code, text)
    assert (rule.outcome, rule.scope, rule.step) == (outcome, scope, step)


def test_every_row_of_the_ews_table_is_the_first_match_for_some_answer():
    hit = {rule_for(code, text) for code, text, *_ in ANSWERS}
    assert [rule for rule in RULES if rule not in hit] == []


def test_a_code_is_matched_whole_not_as_a_prefix():
    assert rule_for("ErrorServerBusyElsewhere", "").outcome is Outcome.PERMANENT
