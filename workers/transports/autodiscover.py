"""Exchange Autodiscover for the `exchange` service: the EWS URL of a mailbox, asked of its domain.

exchangelib writes the SOAP Autodiscover request (GetUserSettings, Exchange 2010 and later) and reads the answer;
deskmail walks the places to ask, so that every request goes through the outbound policy, with the project's TLS
trust and timeout (exchangelib's own discovery has process-wide timeouts and trust, DNS lookups of its own and a
cache on disk). It asks https://DOMAIN/autodiscover/autodiscover.svc, then https://autodiscover.DOMAIN/..., with
the account's password, and follows what an https answer points to: an HTTP redirect to https, RedirectUrl and
RedirectAddress (at most MAX_HOPS). It does not take the two routes Outlook tries last, a redirect answered over
plain http and a DNS SRV record: nothing verifies them, they would send the account's password wherever they
point, and Outlook asks the user before following one, which a worker cannot.
"""

from __future__ import annotations

import ssl
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

import requests
import requests.auth
from exchangelib import Configuration
from exchangelib.autodiscover.protocol import AutodiscoverProtocol
from exchangelib.errors import EWSError, ErrorServerBusy, UnauthorizedError

from deskmail.workers.transports.steps import DISCOVER
from deskmail.workers.transports import https, https_failures, tls
from deskmail.workers.transports.base import Outcome, TransportFailure
from deskmail.workers.transports.ews_auth import Password
from deskmail.workers.transports.ews_http import HttpAnswer, PinnedSessions, policy

PATH = "/autodiscover/autodiscover.svc"
MAX_HOPS = 10
SETTINGS = ("external_ews_url", "internal_ews_url")
REDIRECTS = (301, 302, 303, 307, 308)
ADVICE = ("set ews_url to the server's EWS endpoint, usually https://mail.example.com/EWS/Exchange.asmx (Outlook's "
          "\"Test E-mail AutoConfiguration\" shows it), or publish autodiscover.DOMAIN with a certificate for that "
          "name")


@dataclass(frozen=True)
class Found:
    """What Autodiscover answered: the EWS URL, for which address, and which Autodiscover URL said so."""

    ews_url: str
    address: str
    source: str


@dataclass
class _Walk:
    """One discovery: where to ask next, and what every place asked said."""

    address: str
    pending: list[str]
    tried: list[str] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)
    hops: int = 0
    refused_login: bool = False
    transient: bool = False


class _Answer(Exception):
    """An Autodiscover URL's answer that moves the walk on."""


class _Redirect(_Answer):
    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.url = url


class _Readdress(_Answer):
    def __init__(self, address: str) -> None:
        super().__init__(address)
        self.address = address


class _Failed(_Answer):
    """This URL gave no EWS URL; `final` when it is the answer of an Autodiscover service (no use asking on)."""

    def __init__(self, said: str, outcome: Outcome = Outcome.CONFIGURATION, *, final: bool = False,
                 refused_login: bool = False) -> None:
        super().__init__(said)
        self.said, self.outcome, self.final, self.refused_login = said, outcome, final, refused_login


class ChallengedBasic(requests.auth.HTTPBasicAuth):
    """Basic credentials sent only in answer to a Basic challenge, never with the first request: the first URL
    asked is the domain's own web site, which may be no Autodiscover service at all."""

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.register_hook("response", self._answer_challenge)
        return request

    def _answer_challenge(self, response: requests.Response, **kwargs: Any) -> requests.Response:
        offered = response.headers.get("WWW-Authenticate", "").lower()
        if response.status_code != 401 or "basic" not in offered or "Authorization" in response.request.headers:
            return response
        response.content  # noqa: B018 - read it all, so that the connection can be used again
        response.close()
        retry = response.request.copy()
        super().__call__(retry)
        answer = response.connection.send(retry, **kwargs)
        answer.history.append(response)
        answer.request = retry
        return answer


class _Protocol(PinnedSessions, AutodiscoverProtocol):
    """exchangelib's Autodiscover protocol over pinned HTTPS, with the project's trust and timeout."""

    def __init__(self, url: str, auth: Password, context: ssl.SSLContext, allow: tuple, timeout: float) -> None:
        super().__init__(config=Configuration(service_endpoint=url, credentials=auth.credentials(),
                                              auth_type=auth.exchangelib_auth_type(), retry_policy=policy()))
        self.context, self.allow = context, allow
        self.TIMEOUT = (timeout, timeout)

    def create_session(self) -> requests.Session:
        """exchangelib's session, with Basic credentials sent only when challenged (NTLM waits for one anyway)."""
        session = super().create_session()
        if type(session.auth) is requests.auth.HTTPBasicAuth:
            session.auth = ChallengedBasic(session.auth.username, session.auth.password)
        return session


def candidates(address: str) -> list[str]:
    """The Autodiscover URLs to ask for address, in order."""
    domain = address.rpartition("@")[2].lower()
    return [f"https://{domain}{PATH}", f"https://autodiscover.{domain}{PATH}"]


def discover(address: str, auth: Password, *, allow: tuple = (), ca_file: str | None = None, verify: bool = True,
             timeout: float = 30.0) -> Found:
    """The EWS URL for address; a TransportFailure (step "autodiscover") says what every place asked answered."""
    context = tls.context(ca_file, verify)
    walk = _Walk(address, candidates(address), seen={address.lower()})
    while walk.pending:
        url = walk.pending.pop(0)
        walk.seen.add(url.lower())
        try:
            return _ask(url, walk.address, auth, context, allow, timeout)
        except _Redirect as redirect:
            _follow(walk, url, redirect.url)
        except _Readdress as readdress:
            _readdress(walk, url, readdress.address)
        except _Failed as failed:
            walk.tried.append(f"{url}: {failed.said}")
            walk.refused_login |= failed.refused_login
            walk.transient |= failed.outcome is Outcome.TRANSIENT
            if failed.final:
                break
    raise _failure(address, walk)


def _follow(walk: _Walk, url: str, target: str) -> None:
    """Ask target next, instead of the URLs left, if it is a new https URL within the hop limit (a redirect
    that is refused leaves the URLs left to ask)."""
    if urllib.parse.urlsplit(target).scheme.lower() != "https":
        walk.tried.append(f"{url}: redirected to {target}, not followed (only https may carry the password)")
    elif target.lower() in walk.seen:
        walk.tried.append(f"{url}: redirected to {target} again (a loop)")
    elif walk.hops >= MAX_HOPS:
        walk.tried.append(f"{url}: redirected to {target}, not followed after {MAX_HOPS} redirects")
    else:
        walk.tried.append(f"{url}: redirected to {target}")
        walk.seen.add(target.lower())
        walk.hops += 1
        walk.pending = [target]


def _readdress(walk: _Walk, url: str, address: str) -> None:
    """Start again for the address an Autodiscover service gave instead (a mailbox hosted elsewhere)."""
    if "@" not in address or address.lower() in walk.seen or walk.hops >= MAX_HOPS:
        walk.tried.append(f"{url}: redirected to the address {address!r}, not followed (a loop, or too many hops)")
        walk.pending = []
        return
    walk.tried.append(f"{url}: the mailbox is {address}")
    walk.seen.add(address.lower())
    walk.hops += 1
    walk.address = address
    walk.pending = candidates(address)


def _ask(url: str, address: str, auth: Password, context: ssl.SSLContext, allow: tuple, timeout: float) -> Found:
    """One GetUserSettings request; anything but an EWS URL comes out as an _Answer."""
    protocol = _Protocol(url, auth, context, allow, timeout)
    try:
        answer = protocol.get_user_settings(user=address, settings=list(SETTINGS))
    except HttpAnswer as exc:
        raise _http_answer(exc, url) from None
    except UnauthorizedError as exc:
        raise _Failed(f"refused the login of {auth.who} ({auth.auth_type}): {exc}", refused_login=True) from None
    except (EWSError, requests.RequestException, OSError, ValueError, LookupError, SyntaxError) as exc:
        raise _connection_failure(exc, url) or _service_error(exc) from None
    finally:
        protocol.close()
    if answer.redirect_address:
        raise _Readdress(answer.redirect_address)
    if answer.redirect_url:
        raise _Redirect(answer.redirect_url)
    if answer.error_code not in (None, "NoError"):
        raise _Failed(f"Autodiscover answered {answer.error_code}: {answer.error_message or ''}".rstrip(": "),
                      final=True)
    ews_url = answer.user_settings.get("external_ews_url") or answer.user_settings.get("internal_ews_url")
    if not ews_url:
        raise _Failed(f"Autodiscover knows {address} but gave no EWS URL (is EWS enabled for it?)", final=True)
    if urllib.parse.urlsplit(ews_url).scheme.lower() != "https":
        raise _Failed(f"Autodiscover gave the EWS URL {ews_url}, which is not https", final=True)
    return Found(ews_url, address, url)


def _http_answer(answer: HttpAnswer, url: str) -> _Answer:
    """An HTTP answer that is not Autodiscover SOAP."""
    if answer.status in REDIRECTS and answer.location:
        return _Redirect(urllib.parse.urljoin(url, answer.location))
    if answer.status == 429 or answer.status >= 500:
        return _Failed(f"answered {answer}", Outcome.TRANSIENT)
    return _Failed(f"answered {answer}" + (": no Autodiscover here" if answer.status in (200, 404) else ""))


def _connection_failure(exc: BaseException, url: str) -> _Failed | None:
    """No answer: the name, the policy, the connection or TLS failed (the walk goes on to the next URL)."""
    found = https_failures.connection_failure(exc, *https.host_port(url), sends=False, noun="Autodiscover")
    return None if found is None else _Failed(found.problem, found.outcome)


def _service_error(exc: BaseException) -> _Failed:
    """An Autodiscover service's own refusal, or an answer exchangelib could not read."""
    said = " ".join(str(exc).split())[:200]
    if isinstance(exc, ErrorServerBusy):
        return _Failed(f"Autodiscover is busy: {said}", Outcome.TRANSIENT)
    if isinstance(exc, EWSError):
        return _Failed(f"Autodiscover answered {type(exc).__name__}: {said}", final=True)
    return _Failed(f"not an Autodiscover answer ({said})")


def _failure(address: str, walk: _Walk) -> TransportFailure:
    """The failure of a discovery that found no EWS URL, naming every place asked."""
    outcome = Outcome.TRANSIENT if walk.transient and not walk.refused_login else Outcome.CONFIGURATION
    advice = ADVICE
    if walk.refused_login:
        advice = ("check username (DOMAIN\\user or user@domain) and password, and that auth_type (ntlm or basic) "
                  "is one the server's Autodiscover virtual directory allows")
    return TransportFailure(outcome, f"Autodiscover found no EWS URL for {address}: " + "; ".join(walk.tried),
                            step=DISCOVER, advice=advice)
