"""Rendering: the Jinja2 environment and what every page gets (the user, its CSRF token, the menu)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.templating import Jinja2Templates

from deskmail.producers.console.auth import current

HERE = Path(__file__).parent
MENU = (("Projects", "/"), ("Backlog", "/backlog"), ("Suspended Mails", "/suspended"), ("Failed", "/failed"),
        ("Ambiguous", "/ambiguous"), ("Global Settings", "/global"), ("Audit", "/audit"))
templates = Jinja2Templates(directory=str(HERE / "templates"))  # autoescape on for .html


def render(request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
    """A page or fragment; `section` marks the menu entry."""
    session = current(request)
    return templates.TemplateResponse(request, name, {
        "user": session, "csrf": session.csrf_token if session else "", "menu": MENU,
        "is_admin": bool(session and session.role == "admin"), **context}, status_code=status)
