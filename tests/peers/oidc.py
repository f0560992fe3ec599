"""A local OpenID Connect provider for tests: discovery, an authorization endpoint that signs in one fixed
user at once, a token endpoint that checks the client secret and the PKCE verifier, and its JWKS."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler
from typing import Any, Self

from joserfc import jwt
from joserfc.jwk import RSAKey

from tests.peers.http_server import PeerServer

CLIENT_ID, CLIENT_SECRET = "deskmail-console", "oidc-client-secret"


class OidcPeer:
    """The provider; `email` is who logs in, `codes` the authorization requests it answered."""

    def __init__(self, email: str) -> None:
        self.email = email
        self.key = RSAKey.generate_key(2048, parameters={"kid": "test-key"})
        self.codes: dict[str, dict[str, str]] = {}
        self.hold = False  # True: show the callback URL as a page instead of redirecting to it
        peer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                query = dict(urllib.parse.parse_qsl(url.query))
                if url.path == "/.well-known/openid-configuration":
                    self._json(200, {"issuer": peer.issuer, "authorization_endpoint": f"{peer.issuer}/authorize",
                                     "token_endpoint": f"{peer.issuer}/token", "jwks_uri": f"{peer.issuer}/jwks"})
                elif url.path == "/jwks":
                    self._json(200, {"keys": [peer.key.as_dict(private=False)]})
                elif url.path == "/authorize":
                    code = secrets.token_urlsafe(16)
                    peer.codes[code] = query
                    answer = urllib.parse.urlencode({"code": code, "state": query["state"]})
                    target = f"{query['redirect_uri']}?{answer}"
                    if peer.hold:
                        body = f"<p id=callback>{target}</p>".encode()
                        self.send_response(200)
                        self.send_header("Content-Type", "text/html")
                        self.send_header("Content-Length", str(len(body)))
                        self.end_headers()
                        self.wfile.write(body)
                        return
                    self.send_response(302)
                    self.send_header("Location", target)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                else:
                    self._json(404, {"error": "not_found"})

            def do_POST(self) -> None:
                form = dict(urllib.parse.parse_qsl(self.rfile.read(int(self.headers["Content-Length"])).decode()))
                expected = "Basic " + base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
                asked = peer.codes.pop(form.get("code", ""), None)
                if self.headers.get("Authorization") != expected or asked is None:
                    self._json(400, {"error": "invalid_grant"})
                    return
                challenge = base64.urlsafe_b64encode(hashlib.sha256(form["code_verifier"].encode()).digest())
                if challenge.rstrip(b"=").decode() != asked["code_challenge"]:
                    self._json(400, {"error": "invalid_grant", "error_description": "PKCE verifier"})
                    return
                now = int(time.time())
                claims = {"iss": peer.issuer, "aud": asked["client_id"], "sub": "user-1", "email": peer.email,
                          "nonce": asked["nonce"], "iat": now, "exp": now + 300}
                token = jwt.encode({"alg": "RS256", "kid": "test-key"}, claims, peer.key)
                self._json(200, {"access_token": "at", "token_type": "Bearer", "id_token": token})

            def _json(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = PeerServer(Handler)

    @property
    def issuer(self) -> str:
        """The issuer URL (plain HTTP on loopback)."""
        return f"http://127.0.0.1:{self.server.port}"

    def __enter__(self) -> Self:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop()
