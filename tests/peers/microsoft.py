"""A local Microsoft 365 over HTTPS: Entra ID (OpenID configuration, client-credentials tokens checking a
client secret or the signature of a certificate's client assertion) and Graph sendMail (bearer token
checked, base64 MIME decoded and recorded), with scriptable refusals."""

from __future__ import annotations

import base64
import datetime as dt
import email
import email.message
import email.policy
import hashlib
import itertools
import json
import threading
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from tests.peers.http_server import Handler, PeerServer, ServedPeer
from tests.peers.inbox import Inbox
from tests.peers.tlsca import CertPair, server_context

TENANT = "contoso.onmicrosoft.com"
CLIENT_ID = "2b8c4d5e-0000-4000-8000-00000000c1d1"
TRACE = "\r\nTrace ID: 0f3e-test\r\nCorrelation ID: 9a1b-test\r\nTimestamp: 2026-11-24 10:00:00Z"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
Answer = tuple[int, dict[str, str], dict | None]  # status, headers, JSON body


@dataclass(frozen=True)
class Certificate:
    """A certificate credential: what deskmail's settings hold, and the public key the peer checks against."""

    private_key: str
    thumbprint: str
    public_key: Any

    @property
    def setting(self) -> dict[str, str]:
        """The settings block's `certificate` object."""
        return {"private_key": self.private_key, "thumbprint": self.thumbprint}


def new_certificate(name: str = "deskmail") -> Certificate:
    """A fresh RSA key and self-signed certificate, as uploaded to an app registration."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=2)).sign(key, hashes.SHA256()))
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    return Certificate(pem, cert.fingerprint(hashes.SHA1()).hex().upper(), key.public_key())


def aad_error(status: int, error: str, code: str, text: str) -> Answer:
    """An Entra ID error answer as login.microsoftonline.com writes it."""
    number = int(code.removeprefix("AADSTS"))
    return status, {}, {"error": error, "error_description": f"{code}: {text}{TRACE}", "error_codes": [number]}


def graph_error(status: int, code: str, message: str, **headers: str) -> Answer:
    """A Graph error answer."""
    return status, headers, {"error": {"code": code, "message": message}}


@dataclass(frozen=True)
class TokenRequest:
    """One token request the authority answered with a token."""

    client_id: str
    scope: str
    method: str  # client_secret | client_assertion


REQUEST_LIMIT = 4 * 1024 * 1024  # Graph answers 413 to larger requests
CHUNK_UNIT = 320 * 1024         # upload chunks must be multiples of this (but the last)


@dataclass(frozen=True)
class GraphMail:
    """One message Graph accepted: by sendMail, or as a draft sent after its attachments were uploaded."""

    mailbox: str
    data: bytes
    path: str = "sendMail"  # sendMail | draft

    @property
    def message(self) -> email.message.EmailMessage:
        """The MIME message, parsed."""
        return email.message_from_bytes(self.data, policy=email.policy.default)  # type: ignore[return-value]


def compose(data: bytes, attached: list[dict]) -> bytes:
    """The message Exchange sends from a draft: its MIME with the uploaded attachments added to it."""
    message = email.message_from_bytes(data, policy=email.policy.default)
    for item in attached:
        maintype, _, subtype = item.get("contentType", "application/octet-stream").partition("/")
        message.add_attachment(item["content"], maintype=maintype, subtype=subtype, filename=item["name"],
                               disposition="inline" if item.get("isInline") else "attachment",
                               cid=f"<{item['contentId']}>" if item.get("contentId") else None)
    return message.as_bytes(policy=email.policy.default.clone(linesep="\r\n"))


class MicrosoftPeer(ServedPeer):
    """Entra ID authority and Microsoft Graph on one HTTPS server at 127.0.0.1 and a free port."""

    def __init__(self, cert: CertPair, *, tenant: str = TENANT, client_id: str = CLIENT_ID,
                 client_secret: str | None = None, certificate: Certificate | None = None) -> None:
        self.tenant, self.client_id = tenant, client_id
        self.client_secret, self.certificate = client_secret, certificate
        self.token_replies: list[Answer] = []  # scripted answers for the next token requests
        self.graph_replies: list[Answer] = []  # scripted answers for the next sendMail requests
        self.graph_delay = 0.0  # seconds sendMail waits before answering (a slow Graph)
        self.tokens: Inbox[TokenRequest] = Inbox("token request")
        self.sent: Inbox[GraphMail] = Inbox("Graph mail")
        self.graph_requests = 0
        self.drafts: dict[str, tuple[str, bytes]] = {}            # id -> (mailbox, MIME)
        self.draft_attachments: dict[str, list[dict]] = {}       # id -> attachment items with their bytes
        self.uploads: dict[str, dict] = {}                       # upload session id -> state
        self.upload_chunks: Inbox[int] = Inbox("upload chunk")   # the size of every chunk received
        self.deleted_drafts: list[str] = []
        self._issued: dict[str, str] = {}  # token -> scope
        self._counter = itertools.count(1)
        self._lock = threading.Lock()
        self._server = PeerServer(self._handler(), server_context(cert))

    @property
    def url(self) -> str:
        """The origin serving both the authority and Graph."""
        return f"https://127.0.0.1:{self._server.port}"

    @property
    def scope(self) -> str:
        """The scope a client derives from this peer's URL (as from https://graph.microsoft.com)."""
        return f"{self.url}/.default"

    def token_for(self, scope: str) -> str:
        """The access token the authority gives for scope (fixed, so an SMTP peer can know it beforehand)."""
        return "eyJ0eXAi." + hashlib.sha256(f"{self.client_id} {scope}".encode()).hexdigest()[:24]

    # --- the authority ------------------------------------------------------------------------------

    def openid_configuration(self, tenant: str) -> Answer:
        """GET /{tenant}/v2.0/.well-known/openid-configuration."""
        if tenant != self.tenant:
            return aad_error(400, "invalid_tenant", "AADSTS90002", f"Tenant '{tenant}' not found. Check to make "
                             "sure you have the correct tenant ID and are signing into the correct cloud.")
        base = f"{self.url}/{tenant}"
        return 200, {}, {"issuer": f"{base}/v2.0", "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                         "token_endpoint": f"{base}/oauth2/v2.0/token", "jwks_uri": f"{base}/discovery/v2.0/keys",
                         "response_types_supported": ["code", "id_token"], "tenant_region_scope": "EU"}

    def token(self, tenant: str, form: dict[str, str], basic: tuple[str, str] | None) -> Answer:
        """POST /{tenant}/oauth2/v2.0/token with grant_type client_credentials."""
        with self._lock:
            if self.token_replies:
                return self.token_replies.pop(0)
        if tenant != self.tenant:
            return aad_error(400, "invalid_request", "AADSTS90002", f"Tenant '{tenant}' not found.")
        client_id = form.get("client_id") or (basic[0] if basic else "")
        if client_id != self.client_id:
            return aad_error(400, "unauthorized_client", "AADSTS700016", f"Application with identifier "
                             f"'{client_id}' was not found in the directory '{tenant}'.")
        method = self._authenticated(form, basic, tenant)
        if isinstance(method, tuple):
            return method
        scope = form.get("scope", "")
        self.tokens.add(TokenRequest(client_id, scope, method))
        token = self.token_for(scope)
        with self._lock:
            self._issued[token] = scope
        return 200, {}, {"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599, "access_token": token}

    def _authenticated(self, form: dict[str, str], basic: tuple[str, str] | None, tenant: str) -> str | Answer:
        """The client authentication method used, or the refusal."""
        if form.get("client_assertion_type") == ASSERTION_TYPE:
            if self.certificate is None or not self._assertion_ok(form.get("client_assertion", ""), tenant):
                return aad_error(401, "invalid_client", "AADSTS700027", "Client assertion failed signature "
                                 "validation.")
            return "client_assertion"
        secret = form.get("client_secret") or (basic[1] if basic else None)
        if self.client_secret is None or secret != self.client_secret:
            return aad_error(401, "invalid_client", "AADSTS7000215", "Invalid client secret provided. Ensure the "
                             "secret being sent in the request is the client secret value, not the client secret "
                             f"ID, for a secret added to app '{self.client_id}'.")
        return "client_secret"

    def _assertion_ok(self, assertion: str, tenant: str) -> bool:
        """The JWT is signed by the registered certificate's key, names its thumbprint, and is for us."""
        try:
            header = jwt.get_unverified_header(assertion)
            claims = jwt.decode(assertion, self.certificate.public_key, algorithms=["RS256", "PS256"],
                                audience=f"{self.url}/{tenant}/oauth2/v2.0/token")
        except jwt.PyJWTError:
            return False
        x5t = base64.urlsafe_b64encode(bytes.fromhex(self.certificate.thumbprint)).decode().rstrip("=")
        signed_by_us = str(header.get("x5t", "")).rstrip("=") == x5t  # msal keeps the base64 padding
        return signed_by_us and claims.get("iss") == claims.get("sub") == self.client_id

    # --- Graph --------------------------------------------------------------------------------------

    def send_mail(self, mailbox: str, authorization: str, content_type: str, body: bytes) -> Answer:
        """POST /v1.0/users/{mailbox}/sendMail with a base64 MIME body."""
        with self._lock:
            self.graph_requests += 1
            scope = self._issued.get(authorization.removeprefix("Bearer "))
            if scope is None:
                return graph_error(401, "InvalidAuthenticationToken", "Access token validation failure.")
            if scope != self.scope:
                return graph_error(401, "InvalidAuthenticationToken", "Invalid audience.")
            if self.graph_replies:
                return self.graph_replies.pop(0)
        time.sleep(self.graph_delay)
        if not content_type.startswith("text/plain"):
            return graph_error(400, "ErrorMimeContentInvalid", "Content-Type must be text/plain for MIME.")
        try:
            data = base64.b64decode(body, validate=True)
        except ValueError:
            return graph_error(400, "ErrorMimeContentInvalidBase64String", "Invalid base64 string for MIME content.")
        self.sent.add(GraphMail(mailbox, data))
        return 202, {"request-id": f"req-{next(self._counter)}"}, None

    def _bearer_ok(self, authorization: str) -> Answer | None:
        """None when the token is one this authority gave for Graph's scope, else the 401 answer."""
        with self._lock:
            self.graph_requests += 1
            scope = self._issued.get(authorization.removeprefix("Bearer "))
        if scope is None:
            return graph_error(401, "InvalidAuthenticationToken", "Access token validation failure.")
        if scope != self.scope:
            return graph_error(401, "InvalidAuthenticationToken", "Invalid audience.")
        return None

    def create_draft(self, mailbox: str, authorization: str, content_type: str, body: bytes) -> Answer:
        """POST /v1.0/users/{mailbox}/messages with a base64 MIME body: a draft in the mailbox."""
        refused = self._bearer_ok(authorization)
        if refused:
            return refused
        if not content_type.startswith("text/plain"):
            return graph_error(400, "ErrorMimeContentInvalid", "Content-Type must be text/plain for MIME.")
        data = base64.b64decode(body, validate=True)
        draft_id = f"AAMk-{next(self._counter)}"
        with self._lock:
            self.drafts[draft_id] = (mailbox, data)
            self.draft_attachments[draft_id] = []
        return 201, {}, {"id": draft_id, "isDraft": True}

    def create_upload_session(self, draft_id: str, authorization: str, document: dict) -> Answer:
        """POST .../messages/{id}/attachments/createUploadSession."""
        refused = self._bearer_ok(authorization)
        if refused:
            return refused
        if draft_id not in self.drafts:
            return graph_error(404, "ErrorItemNotFound", "The specified object was not found in the store.")
        item = document.get("AttachmentItem") or {}
        if item.get("attachmentType") != "file" or not item.get("name") or not isinstance(item.get("size"), int):
            return graph_error(400, "ErrorInvalidRequest", "AttachmentItem needs attachmentType, name and size.")
        session_id = f"up-{next(self._counter)}"
        with self._lock:
            self.uploads[session_id] = {"draft": draft_id, "item": item, "data": bytearray()}
        return 201, {}, {"uploadUrl": f"{self.url}/upload/{session_id}", "nextExpectedRanges": ["0-"],
                         "expirationDateTime": "2030-01-01T00:00:00Z"}

    def upload_chunk(self, session_id: str, authorization: str, content_range: str, body: bytes) -> Answer:
        """PUT {uploadUrl}: one chunk, in order; the URL is its own authorization (a bearer token is refused)."""
        if authorization:
            return graph_error(401, "InvalidAuthenticationToken", "Do not send Authorization to an upload URL.")
        upload = self.uploads.get(session_id)
        if upload is None:
            return graph_error(404, "ErrorItemNotFound", "Upload session not found.")
        span, _, total = content_range.removeprefix("bytes ").partition("/")
        start, _, end = span.partition("-")
        size = upload["item"]["size"]
        last = int(end) + 1 == size
        if int(total) != size or int(start) != len(upload["data"]) or int(end) - int(start) + 1 != len(body) or \
                (not last and len(body) % CHUNK_UNIT):
            return graph_error(400, "InvalidContentRange", f"bad Content-Range {content_range!r}")
        self.upload_chunks.add(len(body))
        upload["data"] += body
        if not last:
            return 200, {}, {"nextExpectedRanges": [f"{len(upload['data'])}-"]}
        with self._lock:
            self.draft_attachments[upload["draft"]].append({**upload["item"], "content": bytes(upload["data"])})
        return 201, {}, None

    def send_draft(self, draft_id: str, authorization: str) -> Answer:
        """POST .../messages/{id}/send: the draft's MIME with its uploaded attachments goes out."""
        refused = self._bearer_ok(authorization)
        if refused:
            return refused
        with self._lock:
            if self.graph_replies:
                return self.graph_replies.pop(0)
            draft = self.drafts.pop(draft_id, None)
            attached = self.draft_attachments.pop(draft_id, [])
        if draft is None:
            return graph_error(404, "ErrorItemNotFound", "The specified object was not found in the store.")
        mailbox, data = draft
        self.sent.add(GraphMail(mailbox, compose(data, attached), "draft"))
        return 202, {"request-id": f"req-{next(self._counter)}"}, None

    def delete_draft(self, draft_id: str) -> Answer:
        """DELETE .../messages/{id}."""
        with self._lock:
            self.drafts.pop(draft_id, None)
            self.deleted_drafts.append(draft_id)
        return 204, {}, None

    def _handler(self) -> type[Handler]:
        peer = self

        class MicrosoftHandler(Handler):
            protocol_version = "HTTP/1.1"  # keep-alive, so clients reuse connections as with Graph

            def do_GET(self) -> None:  # noqa: N802
                parts = self.path.split("?")[0].strip("/").split("/")
                if len(parts) == 4 and parts[1:] == ["v2.0", ".well-known", "openid-configuration"]:
                    self._answer(peer.openid_configuration(urllib.parse.unquote(parts[0])))
                else:
                    self._answer((404, {}, {"error": "not_found"}))

            def do_PUT(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                parts = self.path.strip("/").split("/")
                if len(parts) == 2 and parts[0] == "upload":
                    self._answer(peer.upload_chunk(parts[1], self.headers.get("Authorization", ""),
                                                   self.headers.get("Content-Range", ""), body))
                else:
                    self._answer((404, {}, {"error": {"code": "BadRequest", "message": "no such path"}}))

            def do_DELETE(self) -> None:  # noqa: N802
                parts = [urllib.parse.unquote(p) for p in self.path.split("?")[0].strip("/").split("/")]
                if len(parts) == 5 and parts[0] == "v1.0" and parts[3] == "messages":
                    self._answer(peer.delete_draft(parts[4]))
                else:
                    self._answer((404, {}, {"error": {"code": "BadRequest", "message": "no such path"}}))

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length", 0))
                if length > REQUEST_LIMIT:
                    self.rfile.read(length)
                    self._answer(graph_error(413, "RequestEntityTooLarge", "The request is too large."))
                    return
                body = self.rfile.read(length)
                parts = [urllib.parse.unquote(p) for p in self.path.split("?")[0].strip("/").split("/")]
                auth, kind = self.headers.get("Authorization", ""), self.headers.get("Content-Type", "")
                if len(parts) == 4 and parts[0] == "v1.0" and parts[3] == "messages":
                    self._answer(peer.create_draft(parts[2], auth, kind, body))
                elif len(parts) == 7 and parts[3] == "messages" and parts[5:] == ["attachments",
                                                                                 "createUploadSession"]:
                    self._answer(peer.create_upload_session(parts[4], auth, json.loads(body or b"{}")))
                elif len(parts) == 6 and parts[3] == "messages" and parts[5] == "send":
                    self._answer(peer.send_draft(parts[4], auth))
                elif len(parts) == 4 and parts[1:] == ["oauth2", "v2.0", "token"]:
                    form = dict(urllib.parse.parse_qsl(body.decode()))
                    self._answer(peer.token(parts[0], form, self._basic()))
                elif len(parts) == 4 and parts[0] == "v1.0" and parts[1] == "users" and parts[3] == "sendMail":
                    self._answer(peer.send_mail(parts[2], self.headers.get("Authorization", ""),
                                                self.headers.get("Content-Type", ""), body))
                else:
                    self._answer((404, {}, {"error": {"code": "BadRequest", "message": "no such path"}}))

            def _basic(self) -> tuple[str, str] | None:
                auth = self.headers.get("Authorization", "")
                if not auth.startswith("Basic "):
                    return None
                user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
                return urllib.parse.unquote_plus(user), urllib.parse.unquote_plus(password)

            def _answer(self, answer: Answer) -> None:
                status, headers, document = answer
                self.reply_json(status, document, headers.items())

        return MicrosoftHandler
