"""The SMTP reply table: every non-success reply of every SMTP route is classified here, first match wins.

Provider rows come first (notes on what Exchange Online and Gmail answer, checked December 2026); the generic
rows below them keep RFC 5321's rule: 4xx transient, 5xx permanent.
"""

from __future__ import annotations

import re

from deskmail.workers.transports.base import Outcome
from deskmail.workers.transports.replies import Rule, Scope, first

MICROSOFT, GOOGLE = "Exchange Online", "Gmail"
_NO_BASIC = "the provider no longer accepts passwords (Basic authentication) here: use the exchange_oauth2 " \
            "service for Microsoft 365, or OAuth2 for this provider"
_BLOCKED = "Microsoft has blocked this sender or tenant; only Microsoft support can unblock it: stop sending and " \
           "open a support request"
_THROTTLED = "Exchange Online blocks the mailbox from SMTP AUTH for a while after repeated identical errors; " \
             "sending again now prolongs the block for every sender on the mailbox"

RULES: tuple[Rule, ...] = (
    # Exchange Online
    Rule("432", r"4\.3\.2", "concurrent connections", Outcome.TRANSIENT, Scope.SESSION,
         "Exchange Online takes at most 3 SMTP connections per mailbox: run fewer sending threads for it",
         MICROSOFT),
    Rule("5", r"5\.7\.139", "", Outcome.CONFIGURATION, Scope.ACCOUNT,
         "SMTP AUTH is disabled for the tenant or the mailbox (often by Security Defaults): use the "
         "exchange_oauth2 service with route graph, or have SMTP AUTH enabled for the mailbox", MICROSOFT),
    Rule("5", r"5\.7\.30", "", Outcome.CONFIGURATION, Scope.ACCOUNT, _NO_BASIC, MICROSOFT),
    Rule("", "", "basic auth", Outcome.CONFIGURATION, Scope.ACCOUNT, _NO_BASIC),
    Rule("5", r"5\.7\.57", "", Outcome.CONFIGURATION, Scope.ACCOUNT,
         "the server takes mail only from a logged-in account: set auth, username and password", MICROSOFT),
    Rule("5", r"5\.7\.23[23]", "", Outcome.QUOTA, Scope.TENANT,
         "the tenant's external recipient rate limit (shared by all its mailboxes) is used up for the rolling "
         "24 hours", MICROSOFT),
    Rule("5", r"5\.2\.252", "", Outcome.CONFIGURATION, Scope.ACCOUNT,
         "the account may not send as the from address: give it Send As rights, or use its own address",
         MICROSOFT),
    Rule("5", r"5\.2\.253", "", Outcome.CONFIGURATION, Scope.ACCOUNT,
         "the mailbox has no licence that allows sending: assign one in Microsoft 365", MICROSOFT),
    Rule("5", r"5\.2\.25[1-5]", "", Outcome.QUOTA, Scope.ACCOUNT, _THROTTLED, MICROSOFT),
    Rule("5", r"5\.2\.0", "submissionquotaexceeded", Outcome.QUOTA, Scope.ACCOUNT,
         "the mailbox's sending quota is used up; wait until it resets", MICROSOFT),
    Rule("5", r"5\.1\.90", "", Outcome.QUOTA, Scope.ACCOUNT,
         "the mailbox reached its daily limit of message recipients", MICROSOFT),
    Rule("5", r"5\.7\.(705|708|750)", "", Outcome.CONFIGURATION, Scope.TENANT, _BLOCKED, MICROSOFT),
    Rule("550", r"5\.1\.8", "", Outcome.CONFIGURATION, Scope.ACCOUNT, _BLOCKED, MICROSOFT),
    Rule("451", r"4\.7\.[56]\d\d", "", Outcome.TRANSIENT, Scope.ACCOUNT,
         "Exchange Online suspects unusual activity on the account: wait a long while before sending again",
         MICROSOFT),
    # Gmail and Google Workspace's SMTP relay
    Rule("5", "", r"daily smtp relay limit exceeded", Outcome.QUOTA, Scope.TENANT,
         "the Workspace SMTP relay's daily limit is used up; it frees within 24 hours", GOOGLE),
    Rule("4", r"4\.2\.1", r"peak smtp relay limit", Outcome.TRANSIENT, Scope.TENANT,
         "the Workspace SMTP relay is over its peak rate; send slower", GOOGLE),
    Rule("4", r"4\.2\.1", r"receiving mail too quickly", Outcome.TRANSIENT, Scope.RECIPIENT,
         "the recipient's mailbox takes mail slower; it is tried again later", GOOGLE),
    Rule("454", r"4\.7\.0", r"too many login attempts", Outcome.TRANSIENT, Scope.ACCOUNT,
         "Gmail saw too many logins; wait before trying again", GOOGLE),
    Rule("535", r"5\.7\.8", "", Outcome.CONFIGURATION, Scope.ACCOUNT,
         "check username and password (Gmail needs an app password, or the gmail_oauth2 service)", GOOGLE),
    # Generic: the provider's own quota, account refusals, then RFC 5321's classes
    Rule("", r"[45]\.4\.5", "", Outcome.QUOTA, Scope.ACCOUNT,
         "the provider's sending quota for this account is used up; wait until it resets"),
    Rule("", r"4\.5\.3", "", Outcome.QUOTA, Scope.MAIL,
         "the provider takes fewer recipients per mail or per window; wait, or lower recipients_per_mail"),
    Rule("", "", r"submissionquotaexceeded|daily user sending limit|sending limit exceeded|quota exceeded",
         Outcome.QUOTA, Scope.ACCOUNT, "the provider's sending quota for this account is used up; wait until it "
                                       "resets"),
    Rule("", r"5\.7\.8", "", Outcome.CONFIGURATION, Scope.ACCOUNT, ""),
    Rule("530", "", "", Outcome.CONFIGURATION, Scope.ACCOUNT, ""),
    Rule("534", "", "", Outcome.CONFIGURATION, Scope.ACCOUNT, ""),
    Rule("535", "", "", Outcome.CONFIGURATION, Scope.ACCOUNT, ""),
    Rule("538", "", "", Outcome.CONFIGURATION, Scope.ACCOUNT, ""),
    Rule("4", "", "", Outcome.TRANSIENT, Scope.MAIL, ""),
    Rule("", "", "", Outcome.PERMANENT, Scope.MAIL, ""),
)

_ENHANCED = re.compile(r"(?<![\d.])([245]\.\d{1,3}\.\d{1,3})(?![\d.])")


def enhanced_status(text: str) -> str:
    """The RFC 3463 enhanced status code in a reply's text (e.g. 5.7.139), or ""."""
    found = _ENHANCED.search(text)
    return found.group(1) if found else ""


def rule_for(code: int, text: str) -> Rule:
    """The row that says what an SMTP reply means."""
    return first(RULES, str(code), enhanced_status(text), text)


def classify(code: int, text: str) -> Outcome:
    """The outcome class of an SMTP reply that is not a success."""
    return rule_for(code, text).outcome
