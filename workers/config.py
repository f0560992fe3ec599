"""Process configuration, read once from the environment at the entry point and passed down."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field, fields
from typing import Mapping


@dataclass(frozen=True)
class Setting:
    """One environment variable: its name, default and meaning (the README's table is built from these)."""

    env: str
    default: str
    help: str


SETTINGS: dict[str, Setting] = {
    s.env: s
    for s in (
        Setting("DESKMAIL_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/deskmail",
                "PostgreSQL connection URL; `deskmail db migrate` creates the database if it is missing."),
        Setting("DESKMAIL_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F", "RabbitMQ URL for workers and publishers."),
        Setting("DESKMAIL_SECRET_KEYS", "",
                "Comma-separated Fernet keys; the first encrypts, any decrypts (`deskmail keys generate`)."),
        Setting("DESKMAIL_CONTROL_KEY", "",
                "Shared HMAC key for control messages; when set, unsigned or mis-signed ones are refused."),
        Setting("DESKMAIL_CONTROL_TIMEOUT", "15", "Seconds an admin command waits for a control worker's answer."),
        Setting("DESKMAIL_CONTROL_MAX_AGE", "600",
                "Seconds after which a control message not yet applied expires (no surprise late resumes)."),
        Setting("DESKMAIL_DB_POOL_MAX", "10", "Most PostgreSQL connections one process opens."),
        Setting("DESKMAIL_PUBLISH_TIMEOUT", "10",
                "Seconds one publish may take in all (connection, reconnection, confirm) before it raises."),
        Setting("DESKMAIL_SMTP_FINAL_REPLY_TIMEOUT", "600",
                "Seconds to wait for the reply to the end of DATA (RFC 5321 says 10 minutes); after it, `ambiguous`."),
        Setting("DESKMAIL_RETRY_BASE", "30", "Seconds before the first retry of a transient failure; doubles each time."),
        Setting("DESKMAIL_RETRY_CAP", "3600", "Longest wait between two retries, in seconds."),
        Setting("DESKMAIL_RETRY_LIFETIME", "432000", "Seconds after which a mail still failing transiently is `failed` (5 days)."),
        Setting("DESKMAIL_STALE_AFTER", "900",
                "Seconds after which the scheduler re-enqueues a queued mail nobody took, or recovers a `sending` one."),
        Setting("DESKMAIL_SCHEDULER_INTERVAL", "5", "Seconds between two scheduler passes."),
        Setting("DESKMAIL_OUTBOUND_ALLOW", "",
                "CIDRs that admin-configured mail hosts may resolve to although private or loopback (e.g. 10.0.0.0/8)."),
        Setting("DESKMAIL_LOG_LEVEL", "INFO", "Log level of workers and the CLI."),
        Setting("MAIL_LIMIT_PER_DAY_SMTP", "",
                "Global mails per day over all projects; applied by `deskmail db migrate` when set (0 = no limit)."),
        Setting("RECIPIENTS_LIMIT_PER_MAIL_SMTP", "",
                "Global recipients per mail; applied by `deskmail db migrate` when set (0 = no limit)."),
    )
}


def _optional_int(raw: str) -> int | None:
    return int(raw) if raw.strip() else None


@dataclass(frozen=True)
class Config:
    """Everything a deskmail process needs from its environment."""

    database_url: str
    amqp_url: str
    secret_keys: tuple[str, ...] = ()
    control_key: str = ""
    control_timeout: float = 15.0
    control_max_age: float = 600.0
    db_pool_max: int = 10
    publish_timeout: float = 10.0
    smtp_final_reply_timeout: float = 600.0
    retry_base: float = 30.0
    retry_cap: float = 3600.0
    retry_lifetime: float = 432000.0
    stale_after: float = 900.0
    scheduler_interval: float = 5.0
    outbound_allow: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = field(default=())
    log_level: str = "INFO"
    global_per_day: int | None = None
    global_recipients_per_mail: int | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Config":
        """Build the configuration from environment variables, with defaults for the local services."""
        env = os.environ if env is None else env
        get = lambda name: env.get(name, SETTINGS[name].default)  # noqa: E731
        return cls(
            database_url=get("DESKMAIL_DATABASE_URL"),
            amqp_url=get("DESKMAIL_AMQP_URL"),
            secret_keys=tuple(k.strip() for k in get("DESKMAIL_SECRET_KEYS").split(",") if k.strip()),
            control_key=get("DESKMAIL_CONTROL_KEY"),
            control_timeout=float(get("DESKMAIL_CONTROL_TIMEOUT")),
            control_max_age=float(get("DESKMAIL_CONTROL_MAX_AGE")),
            db_pool_max=int(get("DESKMAIL_DB_POOL_MAX")),
            publish_timeout=float(get("DESKMAIL_PUBLISH_TIMEOUT")),
            smtp_final_reply_timeout=float(get("DESKMAIL_SMTP_FINAL_REPLY_TIMEOUT")),
            retry_base=float(get("DESKMAIL_RETRY_BASE")),
            retry_cap=float(get("DESKMAIL_RETRY_CAP")),
            retry_lifetime=float(get("DESKMAIL_RETRY_LIFETIME")),
            stale_after=float(get("DESKMAIL_STALE_AFTER")),
            scheduler_interval=float(get("DESKMAIL_SCHEDULER_INTERVAL")),
            outbound_allow=tuple(
                ipaddress.ip_network(c.strip(), strict=False) for c in get("DESKMAIL_OUTBOUND_ALLOW").split(",") if c.strip()
            ),
            log_level=get("DESKMAIL_LOG_LEVEL"),
            global_per_day=_optional_int(get("MAIL_LIMIT_PER_DAY_SMTP")),
            global_recipients_per_mail=_optional_int(get("RECIPIENTS_LIMIT_PER_MAIL_SMTP")),
        )

    def redacted(self) -> dict[str, object]:
        """The configuration as a dict with secrets and URL passwords masked, for logs."""
        out: dict[str, object] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("secret_keys", "control_key"):
                value = "<set>" if value else "<unset>"
            elif f.name.endswith("_url"):
                value = redact_url(value)
            out[f.name] = value
        return out


def redact_url(url: str) -> str:
    """Mask the password in a URL such as amqp://user:pass@host/."""
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if not at or ":" not in creds:
        return url
    return f"{scheme}{sep}{creds.split(':', 1)[0]}:***@{host}"
