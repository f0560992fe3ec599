"""Audit: who did what, when, with what result; filtered by project, user and action."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from deskmail.producers.console.auth import viewer
from deskmail.producers.console.pages import render

PAGE = 100


@viewer
async def page(request: Request) -> Response:
    """The Audit screen."""
    store = request.app.state.store
    q = request.query_params
    filters = {k: (q.get(k) or "").strip()[:200] or None for k in ("project", "actor", "action")}
    before = q.get("before")
    rows = store.console_audit(**filters, before=int(before) if before and before.isdigit() else None,
                               limit=PAGE + 1)
    return render(request, "audit.html", section="/audit", rows=rows[:PAGE], filters=filters,
                  next_before=rows[PAGE - 1]["id"] if len(rows) > PAGE else None,
                  actions=store.console_audit_actions(), projects=[p.key for p in store.list_projects()])


ROUTES = [Route("/audit", page, methods=["GET"])]
