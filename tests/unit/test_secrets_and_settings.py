"""Secrets at rest and the split of settings into public part and sealed secrets."""

from __future__ import annotations

import pytest
from cryptography.fernet import Fernet

from deskmail.workers.errors import ConfigurationError, SecretError
from deskmail.workers.secrets import SecretBox
from deskmail.workers.settings import merge_secrets, redact, split_secrets

DOC = {"mail_service": "smtp", "from_address": "d@example.org",
       "smtp": {"host": "mail.example.org", "port": 587, "username": "u", "password": "pw-123"}}


def test_secrets_are_split_off_and_merged_back():
    public, secrets = split_secrets(DOC)
    assert "password" not in public["smtp"] and secrets == {"smtp.password": "pw-123"}
    assert merge_secrets(public, secrets) == DOC


def test_redacted_settings_show_stars_for_set_secrets():
    public, secrets = split_secrets(DOC)
    assert redact(public, list(secrets))["smtp"]["password"] == "********"


def test_a_ciphertext_copied_to_another_project_does_not_decrypt():
    box = SecretBox([Fernet.generate_key().decode()])
    token = box.seal("alpha", {"smtp.password": "pw"})
    assert box.open("alpha", token) == {"smtp.password": "pw"}
    with pytest.raises(SecretError, match="another project"):
        box.open("beta", token)


def test_rotation_reencrypts_under_the_new_key_and_old_keys_still_decrypt():
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    token = SecretBox([old]).seal("alpha", {"k": "v"})
    rotated = SecretBox([new, old]).rotate(token)
    assert SecretBox([new]).open("alpha", rotated) == {"k": "v"}
    with pytest.raises(SecretError):
        SecretBox([new]).open("alpha", token)


def test_missing_key_is_a_clear_configuration_error():
    with pytest.raises(ConfigurationError, match="DESKMAIL_SECRET_KEYS"):
        SecretBox([])
