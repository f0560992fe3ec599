"""What a classifier table row is: a server's answer matched by code, enhanced status and words, and what it means.

Each protocol has one table in one module (workers.transports.smtp_replies, graph_replies); provider rules are
rows added to it. The first matching row wins, so a provider's specific row goes above the generic ones.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Iterable

from deskmail.workers.transports.base import Outcome


class Scope(enum.StrEnum):
    """What an answer is about, so that a caller pauses or retries the right thing."""

    RECIPIENT = "recipient"  # this one recipient
    MAIL = "mail"            # this mail only
    SESSION = "session"      # this connection or request; the next one may do
    ACCOUNT = "account"      # the sending account or mailbox: every mail of the project until it changes
    TENANT = "tenant"        # every mailbox of the provider's tenant or customer


@dataclass(frozen=True)
class Rule:
    r"""One row: code prefix (SMTP reply code or HTTP status, e.g. "5", "550", or "" for any), enhanced status (a
    regex the whole of SMTP's RFC 3463 status or Graph's error code must match, e.g. r"5\.7\.13[0-9]", or "" for
    any), words (a regex searched in the text) -> meaning, and the Test-action step it fails when it is not the
    one the answer came in."""

    code: str = ""
    enhanced: str = ""
    pattern: str = ""
    outcome: Outcome = Outcome.PERMANENT
    scope: Scope = Scope.MAIL
    advice: str = ""
    provider: str = ""  # whose documented answer this is, when it is one provider's
    step: str = ""

    def matches(self, code: str, enhanced: str, text: str) -> bool:
        """True when the answer has this row's code prefix, enhanced status prefix and words."""
        return code.startswith(self.code) and \
            (not self.enhanced or re.fullmatch(self.enhanced, enhanced) is not None) and \
            (not self.pattern or re.search(self.pattern, text, re.IGNORECASE) is not None)


def first(rules: Iterable[Rule], code: str, enhanced: str, text: str) -> Rule:
    """The first row that matches; every table ends with rows that match anything."""
    for rule in rules:
        if rule.matches(code, enhanced, text):
            return rule
    raise LookupError(f"no row for {code} {enhanced}")  # a table without its catch-all rows is a bug
