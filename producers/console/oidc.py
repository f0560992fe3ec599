"""Optional single sign-on: OpenID Connect authorization code flow with PKCE (authlib / joserfc).

The ID token's claim DESKMAIL_CONSOLE_OIDC_CLAIM (email by default) names the console user, who must
exist (`deskmail console-user add NAME --role ROLE --sso-only`): the provider says who someone is,
deskmail's own table says what they may do.
"""

from __future__ import annotations

import functools
import hmac
import secrets
import urllib.parse

import requests
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from deskmail.producers.console import auth
from deskmail.producers.console.config import ConsoleConfig
from deskmail.producers.console.pages import render

TIMEOUT = 10
STATE_COOKIE = "__Host-deskmail-oidc"  # binds the login to the browser that began it (no login CSRF)


@functools.lru_cache(maxsize=4)
def _metadata(issuer: str) -> dict:
    answer = requests.get(f"{issuer}/.well-known/openid-configuration", timeout=TIMEOUT)
    answer.raise_for_status()
    return answer.json()


def _config(request: Request) -> ConsoleConfig:
    console = request.app.state.console
    if not console.oidc:
        raise HTTPException(404, "Single sign-on is not configured (DESKMAIL_CONSOLE_OIDC_ISSUER).")
    return console


def _callback_url(request: Request) -> str:
    return str(request.url_for("oidc_callback"))


async def begin(request: Request) -> Response:
    """Send the browser to the provider, remembering state, nonce and PKCE verifier in the store."""
    console = _config(request)
    state, nonce, verifier = secrets.token_urlsafe(24), secrets.token_urlsafe(24), secrets.token_urlsafe(48)
    request.app.state.store.begin_oidc_login(state, nonce, verifier)
    query = {"response_type": "code", "client_id": console.oidc_client_id, "redirect_uri": _callback_url(request),
             "scope": "openid email profile", "state": state, "nonce": nonce,
             "code_challenge": create_s256_code_challenge(verifier), "code_challenge_method": "S256"}
    endpoint = _metadata(console.oidc_issuer)["authorization_endpoint"]
    response = RedirectResponse(f"{endpoint}?{urllib.parse.urlencode(query)}", status_code=303)
    # Lax, not Strict: the provider's redirect back is a cross-site navigation that must carry it.
    response.set_cookie(STATE_COOKIE, state, max_age=600, path="/", secure=True, httponly=True, samesite="lax")
    return response


async def callback(request: Request) -> Response:
    """Exchange the code, verify the ID token (signature, issuer, audience, expiry, nonce), open a session."""
    console = _config(request)
    store = request.app.state.store
    state = request.query_params.get("state", "")
    if not hmac.compare_digest(state.encode(), request.cookies.get(STATE_COOKIE, "").encode()):
        raise HTTPException(400, "This single sign-on login was started in another browser (or its cookie "
                                 "expired); start again from the login page.")
    pending = store.finish_oidc_login(state)
    if pending is None or "code" not in request.query_params:
        raise HTTPException(400, "This single sign-on login is unknown or expired; start again from the login page.")
    nonce, verifier = pending
    meta = _metadata(console.oidc_issuer)
    answer = requests.post(meta["token_endpoint"], timeout=TIMEOUT, data={
        "grant_type": "authorization_code", "code": request.query_params["code"],
        "redirect_uri": _callback_url(request), "code_verifier": verifier},
        auth=(console.oidc_client_id, console.oidc_client_secret))
    if answer.status_code != 200 or "id_token" not in answer.json():
        raise HTTPException(401, f"The identity provider refused the login ({answer.status_code}).")
    username = _verified_user(console, meta, answer.json()["id_token"], nonce)
    user = store.console_user(username)
    if user is None:
        raise HTTPException(403, f"{username} has no console account; an admin adds one with "
                                 "`deskmail console-user add`.")
    store.record_login_attempt(username, auth.client_address(request), True)
    # A page rather than a redirect: the session cookie is SameSite=Strict, and a redirect chain that began
    # at the provider's site would not send it to the first screen.
    response = render(request, "continue.html", target="/")
    response.delete_cookie(STATE_COOKIE, path="/", secure=True, httponly=True, samesite="lax")
    auth.open_session(store, response, username, "oidc", console.session_hours)
    return response


def _verified_user(console: ConsoleConfig, meta: dict, id_token: str, nonce: str) -> str:
    keys = KeySet.import_key_set(requests.get(meta["jwks_uri"], timeout=TIMEOUT).json())
    try:
        token = jwt.decode(id_token, keys)
        jwt.JWTClaimsRegistry(iss={"essential": True, "value": console.oidc_issuer},
                              aud={"essential": True, "value": console.oidc_client_id},
                              nonce={"essential": True, "value": nonce},
                              exp={"essential": True}).validate(token.claims)
    except (JoseError, ValueError) as exc:
        raise HTTPException(401, f"The ID token could not be verified: {exc}") from exc
    username = token.claims.get(console.oidc_claim)
    if not isinstance(username, str) or not username:
        raise HTTPException(401, f"The ID token has no {console.oidc_claim!r} claim.")
    return username


ROUTES = [Route("/login/oidc", begin, methods=["GET"]),
          Route("/login/oidc/callback", callback, methods=["GET"], name="oidc_callback")]
