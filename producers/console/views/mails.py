"""Backlog, Suspended Mails, Failed and Ambiguous: paged lists in arrival order with filters, check boxes,
select-all, and their actions behind a confirmation that says what a resume costs of today's quota."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from deskmail.producers.console.actions import available
from deskmail.producers.console.auth import form_action, viewer
from deskmail.producers.console.jobs import STATE_OF
from deskmail.producers.console.pages import render
from deskmail.workers.records import ConsoleSession

PAGE = 50
FILTERS = ("project", "reason", "kind", "text")
SENDS = {"backlog.resume", "suspended.resume", "failed.retry", "ambiguous.resend"}  # these take quota


@dataclass(frozen=True)
class Screen:
    """One list screen: its state, title, and the actions its buttons send."""

    state: str
    title: str
    path: str
    actions: tuple[tuple[str, str], ...]


SCREENS = {s.state: s for s in (
    Screen("backlog", "Backlog", "/backlog", (("backlog.resume", "Resume"), ("backlog.suspend", "Suspend"))),
    Screen("suspended", "Suspended Mails", "/suspended", (("suspended.resume", "Resume"),)),
    Screen("failed", "Failed", "/failed", (("failed.retry", "Retry"),)),
    Screen("ambiguous", "Ambiguous", "/ambiguous", (("ambiguous.resend", "Resend"), ("ambiguous.close", "Close"))),
)}

LABELS = {action: label for s in SCREENS.values() for action, label in s.actions}


def _filters(source) -> dict[str, str | None]:  # noqa: ANN001 - query params or form
    return {k: (str(source.get(k) or "").strip()[:200] or None) for k in FILTERS}


def _listing(request: Request, screen: Screen) -> Response:
    store = request.app.state.store
    filters = _filters(request.query_params)
    try:
        after = max(0, int(request.query_params.get("after", "0")))
    except ValueError:
        after = 0
    rows = store.console_mail_page(screen.state, filters, after, PAGE + 1)
    by_project = store.console_mail_count(screen.state, filters)
    return render(request, "mails.html", section=screen.path, screen=screen, rows=rows[:PAGE],
                  more=len(rows) > PAGE, next_after=rows[PAGE - 1]["seq"] if len(rows) > PAGE else None,
                  total=sum(by_project.values()), filters=filters, after=after,
                  projects=[p.key for p in store.list_projects()], reasons=store.console_mail_reasons(screen.state),
                  available={a: available(a) for a, _ in screen.actions})


def screen_page(screen: Screen):  # noqa: ANN201 - a Starlette endpoint
    """The list endpoint of one screen."""
    @viewer
    async def listing(request: Request) -> Response:
        return _listing(request, screen)
    listing.__name__ = f"{screen.state}_list"
    return listing


def _selection(form: FormData) -> tuple[str, list[str] | None, dict[str, str | None]]:
    action = str(form.get("action", ""))
    if action not in STATE_OF:
        raise HTTPException(400, "Unknown action.")
    ids = None if form.get("all_matching") == "1" else [str(i) for i in form.getlist("ids")]
    return action, ids, _filters(form)


def _quota(store, by_project: dict[str, int]) -> list[dict]:  # noqa: ANN001 - workers.store.Store
    """Today's count and limit of each project touched, and of the global day, with what a resume adds."""
    out = []
    for key, n in by_project.items():
        p = store.get_project(key)
        sent = store.sent_today(key, p.time_zone) if p else 0
        out.append({"scope": f"project {key}", "n": n, "sent": sent, "limit": (p.per_day or None) if p else None})
    glob = store.global_limits()
    out.append({"scope": "all projects (MAIL_LIMIT_PER_DAY_SMTP)", "n": sum(by_project.values()),
                "sent": store.sent_today("*", glob.time_zone), "limit": glob.per_day or None})
    return out


@form_action("admin")
async def confirm(request: Request, form: FormData, session: ConsoleSession) -> Response:
    """The confirmation: how many mails, and for a resume how much of today's quota it takes."""
    action, ids, filters = _selection(form)
    store = request.app.state.store
    if ids == []:
        return render(request, "fragments/notice.html", ok=False, text="Select mails first.")
    if not available(action):
        return render(request, "fragments/notice.html", ok=False, text=(
            f"{action} is not available yet: this version's control worker has no such action "
            "(nothing was changed)."))
    state = STATE_OF[action]
    by_project = (store.console_mail_count(state, filters) if ids is None
                  else store.console_selection_count(ids, state))
    return render(request, "fragments/confirm.html", action=action, label=LABELS[action], ids=ids, filters=filters,
        count=sum(by_project.values()), quota=_quota(store, by_project) if action in SENDS else None)


@form_action("admin")
async def apply(request: Request, form: FormData, session: ConsoleSession) -> Response:
    """Run the confirmed action as a job of control messages; the page polls its progress."""
    action, ids, filters = _selection(form)
    total = int(str(form.get("count") or "0") or 0)
    job = request.app.state.jobs.start_bulk(session.username, action, ids, filters, total, LABELS[action])
    return render(request, "fragments/job.html", job=request.app.state.store.console_job(job))


ROUTES = [*(Route(s.path, screen_page(s), methods=["GET"]) for s in SCREENS.values()),
          Route("/mails/confirm", confirm, methods=["POST"]), Route("/mails/apply", apply, methods=["POST"])]
