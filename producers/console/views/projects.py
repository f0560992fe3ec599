"""Projects: each project's state, today's count against its limit, and its mail counts."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from deskmail.producers.console.auth import viewer
from deskmail.producers.console.pages import render


def project_rows(store) -> list[dict]:  # noqa: ANN001 - workers.store.Store
    """One row per project for the Projects screen."""
    counts = store.counts()
    rows = []
    for p in store.list_projects():
        c = counts.get(p.key, {})
        rows.append({"key": p.key, "service": p.mail_service or "(the default project's)",
                     "paused": p.paused_reason, "auto_resume": p.auto_resume,
                     "sent_today": store.sent_today(p.key, p.time_zone), "per_day": p.per_day or None,
                     "time_zone": p.time_zone, "config_error": p.config_error,
                     **{s: c.get(s, 0) for s in ("backlog", "suspended", "failed", "ambiguous", "sent")}})
    return rows


@viewer
async def projects(request: Request) -> Response:
    """The Projects screen."""
    store = request.app.state.store
    glob = store.global_limits()
    return render(request, "projects.html", section="/", projects=project_rows(store),
                  glob={"per_day": glob.per_day or None, "sent_today": store.sent_today("*", glob.time_zone)})


ROUTES = [Route("/", projects, methods=["GET"])]
