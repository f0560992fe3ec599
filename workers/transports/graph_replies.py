"""The Microsoft Graph answer table: every non-2xx sendMail (or upload) answer is classified here, first match wins.

Rows match the HTTP status, Graph's error code and its message (notes on what Graph answers, December 2026).
Advice may name {sender} (the mailbox) and {send_as} (what to add when the from address is another one).
"""

from __future__ import annotations

from deskmail.workers.transports.base import Outcome
from deskmail.workers.transports.replies import Rule, Scope, first
from deskmail.workers.transports.steps import AUTHENTICATION, SENDER

GRAPH = "Microsoft Graph"
_MAIL_SEND = "grant the app registration the Mail.Send application permission (Microsoft Graph) with admin " \
             "consent; if an application access policy limits the app to some mailboxes, add {sender} to it{send_as}"
_NO_MAILBOX = "set sender to a mailbox in Exchange Online of this tenant (a licensed user or shared mailbox); " \
              "MailboxNotEnabledForRESTAPI means {sender} is on-premises, inactive or unlicensed"

RULES: tuple[Rule, ...] = (
    Rule("", "", r"errorexceededmessagelimit|submissionquotaexceeded|quotaexceeded|quota exceeded", Outcome.QUOTA,
         Scope.ACCOUNT, "the mailbox's sending limit is used up; wait until it frees", GRAPH),
    Rule("429", "", r"mailboxconcurrency", Outcome.TRANSIENT, Scope.ACCOUNT,
         "Graph takes at most 4 concurrent requests per app and mailbox: run fewer sending threads for it", GRAPH),
    Rule("503", r"ResourceUnhealthy", "", Outcome.TRANSIENT, Scope.ACCOUNT,
         "the mailbox's server is unhealthy for now; it is tried again later", GRAPH),
    Rule("429", "", "", Outcome.TRANSIENT, Scope.ACCOUNT, "Graph throttles the app; it is tried again later", GRAPH),
    Rule("5", "", "", Outcome.TRANSIENT, Scope.SESSION, "", GRAPH),
    Rule("413", "", "", Outcome.PERMANENT, Scope.MAIL,
         "the request is over Graph's size limit (about 4 MB); send smaller or fewer attachments", GRAPH),
    Rule("401", "", "", Outcome.CONFIGURATION, Scope.ACCOUNT,
         "check that graph_url belongs to the same Microsoft cloud as authority_url", GRAPH, AUTHENTICATION),
    Rule("404", "", "", Outcome.CONFIGURATION, Scope.ACCOUNT, _NO_MAILBOX, GRAPH, SENDER),
    Rule("403", "", r"appOnly accesspolicy", Outcome.CONFIGURATION, Scope.ACCOUNT,
         "an application access policy (or RBAC for Applications) keeps the app from {sender}: add the mailbox "
         "to the app's policy or role scope", GRAPH, SENDER),
    Rule("403", "", "", Outcome.CONFIGURATION, Scope.ACCOUNT, _MAIL_SEND, GRAPH, SENDER),
    Rule("", "", "", Outcome.PERMANENT, Scope.MAIL, "", GRAPH),
)


def rule_for(status: int, code: str, message: str) -> Rule:
    """The row that says what a Graph answer means."""
    return first(RULES, str(status), code, f"{code} {message}")
