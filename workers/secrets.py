"""Secrets at rest: Fernet tokens bound to their project, under rotatable keys."""

from __future__ import annotations

import json
from typing import Sequence

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from deskmail.workers.errors import ConfigurationError, SecretError


def generate_key() -> str:
    """A new Fernet key, for DESKMAIL_SECRET_KEYS."""
    return Fernet.generate_key().decode("ascii")


class SecretBox:
    """Encrypts with the first key, decrypts with any; the project key sits inside the plaintext.

    Fernet has no associated data, so the project is bound inside the token and checked on
    opening: a ciphertext copied to another project's row does not decrypt there.
    """

    def __init__(self, keys: Sequence[str]) -> None:
        if not keys:
            raise ConfigurationError(
                "DESKMAIL_SECRET_KEYS is not set: generate a key with `deskmail keys generate` "
                "and set it in the environment of workers and of the deskmail command")
        try:
            self._fernet = MultiFernet([Fernet(k.encode("ascii")) for k in keys])
        except (ValueError, UnicodeEncodeError) as exc:
            raise ConfigurationError("DESKMAIL_SECRET_KEYS holds a key that is not a Fernet key "
                                     "(32 url-safe base64-encoded bytes)") from exc

    def seal(self, project: str, secrets: dict[str, object]) -> bytes:
        """Encrypt a project's secrets."""
        plaintext = json.dumps({"project": project, "secrets": secrets}, separators=(",", ":"))
        return self._fernet.encrypt(plaintext.encode("utf-8"))

    def open(self, project: str, token: bytes) -> dict[str, object]:
        """Decrypt a project's secrets, refusing a token that belongs to another project."""
        try:
            data = json.loads(self._fernet.decrypt(bytes(token)))
        except InvalidToken as exc:
            raise SecretError(f"the secrets of project {project!r} cannot be decrypted with "
                              "DESKMAIL_SECRET_KEYS (wrong or rotated-out key?)") from exc
        if data.get("project") != project:
            raise SecretError(f"the stored secrets of project {project!r} belong to another project; "
                              "set the project's settings again")
        return data["secrets"]

    def rotate(self, token: bytes) -> bytes:
        """Re-encrypt a token under the first (newest) key."""
        try:
            return self._fernet.rotate(bytes(token))
        except InvalidToken as exc:
            raise SecretError("a stored secret cannot be decrypted with DESKMAIL_SECRET_KEYS") from exc
