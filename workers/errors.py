"""The exception tree of deskmail: one root, a shallow tree by failure domain."""

from __future__ import annotations


class DeskmailError(Exception):
    """Root of every error deskmail raises on purpose."""


class ConfigurationError(DeskmailError):
    """The process environment or a project's settings are wrong; a person must fix them."""


class StoreError(DeskmailError):
    """PostgreSQL failed or is unreachable (driver errors are translated into this)."""


class StoreUnavailable(StoreError):
    """PostgreSQL cannot be reached, dropped the connection, or the call lost to a concurrent transaction
    (a deadlock); the same call can succeed later."""


class DataRefused(StoreError):
    """PostgreSQL refused the data itself (a NUL character, a value too large); retrying cannot help."""


class UnknownProject(DeskmailError):
    """No settings for the project and no `default` project to fall back on."""


class SecretError(DeskmailError):
    """A stored secret cannot be decrypted with the configured keys, or belongs to another project."""


class BrokerError(DeskmailError):
    """RabbitMQ refused, did not confirm, or could not be reached; `event_ids` lists the events concerned."""

    def __init__(self, message: str, event_ids: list[str] | None = None) -> None:
        super().__init__(message)
        self.event_ids = event_ids or []
