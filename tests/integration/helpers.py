"""Small builders shared by the integration tests."""

from __future__ import annotations

import uuid
from typing import Any


def smtp_settings(peer, ca_path=None, *, user: str = "desk", password: str = "s3cret-Pa55",
                  security: str = "starttls", per_day: int | None = None, recipients: int | None = None,
                  time_zone: str = "UTC", **smtp: Any) -> dict:
    """Project settings pointing at a local SMTP peer."""
    block = {"host": peer.host, "port": peer.port, "security": security, "auth": "plain",
             "username": user, "password": password, "timeout_seconds": 5, **smtp}
    if ca_path:
        block["ca_file"] = str(ca_path)
    doc = {"mail_service": "smtp", "from_address": "desk@example.org", "from_name": "Service Desk",
           "time_zone": time_zone, "smtp": block}
    if per_day is not None or recipients is not None:
        doc["limits"] = {"per_day": per_day, "recipients_per_mail": recipients}
    return doc


def event(project: str = "alpha", *, to=("user@example.com",), kind: str = "notification", **extra: Any) -> dict:
    """A valid notification event."""
    return {"event_id": str(uuid.uuid4()), "project": project, "kind": kind, "to": list(to),
            "subject": extra.pop("subject", "Ticket #42 updated"), "text": extra.pop("text", "Hello.\n"), **extra}


SENDER = "desk@example.org"


def gmail_settings(smtp, token, ca_path, **credentials: Any) -> dict:
    """Project settings for Gmail OAuth2 against a local SMTP peer and token endpoint."""
    block = {"sender": SENDER, "token_uri": token.url, "smtp_host": smtp.host, "smtp_port": smtp.port,
             "ca_file": str(ca_path), "timeout_seconds": 5, **credentials}
    return {"mail_service": "gmail_oauth2", "from_address": SENDER, "gmail_oauth2": block}
