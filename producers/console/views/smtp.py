"""SMTP Settings of a project: Mail Service and its fields, limits, Auto Resume, Test and Update."""

from __future__ import annotations

import urllib.parse
from typing import Any

from deskmail import schemas
from deskmail.schemas.addresses import normalized_address
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from deskmail.producers import control
from deskmail.producers.console import fields
from deskmail.producers.console.auth import form_action, viewer
from deskmail.producers.console.pages import render
from deskmail.workers.errors import DeskmailError
from deskmail.workers.records import ConsoleSession


def _context(request: Request, key: str, service: str | None = None) -> dict[str, Any]:
    project = request.app.state.store.get_project(key)
    values, secrets_set = fields.shown_values(project.settings if project else None)
    service = service if service in fields.SERVICES else (project.mail_service if project else None) or "smtp"
    return {"key": key, "project": project, "service": service, "services": fields.SERVICES,
            "common": fields.common_fields(), "service_fields": fields.service_fields()[service],
            "values": values, "secrets_set": secrets_set}


@viewer
async def page(request: Request) -> Response:
    """The SMTP Settings screen."""
    key = request.path_params["key"]
    if key == "new" and request.query_params.get("key"):
        return RedirectResponse(f"/projects/{urllib.parse.quote(request.query_params['key'])}/smtp", 303)
    return render(request, "smtp.html", section="/", **_context(request, key, request.query_params.get("service")))


@viewer
async def service_block(request: Request) -> Response:
    """The fields of the chosen Mail Service (swapped in when the choice changes)."""
    context = _context(request, request.path_params["key"], request.query_params.get("mail_service"))
    return render(request, "fragments/service_fields.html", **context)


def _document(request: Request, key: str, form: FormData) -> tuple[dict[str, Any] | None, str]:
    """The settings of the form, with saved secrets where the form left them blank; or a problem."""
    runtime = request.app.state.runtime
    project = runtime.store.get_project(key)
    saved = None
    if project and project.settings is not None and project.secrets:
        try:
            saved = runtime.settings.load(key).document
        except DeskmailError as exc:
            return None, f"the saved secrets cannot be read here ({exc}); type them again"
    try:
        document = fields.document({k: str(v) for k, v in form.items()}, saved)
    except fields.FormProblem as exc:
        return None, str(exc)
    problems = schemas.validate(schemas.SETTINGS, document)
    return (None, "; ".join(map(str, problems))) if problems else (document, "")


def _test_to(form: FormData) -> tuple[str | None, str]:
    """The test mail's recipient (None: the from address), or a problem."""
    to = str(form.get("test_to") or "").strip() or None
    try:
        return (normalized_address(to) if to else None), ""
    except ValueError as exc:
        return None, f"test recipient: {exc}"


@form_action("admin")
async def test(request: Request, form: FormData, session: ConsoleSession) -> Response:
    """Start the Test action with the form's settings; the page then polls its steps."""
    key = request.path_params["key"]
    document, problem = _document(request, key, form)
    to, bad_to = _test_to(form)
    if document is not None and bad_to:
        document, problem = None, bad_to
    if document is None:
        return render(request, "fragments/notice.html", 422, ok=False, text=problem)
    job = request.app.state.jobs.start_test(session.username, key, document, to)
    return render(request, "fragments/job.html", job=request.app.state.store.console_job(job))


def _update(request: Request, session: ConsoleSession, key: str, document: dict[str, Any],
            auto: bool) -> list[tuple[str, Any]]:
    """Send settings.set, then auto_resume.set and limits.set where they changed; one answer each."""
    actions, store = request.app.state.actions, request.app.state.store
    # The secrets are sealed here, as `deskmail settings set` does: never clear text on the broker.
    sealed = control.settings_fields(request.app.state.runtime.box, key, document)
    answers = [("Mail service settings", actions.send(session.username, "settings.set", **sealed))]
    project = store.get_project(key)
    if project is None or project.auto_resume != auto:
        answers.append(("Auto Resume", actions.send(session.username, "auto_resume.set", project=key, enabled=auto)))
    limits = {k: (document.get("limits") or {}).get(k) or 0 for k in ("per_day", "recipients_per_mail")}  # 0: none
    if project is None or (project.per_day or 0, project.recipients_per_mail or 0) != tuple(limits.values()):
        answers.append(("Limits", actions.send(session.username, "limits.set", project=key, **limits)))
    return answers


@form_action("admin")
async def update(request: Request, form: FormData, session: ConsoleSession) -> Response:
    """Update: the mail service settings, then Auto Resume and the limits, each as its control action;
    with "only after a passing test", the Test runs first and Update follows only if the mail was accepted."""
    key = request.path_params["key"]
    document, problem = _document(request, key, form)
    if document is None:
        return render(request, "fragments/notice.html", 422, ok=False, text=problem)
    auto = bool(form.get("auto_resume"))
    to, bad_to = _test_to(form)
    if bad_to:
        return render(request, "fragments/notice.html", 422, ok=False, text=bad_to)
    if form.get("test_first"):
        then = lambda: "; ".join(f"{label}: {a.text}" for label, a in _update(request, session, key, document, auto))  # noqa: E731
        job = request.app.state.jobs.start_test(session.username, key, document, to, then)
        return render(request, "fragments/job.html", job=request.app.state.store.console_job(job))
    return render(request, "fragments/answers.html", answers=_update(request, session, key, document, auto))


ROUTES = [Route("/projects/{key}/smtp", page, methods=["GET"]),
          Route("/projects/{key}/smtp/fields", service_block, methods=["GET"]),
          Route("/projects/{key}/smtp/test", test, methods=["POST"]),
          Route("/projects/{key}/smtp/update", update, methods=["POST"])]
