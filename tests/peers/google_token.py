"""A local Google OAuth2 token endpoint: checks the service account's JWT signature, or a refresh token."""

from __future__ import annotations

import base64
import json
import urllib.parse

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tests.peers.http_server import Handler, PeerServer, ServedPeer
from tests.peers.tlsca import CertPair, server_context
from tests.peers.inbox import Inbox


def _b64(data: str) -> bytes:
    return base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))


def service_account_key(client_email: str = "desk@project.iam.gserviceaccount.com") -> tuple[dict, object]:
    """(service account key file content, its public key) with a fresh RSA key."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    info = {"type": "service_account", "project_id": "desk", "private_key_id": "k1", "private_key": pem,
            "client_email": client_email, "client_id": "1", "token_uri": "https://oauth2.googleapis.com/token"}
    return info, key.public_key()


class GoogleTokenPeer(ServedPeer):
    """POST /token over HTTPS answering jwt-bearer (signature checked) and refresh_token grants."""

    def __init__(self, cert: CertPair, *, public_key=None, token: str = "ya29.test-token",
                 refresh_tokens: dict | None = None, status: int | None = None, echo: bool = False) -> None:  # noqa: ANN001
        self.public_key, self.token, self.status, self.echo = public_key, token, status, echo
        self.refresh_tokens = refresh_tokens or {}
        self.requests: Inbox[dict] = Inbox("token request")
        self._server = PeerServer(self._handler(), server_context(cert))

    @property
    def url(self) -> str:
        """The token endpoint URL."""
        return f"https://127.0.0.1:{self._server.port}/token"

    def answer(self, form: dict[str, str], raw: str = "") -> tuple[int, dict]:
        """The endpoint's decision for one form; with `echo`, a refusal that quotes the request it was sent."""
        if self.echo:
            return 400, {"error": "invalid_request",
                         "error_description": f"Malformed request {raw} (client_secret {form.get('client_secret')}, "
                                              f"refresh_token {form.get('refresh_token')})"}
        if self.status:
            return self.status, {"error": "internal_failure"}
        if form.get("grant_type") == "refresh_token":
            if self.refresh_tokens.get(form.get("refresh_token")) != (form.get("client_id"), form.get("client_secret")):
                return 400, {"error": "invalid_grant", "error_description": "Token has been expired or revoked."}
            return 200, {"access_token": self.token, "expires_in": 3600, "token_type": "Bearer"}
        claims = self._verified(form.get("assertion", ""))
        if claims is None:
            return 400, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."}
        self.requests.add(claims)
        return 200, {"access_token": self.token, "expires_in": 3600, "token_type": "Bearer"}

    def _verified(self, assertion: str) -> dict | None:
        try:
            head, body, signature = assertion.split(".")
            self.public_key.verify(_b64(signature), f"{head}.{body}".encode(), padding.PKCS1v15(), hashes.SHA256())
        except Exception:  # noqa: BLE001 - any malformed or forged JWT is refused the same way
            return None
        return json.loads(_b64(body))

    def _handler(self) -> type[Handler]:
        peer = self

        class TokenHandler(Handler):
            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length", 0))
                raw = self.rfile.read(length).decode()
                self.reply_json(*peer.answer(dict(urllib.parse.parse_qsl(raw)), raw))

        return TokenHandler
