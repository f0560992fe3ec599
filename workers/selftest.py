"""The Test action: a real test mail through a project's configured service, diagnosed step by step."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Any

from workers.delivery import envelope_for
from workers.diagnosis import Checkup, Stop
from workers.runtime import Runtime
from workers.scrub import Scrubber
from workers.settings import ProjectSettings

UNSAVED = -1  # settings version of a document tested before it is saved


def test_event(project: str, to: str) -> dict[str, Any]:
    """The self-test mail (the product's "Test" sends one to the sender's own address)."""
    return {"event_id": str(uuid.uuid4()), "project": project, "kind": "notification", "to": [to],
            "subject": f"deskmail test mail for project {project}",
            "text": f"This is a test mail from deskmail, sent to check the mail settings of project {project}.\n"
                    "No action is needed.\n"}


def self_test(runtime: Runtime, project: str, to: str | None = None,
              document: dict[str, Any] | None = None, checkup: Checkup | None = None) -> Checkup:
    """Send a test mail with the project's saved settings (or with `document`, not yet saved).

    A caller that shows the steps as they happen passes its own `checkup` (the console does).
    """
    if document is None:
        settings = runtime.settings.load(project)
    else:
        settings = ProjectSettings(project, UNSAVED, document["mail_service"], document)
    transport = runtime.transports[settings.service]
    event = test_event(project, to or settings.document["from_address"])
    envelope = envelope_for(event, settings, datetime.now(timezone.utc))
    checkup = Checkup() if checkup is None else checkup
    checkup.scrub = Scrubber.of(settings).text
    try:
        transport.diagnose(settings, envelope, checkup)
    except Stop:
        pass
    return checkup
