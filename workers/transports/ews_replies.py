"""The EWS answer table: every ResponseCode a CreateItem (or the SOAP layer) answers is classified here.

Rows match EWS's ResponseCode (the enhanced column, a regex the whole code must match) and the answer's words;
first match wins. Sender refusals fail the sender step; codes that say "busy" or "moving" are passing.
"""

from __future__ import annotations

from deskmail.workers.transports.base import Outcome
from deskmail.workers.transports.replies import Rule, Scope, first
from deskmail.workers.transports.steps import SENDER

EXCHANGE = "Exchange"
_SENDERS = "|".join((
    "ErrorNonExistentMailbox", "ErrorSendAsDenied", "ErrorImpersonateUserDenied", "ErrorImpersonationDenied",
    "ErrorImpersonationFailed", "ErrorAccessDenied", "ErrorNonPrimarySmtpAddress", "ErrorAccountDisabled",
    "ErrorInvalidExchangeImpersonationHeaderData", "ErrorMailboxLogonFailed", "ErrorCreateItemAccessDenied",
    "ErrorInvalidSmtpAddress", "ErrorMailboxConfiguration"))
_RECIPIENTS = "ErrorInvalidRecipients|ErrorMailRecipientNotFound|ErrorMissingRecipients"
_PASSING = "|".join((
    "ErrorServerBusy", "ErrorInternalServerTransientError", "ErrorInternalServerError", "ErrorTimeoutExpired",
    "ErrorMailboxStoreUnavailable", "ErrorMailboxMoveInProgress", "ErrorMailboxFailover", "ErrorADUnavailable",
    "ErrorTooManyObjectsOpened", "ErrorExceededConnectionCount", "ErrorConnectionFailed",
    "ErrorConnectionFailedTransientError"))

RULES: tuple[Rule, ...] = (
    Rule("", "ErrorQuotaExceeded|ErrorSubmissionQuotaExceeded", "", Outcome.QUOTA, Scope.ACCOUNT,
         "the mailbox's sending quota is used up; wait until it frees", EXCHANGE),
    Rule("", "", "SubmissionQuotaExceeded", Outcome.QUOTA, Scope.ACCOUNT,
         "the mailbox's sending quota is used up; wait until it frees", EXCHANGE),
    Rule("", _SENDERS, "", Outcome.CONFIGURATION, Scope.ACCOUNT, "", EXCHANGE, SENDER),
    Rule("", _RECIPIENTS, "", Outcome.PERMANENT, Scope.RECIPIENT, "", EXCHANGE),
    Rule("", _PASSING, "", Outcome.TRANSIENT, Scope.SESSION, "", EXCHANGE),
    Rule("", "", "", Outcome.PERMANENT, Scope.MAIL, "", EXCHANGE),
)


def rule_for(code: str, text: str) -> Rule:
    """The row that says what an EWS answer (its ResponseCode, or "" for none) means."""
    return first(RULES, "", code, text)
