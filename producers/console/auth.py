"""Who may use the console: argon2 passwords, sessions kept as hashes, CSRF tokens, login throttling."""

from __future__ import annotations

import functools
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Awaitable, Callable

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from deskmail.workers.records import ConsoleSession
from deskmail.workers.store import Store

SESSION_COOKIE = "__Host-deskmail-session"  # __Host-: Secure, Path=/, no Domain, so no subdomain can set it
LOGIN_COOKIE = "__Host-deskmail-login"      # the login form's CSRF token before there is a session
ROLES = ("admin", "viewer")
THROTTLE_WINDOW = 15 * 60
MAX_FAILURES_PER_USER = 5
MAX_FAILURES_PER_ADDRESS = 20
_hasher = PasswordHasher()  # argon2id with the library's current recommended parameters
_DUMMY = _hasher.hash("a password nobody has")  # verified against when the user is unknown: same timing


def hash_password(password: str) -> str:
    """An argon2id hash of a password."""
    return _hasher.hash(password)


def check_password(password_hash: str | None, password: str) -> bool:
    """True when `password` matches; an unknown user costs the same time as a wrong password."""
    try:
        return _hasher.verify(password_hash or _DUMMY, password) and password_hash is not None
    except (VerificationError, InvalidHashError):
        return False


def token_hash(token: str) -> bytes:
    """What the database keeps of a session cookie."""
    return hashlib.sha256(token.encode("ascii", "replace")).digest()


@dataclass(frozen=True)
class Refusal:
    """Why a login was refused, in words for the login page."""

    message: str


def throttled(store: Store, username: str, address: str) -> Refusal | None:
    """A refusal when too many logins failed lately for this user or from this address."""
    by_user, by_address = store.login_failures(username, address, THROTTLE_WINDOW)
    if by_user >= MAX_FAILURES_PER_USER or by_address >= MAX_FAILURES_PER_ADDRESS:
        return Refusal("Too many failed logins; wait 15 minutes and try again, or ask an admin to "
                       "reset the password (deskmail console-user passwd).")
    return None


def password_login(store: Store, username: str, password: str, address: str) -> Refusal | None:
    """Check a password login (throttled); None when it may open a session."""
    refusal = throttled(store, username, address)
    if refusal:
        return refusal
    user = store.console_user(username)
    ok = check_password(user.password_hash if user else None, password)
    store.record_login_attempt(username, address, ok)
    return None if ok else Refusal("Wrong user name or password.")


def open_session(store: Store, response: Response, username: str, via: str, hours: float) -> None:
    """Start a session for `username` and set its cookie on `response`."""
    token = secrets.token_urlsafe(32)
    store.add_console_session(token_hash(token), username, secrets.token_urlsafe(32), via, hours * 3600)
    response.set_cookie(SESSION_COOKIE, token, max_age=int(hours * 3600), path="/", secure=True, httponly=True,
                        samesite="strict")


def close_session(store: Store, request: Request, response: Response) -> None:
    """End the request's session and drop its cookie."""
    token = request.cookies.get(SESSION_COOKIE)
    if token:
        store.remove_console_session(token_hash(token))
    response.delete_cookie(SESSION_COOKIE, path="/", secure=True, httponly=True, samesite="strict")


def current(request: Request) -> ConsoleSession | None:
    """The session of the request's cookie, read once per request."""
    if not hasattr(request.state, "session"):
        token = request.cookies.get(SESSION_COOKIE)
        request.state.session = request.app.state.store.console_session(token_hash(token)) if token else None
    return request.state.session


def client_address(request: Request) -> str:
    """The caller's address (uvicorn applies X-Forwarded-For only from DESKMAIL_CONSOLE_FORWARDED_ALLOW)."""
    return request.client.host if request.client else "?"


Page = Callable[[Request], Awaitable[Response]]
Action = Callable[[Request, FormData, ConsoleSession], Awaitable[Response]]


def viewer(page: Page) -> Page:
    """A screen any logged-in user may see; others go to the login page."""
    @functools.wraps(page)
    async def wrapped(request: Request) -> Response:
        if current(request) is None:
            return RedirectResponse(f"/login?next={request.url.path}", status_code=303)
        return await page(request)
    return wrapped


def form_action(role: str) -> Callable[[Action], Page]:
    """A POST that needs a session of `role` (admin, or viewer for harmless ones) and its CSRF token."""
    def decorate(action: Action) -> Page:
        @functools.wraps(action)
        async def wrapped(request: Request) -> Response:
            session = current(request)
            if session is None:
                raise HTTPException(401, "Log in first.")
            form = await request.form()
            sent = str(form.get("csrf") or request.headers.get("x-csrf-token") or "")
            if not hmac.compare_digest(sent.encode(), session.csrf_token.encode()):
                raise HTTPException(403, "The form's security token is missing or stale; reload the page and "
                                         "try again.")
            if role == "admin" and session.role != "admin":
                raise HTTPException(403, f"{session.username} is a viewer; only admins may change anything.")
            return await action(request, form, session)
        return wrapped
    return decorate
