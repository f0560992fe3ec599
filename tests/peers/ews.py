"""A local Exchange Web Services endpoint over HTTPS, answering exchangelib's CreateItem, and the SOAP
Autodiscover service (GetUserSettings) beside it.

Logins: Basic and NTLM (a real NTLM acceptor from pyspnego, reading the NTLM_USER_FILE the peer writes
while it runs) for passwords, and bearer tokens, which must come with an ExchangeImpersonation header as
Exchange Online asks of app-only tokens. Every CreateItem is parsed (MIME content, Bcc, impersonated
mailbox) and either recorded as sent or answered with a scripted refusal. Autodiscover answers per address
(an EWS URL, another address, another Autodiscover URL, or an error code), after the same logins; it may
also answer an HTTP redirect for a host name (the Host the client asked for) before any login.
"""

from __future__ import annotations

import base64
import email
import email.message
import email.policy
import email.utils
import os
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import spnego

from tests.peers.http_server import HOST, Handler, PeerServer, ServedPeer
from tests.peers.inbox import Inbox
from tests.peers.tlsca import CertPair, server_context

SOAP = "http://schemas.xmlsoap.org/soap/envelope/"
MNS = "http://schemas.microsoft.com/exchange/services/2006/messages"
TNS = "http://schemas.microsoft.com/exchange/services/2006/types"
ENS = "http://schemas.microsoft.com/exchange/services/2006/errors"
NS = {"s": SOAP, "m": MNS, "t": TNS}
ANS = "http://schemas.microsoft.com/exchange/2010/Autodiscover"
PATH = "/EWS/Exchange.asmx"
AUTODISCOVER_PATH = "/autodiscover/autodiscover.svc"
BUSY_TEXT = "The server cannot service this request right now. Try again later."


@dataclass(frozen=True)
class Answer:
    """What the peer answers to one CreateItem that passed authentication."""

    code: str = "NoError"        # the EWS ResponseCode
    text: str = ""
    status: int = 200            # an HTTP status other than 200/500 is answered bare, without SOAP
    fault: bool = False          # a SOAP fault (HTTP 500) instead of an error response message
    back_off_ms: int | None = None
    headers: tuple[tuple[str, str], ...] = ()
    stall: float = 0.0           # seconds to wait before answering
    drop: bool = False           # close the connection instead of answering


def ews_error(code: str, text: str = "") -> Answer:
    """A CreateItemResponseMessage with ResponseClass=Error, as Exchange answers a refused item."""
    return Answer(code=code, text=text or f"{code} (test peer)")


def server_busy(back_off_ms: int | None = None) -> Answer:
    """Exchange's throttling answer: a SOAP fault ErrorServerBusy, optionally with BackOffMilliseconds."""
    return Answer(code="ErrorServerBusy", text=BUSY_TEXT, fault=True, back_off_ms=back_off_ms)


def http_status(status: int, **headers: str) -> Answer:
    """A bare HTTP answer (503 from a load balancer, 404 for a wrong path...)."""
    return Answer(status=status, headers=tuple((k.replace("_", "-"), v) for k, v in headers.items()))


@dataclass(frozen=True)
class CreateItem:
    """One CreateItem the peer took; `user` is who authenticated (a user name, or `bearer:<token>`)."""

    user: str
    anchor: str | None
    impersonated: str | None
    disposition: str
    mime: bytes
    to: tuple[str, ...]
    cc: tuple[str, ...]
    bcc: tuple[str, ...]

    @property
    def message(self) -> email.message.EmailMessage:
        """The MIME content parsed (modern policy)."""
        return email.message_from_bytes(self.mime, policy=email.policy.default)  # type: ignore[return-value]

    @property
    def sender(self) -> str:
        """The From address of the MIME content."""
        return email.utils.parseaddr(str(self.message["From"]))[1]

    @property
    def recipients(self) -> tuple[str, ...]:
        """Everyone Exchange would deliver to: To and Cc of the MIME content plus BccRecipients and fields."""
        heads = [str(v) for name in ("To", "Cc") for v in self.message.get_all(name, [])]
        return tuple(a for _, a in email.utils.getaddresses(heads)) + self.to + self.cc + self.bcc


@dataclass(frozen=True)
class Discovery:
    """What Autodiscover answers for one address: its EWS URL, or a redirect, or a UserResponse ErrorCode."""

    ews_url: str | None = None
    internal: bool = False              # give the URL as InternalEwsUrl (no ExternalEwsUrl)
    redirect_address: str | None = None
    redirect_url: str | None = None
    error: str = "InvalidUser"          # answered when nothing else is set


def discovery_answer(discovery: Discovery | None) -> bytes:
    """The GetUserSettings answer for one address."""
    discovery = discovery or Discovery()
    target, settings, code = '<RedirectTarget i:nil="true"/>', "", "NoError"
    if discovery.redirect_address or discovery.redirect_url:
        code = "RedirectAddress" if discovery.redirect_address else "RedirectUrl"
        redirect = discovery.redirect_address or discovery.redirect_url or ""
        target = f"<RedirectTarget>{escape(redirect)}</RedirectTarget>"
    elif discovery.ews_url:
        name = "InternalEwsUrl" if discovery.internal else "ExternalEwsUrl"
        settings = (f'<UserSetting i:type="StringSetting"><Name>{name}</Name><Value>{escape(discovery.ews_url)}'
                    "</Value></UserSetting>")
    else:
        code = discovery.error
    message = "No error." if code == "NoError" else f"{code} (test peer)"
    return (f'<?xml version="1.0" encoding="utf-8"?><s:Envelope xmlns:s="{SOAP}"><s:Body>'
            f'<GetUserSettingsResponseMessage xmlns="{ANS}"><Response '
            'xmlns:i="http://www.w3.org/2001/XMLSchema-instance"><ErrorCode>NoError</ErrorCode><ErrorMessage/>'
            f"<UserResponses><UserResponse><ErrorCode>{code}</ErrorCode><ErrorMessage>{message}</ErrorMessage>"
            f"{target}<UserSettingErrors/><UserSettings>{settings}</UserSettings></UserResponse></UserResponses>"
            "</Response></GetUserSettingsResponseMessage></s:Body></s:Envelope>").encode()


def _addresses(item: ET.Element, name: str) -> tuple[str, ...]:
    return tuple(e.text or "" for e in item.findall(f"t:{name}/t:Mailbox/t:EmailAddress", NS))


def parse_create_item(body: bytes, user: str, anchor: str | None) -> CreateItem | str:
    """The CreateItem in a SOAP request, or the name of the operation it holds instead."""
    root = ET.fromstring(body)
    operation = root.find("s:Body/*", NS)
    if operation is None or operation.tag != f"{{{MNS}}}CreateItem":
        return operation.tag.rpartition("}")[2] if operation is not None else "nothing"
    item = operation.find("m:Items/t:Message", NS)
    mime = item.findtext("t:MimeContent", "", NS) if item is not None else ""
    return CreateItem(user=user, anchor=anchor,
                      impersonated=root.findtext("s:Header/t:ExchangeImpersonation/t:ConnectingSID/"
                                                 "t:PrimarySmtpAddress", None, NS),
                      disposition=operation.get("MessageDisposition", ""), mime=base64.b64decode(mime),
                      to=_addresses(item, "ToRecipients"), cc=_addresses(item, "CcRecipients"),
                      bcc=_addresses(item, "BccRecipients"))


def _envelope(body: str) -> bytes:
    return (f'<?xml version="1.0" encoding="utf-8"?><s:Envelope xmlns:s="{SOAP}"><s:Body>{body}</s:Body>'
            "</s:Envelope>").encode()


def soap_answer(answer: Answer) -> tuple[int, bytes]:
    """(HTTP status, SOAP body) of an answer."""
    if answer.fault:
        back_off = (f'<t:MessageXml xmlns:t="{TNS}"><t:Value Name="BackOffMilliseconds">{answer.back_off_ms}'
                    "</t:Value></t:MessageXml>" if answer.back_off_ms is not None else "")
        return 500, _envelope(
            f'<s:Fault><faultcode xmlns:a="{TNS}">a:{answer.code}</faultcode><faultstring>{escape(answer.text)}'
            f'</faultstring><detail><e:ResponseCode xmlns:e="{ENS}">{answer.code}</e:ResponseCode>'
            f'<e:Message xmlns:e="{ENS}">{escape(answer.text)}</e:Message>{back_off}</detail></s:Fault>')
    klass = "Success" if answer.code == "NoError" else "Error"
    text = f"<m:MessageText>{escape(answer.text)}</m:MessageText>" if klass == "Error" else ""
    return 200, _envelope(
        f'<m:CreateItemResponse xmlns:m="{MNS}" xmlns:t="{TNS}"><m:ResponseMessages>'
        f'<m:CreateItemResponseMessage ResponseClass="{klass}">{text}<m:ResponseCode>{answer.code}'
        "</m:ResponseCode><m:Items/></m:CreateItemResponseMessage></m:ResponseMessages></m:CreateItemResponse>")


@dataclass
class _Login:
    """A connection's NTLM state: NTLM authenticates the connection, not each request."""

    context: Any = None
    user: str | None = None


class EwsPeer(ServedPeer):
    """An EWS endpoint on 127.0.0.1 with a certificate from the test CA (or a self-signed one)."""

    def __init__(self, cert: CertPair, *, users: dict[str, str] | None = None, tokens: set[str] | None = None,
                 schemes: tuple[str, ...] = ("ntlm", "basic"), refused_senders: dict[str, str] | None = None,
                 discoveries: dict[str, Discovery] | None = None,
                 discovery_redirects: dict[str, str] | None = None, web_sites: tuple[str, ...] = ()) -> None:
        self.users = users or {}
        self.discoveries = {address.lower(): answer for address, answer in (discoveries or {}).items()}
        self.discovery_redirects = discovery_redirects or {}  # host name -> Location answered before any login
        self.web_sites = web_sites  # host names that answer 404, as a web site without Autodiscover does
        self.site_logins: Inbox[str] = Inbox("web site request")  # the Authorization header a web site got
        self.asked: Inbox[tuple[str, str, str]] = Inbox("Autodiscover request")  # (host, address, login)
        self.tokens = tokens or set()
        self.schemes = schemes
        self.refused_senders = refused_senders or {}
        self.received: Inbox[CreateItem] = Inbox("CreateItem")
        self.operations: Inbox[str] = Inbox("operation")  # every authenticated request's operation and answer
        self.logins: Inbox[tuple[str, str, bool]] = Inbox("login")  # (scheme, user, accepted)
        self._script: deque[Answer] = deque()
        self._lock = threading.Lock()
        self._server = PeerServer(self._handler(), server_context(cert))
        self._dir = tempfile.TemporaryDirectory(prefix="ews-peer-")
        self._saved_env: str | None = None

    @property
    def host(self) -> str:
        """The address the peer listens on."""
        return HOST

    @property
    def port(self) -> int:
        """The peer's port."""
        return self._server.port

    @property
    def url(self) -> str:
        """The EWS URL."""
        return f"https://{self.host}:{self.port}{PATH}"

    @property
    def open_connections(self) -> int:
        """Client connections the peer is serving now (keep-alive ones included)."""
        return self._server.open_connections

    def script(self, *answers: Answer) -> None:
        """Answer the next authenticated CreateItems with these, in order (then success again)."""
        with self._lock:
            self._script.extend(answers)

    def __enter__(self) -> "EwsPeer":
        self._write_ntlm_users()
        return super().__enter__()

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        if self._saved_env is None:
            os.environ.pop("NTLM_USER_FILE", None)
        else:
            os.environ["NTLM_USER_FILE"] = self._saved_env
        self._dir.cleanup()

    def _write_ntlm_users(self) -> None:
        """pyspnego's NTLM acceptor reads DOMAIN:USER:PASSWORD lines from the file NTLM_USER_FILE names."""
        path = Path(self._dir.name) / "ntlm-users"
        lines = []
        for name, password in self.users.items():
            domain, _, user = name.rpartition("\\")
            lines.append(f"{domain}:{user}:{password}")
        path.write_text("\n".join(lines) + "\n")
        self._saved_env = os.environ.get("NTLM_USER_FILE")
        os.environ["NTLM_USER_FILE"] = str(path)

    def next_answer(self, item: CreateItem) -> Answer:
        """The scripted answer, a refusal of the sender, or success."""
        with self._lock:
            if self._script:
                return self._script.popleft()
        sender = item.impersonated or item.sender
        if sender in self.refused_senders:
            return ews_error(self.refused_senders[sender], f"refused sender {sender} (test peer)")
        if item.user.startswith("bearer:") and not item.impersonated:
            return ews_error("ErrorInvalidExchangeImpersonationHeaderData",
                             "ExchangeImpersonation SOAP header must be present for this type of OAuth token.")
        return Answer()

    def basic(self, credentials: str) -> str | None:
        """The user of a valid Basic credential."""
        user, _, password = base64.b64decode(credentials).decode("utf-8", "replace").partition(":")
        accepted = "basic" in self.schemes and self.users.get(user) == password
        self.logins.add(("basic", user, accepted))
        return user if accepted else None

    def bearer(self, token: str) -> str | None:
        """`bearer:<token>` for a token the peer issued."""
        accepted = token in self.tokens
        self.logins.add(("bearer", token, accepted))
        return f"bearer:{token}" if accepted else None

    def _handler(self) -> type[Handler]:
        peer = self

        class EwsHandler(Handler):
            protocol_version = "HTTP/1.1"  # keep-alive: NTLM authenticates the connection
            timeout = 10

            def setup(self) -> None:
                super().setup()
                self.login = _Login()

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path.lower() == AUTODISCOVER_PATH:
                    self._autodiscover(body)
                    return
                if self.path != PATH:
                    self._send(404, b"not found", content_type="text/html")
                    return
                user = self._authenticate()
                if user is None:
                    return
                item = parse_create_item(body, user, self.headers.get("X-AnchorMailbox"))
                if isinstance(item, str):
                    peer.operations.add(f"{item} refused")
                    self._send(*soap_answer(Answer(code="ErrorInvalidRequest", text=f"{item}: not served here",
                                                   fault=True)))
                    return
                self._answer(item, peer.next_answer(item))

            def _autodiscover(self, body: bytes) -> None:
                host = (self.headers.get("Host") or "").rpartition(":")[0] or self.headers.get("Host", "")
                if host in peer.web_sites:
                    peer.site_logins.add(self.headers.get("Authorization") or "")
                    self._send(404, b"<html>not found</html>", content_type="text/html")
                    return
                if host in peer.discovery_redirects:
                    self._send(302, b"", (("Location", peer.discovery_redirects[host]),), "text/html")
                    return
                user = self._authenticate()
                if user is None:
                    return
                address = ET.fromstring(body).findtext(f".//{{{ANS}}}Mailbox", "")
                peer.asked.add((host, address, user))
                self._send(200, discovery_answer(peer.discoveries.get(address.lower())))

            def _answer(self, item: CreateItem, answer: Answer) -> None:
                time.sleep(answer.stall)
                if answer.drop:
                    peer.operations.add("CreateItem dropped")
                    self.close_connection = True
                    self.connection.close()
                    return
                if answer.status not in (200, 500):
                    peer.operations.add(f"CreateItem {answer.status}")
                    self._send(answer.status, b"<html>error</html>", answer.headers, "text/html")
                    return
                status, body = soap_answer(answer)
                peer.operations.add(f"CreateItem {status} {answer.code}")
                if answer.code == "NoError":
                    peer.received.add(item)
                self._send(status, body, answer.headers)

            def _authenticate(self) -> str | None:
                """The authenticated user, or None after answering 401."""
                scheme, _, value = (self.headers.get("Authorization") or "").partition(" ")
                scheme = scheme.lower()
                if scheme in ("ntlm", "negotiate") and "ntlm" in peer.schemes:
                    return self._ntlm(base64.b64decode(value))
                user = {"basic": peer.basic, "bearer": peer.bearer}.get(scheme, lambda _: None)(value) \
                    if scheme else self.login.user
                if user is None:
                    self._unauthorized()
                return user

            def _ntlm(self, token: bytes) -> str | None:
                if self.login.context is None or self.login.context.complete:
                    self.login = _Login(spnego.server(protocol="ntlm"))
                try:
                    reply = self.login.context.step(token)
                except spnego.exceptions.SpnegoError:
                    peer.logins.add(("ntlm", "?", False))
                    self.login = _Login()
                    self._unauthorized()
                    return None
                if not self.login.context.complete:
                    self._unauthorized(f"NTLM {base64.b64encode(reply).decode()}")
                    return None
                self.login.user = str(self.login.context.client_principal)
                peer.logins.add(("ntlm", self.login.user, True))
                return self.login.user

            def _unauthorized(self, challenge: str | None = None) -> None:
                offers = [challenge] if challenge else [{"ntlm": "NTLM", "basic": 'Basic realm="test"'}[s]
                                                        for s in peer.schemes if s in ("ntlm", "basic")]
                if peer.tokens and not challenge:
                    offers.append("Bearer")
                self._send(401, b"", tuple(("WWW-Authenticate", offer) for offer in offers), "text/html")

            def _send(self, status: int, body: bytes, headers: tuple = (),
                      content_type: str = "text/xml; charset=utf-8") -> None:
                self.reply(status, body, content_type, headers)

        return EwsHandler
