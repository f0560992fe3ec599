"""The Test action: a real test mail through a project's configured service, diagnosed step by step."""

from __future__ import annotations

import base64
import uuid
from datetime import datetime, timezone
from typing import Any

from deskmail.workers.attachments import extract
from deskmail.workers.delivery import envelope_for
from deskmail.workers.diagnosis import Checkup, Stop
from deskmail.workers.runtime import Runtime
from deskmail.workers.scrub import Scrubber
from deskmail.workers.settings import ProjectSettings

UNSAVED = -1  # settings version of a document tested before it is saved


TEST_ATTACHMENT = "deskmail-test.txt"


def test_event(project: str, to: str, attachment: bool = False) -> dict[str, Any]:
    """The self-test mail (the product's "Test" sends one to the sender's own address), with a small text file
    attached when `attachment` (to prove the attachment path of the mail service)."""
    event: dict[str, Any] = {
        "event_id": str(uuid.uuid4()), "project": project, "kind": "notification", "to": [to],
        "subject": f"deskmail test mail for project {project}",
        "text": f"This is a test mail from deskmail, sent to check the mail settings of project {project}.\n"
                "No action is needed.\n"}
    if attachment:
        content = f"Attachment of the deskmail test mail for project {project}.\n".encode()
        event["attachments"] = [{"filename": TEST_ATTACHMENT, "content_type": "text/plain",
                                 "content": base64.b64encode(content).decode("ascii")}]
    return event


def self_test(runtime: Runtime, project: str, to: str | None = None,
              document: dict[str, Any] | None = None, checkup: Checkup | None = None,
              attachment: bool = False) -> Checkup:
    """Send a test mail with the project's saved settings (or with `document`, not yet saved), with a small
    attachment when `attachment`.

    A caller that shows the steps as they happen passes its own `checkup` (the console does).
    """
    if document is None:
        settings = runtime.settings.load(project)
    else:
        settings = ProjectSettings(project, UNSAVED, document["mail_service"], document)
    transport = runtime.transports[settings.service]
    event, contents = extract(test_event(project, to or settings.document["from_address"], attachment))
    envelope = envelope_for(event, settings, datetime.now(timezone.utc), contents=contents)
    checkup = Checkup() if checkup is None else checkup
    checkup.scrub = Scrubber.of(settings).text
    try:
        transport.diagnose(settings, envelope, checkup)
    except Stop:
        pass
    return checkup
