"""Mail: one mail's state, its attempts with the servers' answers, and its headers (never a body or a
secret: the event carries no secret, and the body is left out on purpose)."""

from __future__ import annotations

import uuid

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from deskmail.producers.console.auth import viewer
from deskmail.producers.console.pages import render


def _addresses(items) -> str:  # noqa: ANN001 - list of str or {address, name}
    out = []
    for item in items or []:
        if isinstance(item, dict):
            out.append(f"{item.get('name')} <{item.get('address')}>" if item.get("name") else str(item.get("address")))
        else:
            out.append(str(item))
    return ", ".join(out)


def headers(mail, project) -> list[tuple[str, str]]:  # noqa: ANN001 - Mail, Project | None
    """The header lines the mail goes out with, as far as the ledger knows them."""
    event = mail.event or {}
    settings = (project.settings if project else None) or {}
    sender = settings.get("from_address")
    rows = [("From", f"{settings.get('from_name')} <{sender}>" if settings.get("from_name") and sender
             else sender or "(the project's from address)"),
            ("To", _addresses(event.get("to"))), ("Cc", _addresses(event.get("cc"))),
            ("Bcc", f"{len(event['bcc'])} recipient(s), not shown in the message" if event.get("bcc") else ""),
            ("Reply-To", _addresses(event.get("reply_to")) or settings.get("reply_to") or ""),
            ("Subject", event.get("subject") or mail.subject or ""), ("Message-ID", mail.message_id or "(not yet)")]
    rows += [(k, str(v)) for k, v in sorted((event.get("headers") or {}).items())]
    return [(k, v) for k, v in rows if v]


@viewer
async def mail_page(request: Request) -> Response:
    """The Mail screen."""
    store = request.app.state.store
    try:
        mail = store.get_mail(uuid.UUID(request.path_params["event_id"]))
    except ValueError:
        mail = None
    if mail is None:
        raise HTTPException(404, "No mail with this id.")
    project = store.get_project(mail.project) if mail.project else None
    event = mail.event or {}
    body = {k: len(event[k]) for k in ("text", "html") if isinstance(event.get(k), str)}
    return render(request, "mail.html", section="/backlog", mail=mail, headers=headers(mail, project), body=body,
                  record=event.get("record"), attempts=store.attempts_of(mail.event_id))


ROUTES = [Route("/mail/{event_id}", mail_page, methods=["GET"])]
