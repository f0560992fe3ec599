"""Typed settings per mail service: built from the validated block, defaults taken from the schema."""

from __future__ import annotations

import dataclasses

import pytest

from deskmail.schemas.compiled import schema
from deskmail.workers.service_settings import CLASSES, SmtpSettings, typed
from deskmail.workers.settings import ProjectSettings


def test_a_missing_field_takes_the_schema_default():
    smtp = typed("smtp", {"host": "mail.example.org", "port": 587})
    assert (smtp.security, smtp.auth, smtp.verify_certificate, smtp.timeout_seconds) == ("starttls", "plain", True, 30)
    assert smtp.ca_file is None and smtp.username is None


def test_a_given_field_wins_over_the_default():
    gmail = typed("gmail_oauth2", {"sender": "desk@example.org", "smtp_port": 2525, "timeout_seconds": 5})
    assert (gmail.smtp_host, gmail.smtp_port, gmail.timeout_seconds) == ("smtp.gmail.com", 2525, 5)


@pytest.mark.parametrize("service", sorted(CLASSES))
def test_every_property_of_a_service_block_has_a_field_and_no_more(service):
    properties = set(schema("project-settings.v1")["$defs"][service]["properties"])
    assert {f.name for f in dataclasses.fields(CLASSES[service])} == properties


def test_typed_settings_are_frozen_and_built_once_per_settings_object():
    settings = ProjectSettings("alpha", 3, "smtp", {"smtp": {"host": "h", "port": 25, "password": "pw"}})
    smtp = settings.typed_as(SmtpSettings)
    assert settings.typed is smtp and "pw" not in repr(smtp)
    with pytest.raises(dataclasses.FrozenInstanceError):
        smtp.host = "other"  # type: ignore[misc]


def test_asking_for_another_service_settings_is_a_type_error():
    settings = ProjectSettings("alpha", 3, "smtp", {"smtp": {"host": "h", "port": 25}})
    with pytest.raises(TypeError, match="sends by smtp"):
        settings.typed_as(CLASSES["gmail_oauth2"])
