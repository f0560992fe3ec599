"""Global Settings: MAIL_LIMIT_PER_DAY_SMTP and RECIPIENTS_LIMIT_PER_MAIL_SMTP, set with limits.set."""

from __future__ import annotations

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from deskmail.producers.console.auth import form_action, viewer
from deskmail.producers.console.pages import render
from deskmail.workers.records import ConsoleSession

NAMES = {"per_day": "MAIL_LIMIT_PER_DAY_SMTP", "recipients_per_mail": "RECIPIENTS_LIMIT_PER_MAIL_SMTP"}


@viewer
async def page(request: Request) -> Response:
    """The Global Settings screen."""
    store = request.app.state.store
    glob = store.global_limits()
    return render(request, "global.html", section="/global", glob=glob, names=NAMES,
                  sent_today=store.sent_today("*", glob.time_zone))


@form_action("admin")
async def update(request: Request, form: FormData, session: ConsoleSession) -> Response:
    """Send limits.set --global with the two values (blank or 0: no limit)."""
    limits = {}
    for key, name in NAMES.items():
        raw = str(form.get(key) or "").strip()
        if raw and not (raw.isdigit() and len(raw) < 10):
            return render(request, "fragments/notice.html", 422, ok=False, text=f"{name}: must be a whole number")
        limits[key] = int(raw) if raw else 0
    answer = request.app.state.actions.send(session.username, "limits.set", **{"global": True}, **limits)
    return render(request, "fragments/answers.html", answers=[("Global limits", answer)])


ROUTES = [Route("/global", page, methods=["GET"]), Route("/global", update, methods=["POST"])]
