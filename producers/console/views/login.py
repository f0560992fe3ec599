"""Log in (password, or single sign-on when configured) and log out."""

from __future__ import annotations

import hmac
import secrets

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from deskmail.producers.console import auth, oidc
from deskmail.producers.console.pages import render
from deskmail.workers.records import ConsoleSession


def _next(raw: str | None) -> str:
    """Only a path of this site: never //host or a full URL (no open redirect)."""
    return raw if raw and raw.startswith("/") and not raw.startswith("//") and "\\" not in raw else "/"


def _form(request: Request, error: str = "", status: int = 200, username: str = "") -> Response:
    token = secrets.token_urlsafe(24)
    response = render(request, "login.html", status, login_csrf=token, error=error, username=username,
                      next=_next(request.query_params.get("next")), oidc=request.app.state.console.oidc)
    response.set_cookie(auth.LOGIN_COOKIE, token, max_age=3600, path="/", secure=True, httponly=True,
                        samesite="strict")
    return response


async def login_page(request: Request) -> Response:
    """The login form."""
    return _form(request)


async def login_post(request: Request) -> Response:
    """Check the password (throttled) and open a session."""
    form = await request.form()
    sent, expected = str(form.get("csrf", "")), request.cookies.get(auth.LOGIN_COOKIE, "")
    if not expected or not hmac.compare_digest(sent.encode(), expected.encode()):
        return _form(request, "The login form expired; please try again.", 403)
    username = str(form.get("username", "")).strip()[:128]
    store = request.app.state.store
    refusal = auth.password_login(store, username, str(form.get("password", "")), auth.client_address(request))
    if refusal:
        return _form(request, refusal.message, 429 if "Too many" in refusal.message else 401, username)
    response = RedirectResponse(_next(str(form.get("next", ""))), status_code=303)
    auth.open_session(store, response, username, "password", request.app.state.console.session_hours)
    response.delete_cookie(auth.LOGIN_COOKIE, path="/", secure=True, httponly=True, samesite="strict")
    return response


@auth.form_action("viewer")
async def logout(request: Request, form: FormData, session: ConsoleSession) -> Response:
    """End the session."""
    response = RedirectResponse("/login", status_code=303)
    auth.close_session(request.app.state.store, request, response)
    return response


ROUTES = [Route("/login", login_page, methods=["GET"]), Route("/login", login_post, methods=["POST"]),
          Route("/logout", logout, methods=["POST"]), *oidc.ROUTES]
