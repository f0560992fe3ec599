"""Exchange Web Services sending, shared by the `exchange` and `exchange_oauth2` (ews route) services.

The message goes to Exchange as its MIME content: the very bytes workers.message built, so the Message-ID,
Reply-To, Date, X-Deskmail-* headers and text/html parts are those every other transport sends (Exchange's
content conversion maps Message-ID to InternetMessageId, which transport keeps when it submits the item).
MIME has no envelope, so the recipients that the To and Cc headers do not name (the Bcc) go as BccRecipients
next to the MimeContent. One POST, CreateItem with MessageDisposition=SendOnly, sends it: the server version
is preset, and no copy goes to Sent Items. Exchange delivers to every To/Cc of the MIME content, so a send is
all or nothing (EWS never reports recipients deferred one by one).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Iterable, NoReturn

import requests
import urllib3.exceptions
from exchangelib import UTC, Account, Build, Configuration, Mailbox, Message, Version
from exchangelib.errors import EWSError, ErrorServerBusy, ErrorTimeoutExpired, RedirectError, ResponseMessageError, \
    UnauthorizedError
from exchangelib.protocol import Protocol

from deskmail.workers.diagnosis import ADVICE, AUTHENTICATION, SEND, SENDER
from deskmail.workers.transports import ews_replies, phase
from deskmail.workers.transports.base import Delivered, Envelope, Outcome, Recorder, TransportFailure
from deskmail.workers.transports.ews_auth import Auth, Password, Token, TokenCredentials  # noqa: F401 - the module's API
from deskmail.workers.transports.ews_http import Endpoint, EwsProtocol, HttpAnswer, policy
from deskmail.workers.transports.https_failures import Broke, connection_failure
from deskmail.workers.transports.replies import Scope

VERSION = Build(15, 20)  # Exchange 2016 and later: with the version preset, exchangelib sends no ConvertId probe
MAX_CONNECTIONS = 4      # per account and process; Exchange throttles concurrent EWS connections per user
MAX_IDLE = 30.0          # seconds; connections idle longer are closed before use, so that a send does not race
                         # a server or load balancer closing them (a lost answer makes the mail ambiguous)

REWRAPPED = (ErrorServerBusy, ErrorTimeoutExpired)  # what exchangelib re-raises connection errors as


class EwsFailure(TransportFailure):
    """A classified EWS failure, always with its Test-action step and advice; `answered` says EWS itself
    answered, so it took the credentials (the Test action then records the steps that proves)."""

    step: str  # never None, unlike a TransportFailure's

    def __init__(self, outcome: Outcome, detail: str, step: str = SEND, *, advice: str = "",
                 answered: bool = False, retry_after: float | None = None) -> None:
        super().__init__(outcome, detail, retry_after=retry_after, step=step, advice=advice or ADVICE[outcome])
        self.answered = answered


class Unauthorized(EwsFailure):
    """EWS refused the password or token (HTTP 401)."""


def open_account(endpoint: Endpoint, auth: Auth, mailbox: str, allow: Iterable = ()) -> Account:
    """An Account for mailbox on a protocol of its own (nothing connects yet); the caller closes its protocol."""
    if not endpoint.is_https:
        raise EwsFailure(Outcome.CONFIGURATION, f"the EWS URL {endpoint.url!r} is not an https URL",
                         AUTHENTICATION, advice="give ews_url as https://mail.example.com/EWS/Exchange.asmx")
    config = Configuration(service_endpoint=endpoint.url, credentials=auth.credentials(),
                           auth_type=auth.exchangelib_auth_type(), version=Version(build=VERSION),
                           retry_policy=policy(), max_connections=MAX_CONNECTIONS)
    account = Account(mailbox, config=config, autodiscover=False, access_type=auth.access_type,
                      default_timezone=UTC)
    # Account() always takes a protocol from exchangelib's global cache: put ours in its place, evict that one
    try:
        del Protocol[config]
    except KeyError:
        pass  # another thread opening the same account evicted it first
    try:
        account.protocol = EwsProtocol(config, endpoint, tuple(allow))
    except TransportFailure as failure:  # an unusable ca_file
        raise EwsFailure(failure.outcome, failure.detail, AUTHENTICATION, advice=failure.advice or "") from failure
    return account


def deliver(account: Account, endpoint: Endpoint, auth: Auth, envelope: Envelope) -> Delivered:
    """Send the envelope with one CreateItem (SendOnly); a failure comes out as an EwsFailure."""
    bcc = [Mailbox(email_address=address) for address in envelope.blind_copies()]
    message = Message(account=account, mime_content=envelope.data, bcc_recipients=bcc or None)
    phase.before_data()
    try:
        message.send(save_copy=False)
    except (EWSError, requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
        raise classify(exc, endpoint, auth, account.primary_smtp_address) from exc
    return Delivered(f"{endpoint.host} answered NoError to CreateItem (SendOnly) for "
                     f"{len(envelope.recipients)} recipient(s)")


def _short(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit] + "..."


def _connection_failure(exc: BaseException, endpoint: Endpoint) -> EwsFailure | None:
    """A failed connection (https_failures), at the send step when the message may have gone out."""
    if isinstance(exc, ResponseMessageError) and not isinstance(exc, REWRAPPED):
        return None  # an answer of EWS itself
    found = connection_failure(exc, endpoint.host, endpoint.port, sends=True, noun="Exchange")
    if found is None:
        return None
    step = SEND if found.kind is Broke.ANSWER_LOST else AUTHENTICATION
    return EwsFailure(found.outcome, found.detail, step, advice=found.advice)


def _http_failure(answer: HttpAnswer, endpoint: Endpoint) -> EwsFailure:
    """An HTTP answer that is not EWS SOAP: the request never reached EWS."""
    said = f"{endpoint.url} answered {answer}" + (f" ({answer.cas_error})" if answer.cas_error else "")
    fix_url = "set ews_url to the EWS endpoint itself, usually https://mail.example.com/EWS/Exchange.asmx"
    if answer.status == 200:
        return EwsFailure(Outcome.CONFIGURATION, f"{said} without EWS SOAP; check ews_url", AUTHENTICATION,
                          advice=fix_url)
    if 300 <= answer.status < 400:
        return EwsFailure(Outcome.CONFIGURATION, f"{said}, redirecting to {answer.location or '?'}; check ews_url",
                          AUTHENTICATION, advice=fix_url)
    if answer.status == 404:
        return EwsFailure(Outcome.CONFIGURATION, f"{said}: no EWS there; check ews_url", AUTHENTICATION,
                          advice=fix_url)
    if answer.status == 403:
        return EwsFailure(Outcome.CONFIGURATION, f"{said}: EWS access refused", AUTHENTICATION,
                          advice="an Exchange admin must allow EWS for this account and client")
    if answer.status == 429 or answer.status >= 500:
        return EwsFailure(Outcome.TRANSIENT, said, AUTHENTICATION, retry_after=answer.retry_after)
    return EwsFailure(Outcome.PERMANENT, said, AUTHENTICATION)


def _ews_failure(exc: BaseException, auth: Auth, mailbox: str) -> EwsFailure:
    """An answer of EWS itself: a ResponseCode, a SOAP fault, or something unexpected."""
    code = type(exc).__name__ if isinstance(exc, ResponseMessageError) else ""
    said = f"{code}: {_short(exc)}" if code else _short(exc)
    rule = ews_replies.rule_for(code, str(exc))
    if rule.outcome is Outcome.QUOTA:
        return EwsFailure(Outcome.QUOTA, f"Exchange sending quota: {said}", answered=True)
    if rule.outcome is Outcome.CONFIGURATION:
        return EwsFailure(Outcome.CONFIGURATION, f"Exchange refused {mailbox} as the sender for {auth.who}: {said}",
                          rule.step or SEND, advice=auth.sender_advice(mailbox), answered=True)
    if rule.scope is Scope.RECIPIENT:
        return EwsFailure(Outcome.PERMANENT, f"Exchange refused the recipients: {said}", answered=True)
    if rule.outcome is Outcome.TRANSIENT:
        return EwsFailure(Outcome.TRANSIENT, f"Exchange is busy or unavailable: {said}", answered=True,
                          retry_after=getattr(exc, "back_off", None) or None)
    return EwsFailure(Outcome.PERMANENT, f"Exchange refused the message: {said}", answered=bool(code))


def classify(exc: BaseException, endpoint: Endpoint, auth: Auth, mailbox: str) -> EwsFailure:
    """The one error model for what exchangelib, requests or urllib3 raised during a send."""
    if isinstance(exc, EwsFailure):
        return exc
    lost = _connection_failure(exc, endpoint)
    if lost is not None:
        return lost
    if isinstance(exc, UnauthorizedError):
        return Unauthorized(Outcome.CONFIGURATION, auth.refused(endpoint, str(exc)), AUTHENTICATION,
                            advice=auth.advice(endpoint))
    if isinstance(exc, HttpAnswer):
        return _http_failure(exc, endpoint)
    if isinstance(exc, RedirectError):
        return EwsFailure(Outcome.CONFIGURATION, f"{endpoint.url} redirects to {exc.url}", AUTHENTICATION,
                          advice="set ews_url to the EWS endpoint itself")
    return _ews_failure(exc, auth, mailbox)


@dataclass
class _Entry:
    settings_key: str
    endpoint: Endpoint
    account: Account
    last_used: float


class EwsSender:
    """Sends envelopes through EWS, keeping one Account (with its connections) per sending account and process."""

    def __init__(self, allow: Iterable = (), max_idle: float = MAX_IDLE) -> None:
        self.allow = tuple(allow)
        self.max_idle = max_idle
        self._entries: dict[tuple[str, int], _Entry] = {}
        self._lock = threading.Lock()

    def send(self, key: tuple[str, int], endpoint: Endpoint, auth: Auth, mailbox: str,
             envelope: Envelope) -> Delivered:
        """Deliver over the account cached for key (settings key, version); a refused token is renewed once."""
        account = self._account(key, endpoint, auth, mailbox)
        credentials = account.protocol.credentials
        tokens = isinstance(credentials, TokenCredentials)
        if tokens and credentials.sync():
            account.protocol.close_sessions()  # the pooled sessions carry the old token
        try:
            return deliver(account, endpoint, auth, envelope)
        except Unauthorized:
            if not tokens:
                raise
        credentials.renew()  # a 401 means EWS did not process the request: sending again is safe
        account.protocol.close_sessions()
        return deliver(account, endpoint, auth, envelope)

    def _account(self, key: tuple[str, int], endpoint: Endpoint, auth: Auth, mailbox: str) -> Account:
        now = time.monotonic()
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry.endpoint != endpoint:  # new settings, or Autodiscover found another URL
                self._forget(key[0])
                account = open_account(endpoint, auth, mailbox, self.allow)
                entry = self._entries[key] = _Entry(key[0], endpoint, account, now)
            elif now - entry.last_used > self.max_idle:
                entry.account.protocol.close_sessions()
            entry.last_used = now
            return entry.account

    def _forget(self, settings_key: str) -> None:
        """Close the accounts of a project's older settings versions."""
        for key in [k for k, e in self._entries.items() if e.settings_key == settings_key]:
            self._entries.pop(key).account.protocol.close_sessions()

    def close(self) -> None:
        """Close every cached account's connections (this process's threads share them)."""
        with self._lock:
            for entry in self._entries.values():
                entry.account.protocol.close_sessions()
            self._entries.clear()


def diagnose(checkup: Recorder, endpoint: Endpoint, auth: Auth, mailbox: str, envelope: Envelope,
             allow: Iterable = ()) -> None:
    """The authentication, sender and send steps of the Test action, on a fresh account and connections."""
    try:
        account = open_account(endpoint, auth, mailbox, allow)
    except EwsFailure as failure:
        checkup.failed_with(failure.step, failure)
    try:
        delivered = deliver(account, endpoint, auth, envelope)
    except EwsFailure as failure:
        _record_failure(checkup, failure, endpoint, auth, mailbox)
    finally:
        account.protocol.close_sessions()
    _record_login(checkup, endpoint, auth, mailbox, through=SEND)
    checkup.passed(SEND, delivered.detail)


def _record_login(checkup: Recorder, endpoint: Endpoint, auth: Auth, mailbox: str, through: str) -> None:
    """The steps an answer of EWS proves: it took the credentials and, if it got as far as sending, the sender."""
    checkup.passed(AUTHENTICATION, f"{endpoint.host} accepted {auth.who} ({auth.exchangelib_auth_type()})")
    if through == SEND:
        checkup.passed(SENDER, f"Exchange lets {auth.who} send as {mailbox}")


def _record_failure(checkup: Recorder, failure: EwsFailure, endpoint: Endpoint, auth: Auth,
                    mailbox: str) -> NoReturn:
    """The failed step, after the ones the answer proved; ends the checkup."""
    if failure.answered:
        _record_login(checkup, endpoint, auth, mailbox, through=failure.step)
    checkup.failed_with(failure.step, failure)
