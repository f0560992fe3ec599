"""Process configuration, read once from the environment at the entry point and passed down."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field, fields
from typing import Callable, Mapping, TypeVar

from deskmail.schemas.mail_parts import AttachmentCaps
from deskmail.workers.errors import ConfigurationError


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
        Setting("DESKMAIL_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F",
                "RabbitMQ URL for workers and publishers."),
        Setting("DESKMAIL_SECRET_KEYS", "",
                "Comma-separated Fernet keys; the first encrypts, any decrypts (`deskmail keys generate`)."),
        Setting("DESKMAIL_CONTROL_KEY", "",
                "Shared HMAC key for control messages; unsigned or mis-signed ones are refused. A worker with "
                "the control actor refuses to start without it (see DESKMAIL_INSECURE_CONTROL)."),
        Setting("DESKMAIL_CONTROL_AMQP_URL", "",
                "RabbitMQ URL of the control vhost, where only admins may publish (deploy/rabbitmq/); unset: "
                "control messages travel on DESKMAIL_AMQP_URL (development only)."),
        Setting("DESKMAIL_INSECURE_CONTROL", "0",
                "1 lets a worker run the control actor without DESKMAIL_CONTROL_KEY: for local development "
                "only, since anyone who may publish to the control queue can then steer the mail."),
        Setting("DESKMAIL_CONTROL_TIMEOUT", "15", "Seconds an admin command waits for a control worker's answer."),
        Setting("DESKMAIL_CONTROL_MAX_AGE", "600",
                "Seconds after which a control message not yet applied expires (no surprise late resumes)."),
        Setting("DESKMAIL_DB_POOL_MAX", "10", "Most PostgreSQL connections one process opens."),
        Setting("DESKMAIL_PUBLISH_TIMEOUT", "10",
                "Seconds one publish may take in all (connection, reconnection, confirm) before it raises."),
        Setting("DESKMAIL_SMTP_FINAL_REPLY_TIMEOUT", "600",
                "Seconds to wait for the reply to the end of DATA (RFC 5321 says 10 minutes); after it, `ambiguous`."),
        Setting("DESKMAIL_RETRY_BASE", "30",
                "Seconds before the first retry of a transient failure; doubles each time."),
        Setting("DESKMAIL_RETRY_CAP", "3600", "Longest wait between two retries, in seconds."),
        Setting("DESKMAIL_RETRY_LIFETIME", "432000",
                "Seconds after which a mail still failing transiently is `failed` (5 days)."),
        Setting("DESKMAIL_STALE_AFTER", "900",
                "Seconds after which the scheduler hands a queued mail nobody took to the broker again "
                "(a lost wake-up)."),
        Setting("DESKMAIL_LEASE_SECONDS", "60",
                "Seconds a worker's claim on a mail lasts; renewed every quarter of it while the exchange runs."),
        Setting("DESKMAIL_TAKEOVER_GRACE", "30",
                "Seconds an expired lease stays marked before the scheduler takes the mail over "
                "(at least half the lease)."),
        Setting("DESKMAIL_SCHEDULER_INTERVAL", "5", "Seconds between two scheduler passes."),
        Setting("DESKMAIL_OUTBOUND_ALLOW", "",
                "CIDRs that admin-configured mail hosts may resolve to although not globally routable "
                "(e.g. 10.0.0.0/8): the only way past the outbound guard."),
        Setting("DESKMAIL_LOG_LEVEL", "INFO",
                "Log level of workers, the scheduler and the CLI (also under `dramatiq`)."),
        Setting("DESKMAIL_LOG_FORMAT", "text",
                "`text` (one line per record) or `json` (one JSON object per line, with event_id, project, service, "
                "attempt and host on every line about a mail)."),
        Setting("DESKMAIL_METRICS_PORT", "",
                "Port of the /metrics, /healthz and /readyz endpoint of a worker process group (`dramatiq`) or the "
                "scheduler; empty or 0: no endpoint."),
        Setting("DESKMAIL_METRICS_HOST", "127.0.0.1",
                "Address the metrics endpoint listens on (0.0.0.0 in containers)."),
        Setting("DESKMAIL_METRICS_DIR", "",
                "Folder for the per-process metric files of a `dramatiq -p N` group (PROMETHEUS_MULTIPROC_DIR); "
                "empty: a folder per group under the system's temporary folder."),
        Setting("DESKMAIL_HEARTBEAT_MAX_AGE", "60",
                "Seconds after which `deskmail healthcheck` calls the scheduler's last heartbeat stale."),
        Setting("DESKMAIL_HEALTH_TIMEOUT", "3",
                "Seconds `deskmail healthcheck` and /readyz wait for PostgreSQL or RabbitMQ before calling it "
                "unreachable."),
        Setting("DESKMAIL_ATTACHMENT_MAX_BYTES", "26214400",
                "Largest attachment, decoded, in bytes (25 MB); checked by the publisher and at admission."),
        Setting("DESKMAIL_ATTACHMENTS_MAX_BYTES", "26214400",
                "Largest total of one mail's attachments, decoded, in bytes (25 MB, Gmail's cap)."),
        Setting("DESKMAIL_ATTACHMENTS_MAX_COUNT", "20", "Most attachments one mail may carry."),
        Setting("DESKMAIL_ATTACHMENT_RETENTION", "604800",
                "Seconds a failed or ambiguous mail keeps its attachments for a retry or resend (7 days)."),
        Setting("DESKMAIL_CONSOLE_HOST", "127.0.0.1",
                "Address `deskmail console` listens on; a non-loopback one needs TLS or "
                "DESKMAIL_CONSOLE_BEHIND_TLS_PROXY."),
        Setting("DESKMAIL_CONSOLE_PORT", "8025", "Port of `deskmail console`."),
        Setting("DESKMAIL_CONSOLE_TLS_CERT", "", "PEM certificate (chain) the console serves HTTPS with."),
        Setting("DESKMAIL_CONSOLE_TLS_KEY", "", "PEM private key of DESKMAIL_CONSOLE_TLS_CERT."),
        Setting("DESKMAIL_CONSOLE_BEHIND_TLS_PROXY", "",
                "`1`: plain HTTP on a non-loopback address is allowed because a TLS proxy in front terminates HTTPS."),
        Setting("DESKMAIL_CONSOLE_FORWARDED_ALLOW", "127.0.0.1",
                "Comma-separated proxy addresses whose X-Forwarded-For/-Proto the console believes."),
        Setting("DESKMAIL_CONSOLE_SESSION_HOURS", "12", "Hours a console login lasts."),
        Setting("DESKMAIL_CONSOLE_OIDC_ISSUER", "",
                "OpenID Connect issuer URL for single sign-on to the console (unset: passwords only)."),
        Setting("DESKMAIL_CONSOLE_OIDC_CLIENT_ID", "", "The console's client id at the OIDC issuer."),
        Setting("DESKMAIL_CONSOLE_OIDC_CLIENT_SECRET", "", "The console's client secret at the OIDC issuer."),
        Setting("DESKMAIL_CONSOLE_OIDC_CLAIM", "email",
                "ID token claim naming the console user (who must exist, with a role, in `deskmail console-user`)."),
        Setting("MAIL_LIMIT_PER_DAY_SMTP", "",
                "Global mails per day over all projects; applied by `deskmail db migrate` when set (0 = no limit)."),
        Setting("RECIPIENTS_LIMIT_PER_MAIL_SMTP", "",
                "Global recipients per mail; applied by `deskmail db migrate` when set (0 = no limit)."),
    )
}


N = TypeVar("N", int, float)


def _optional_number(name: str, raw: str, kind: Callable[[str], N]) -> N | None:
    """A setting's number, None when it is empty (see _number)."""
    return _number(name, raw, kind) if raw.strip() else None


def _number(name: str, raw: str, kind: Callable[[str], N]) -> N:
    """A setting's number, or a ConfigurationError naming the variable and what it takes."""
    try:
        value = kind(raw.strip())
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise ConfigurationError(f"{name}: {raw!r} is not {what}; give {what} ({SETTINGS[name].help} "
                                 f"Default: {SETTINGS[name].default or 'unset'}.)") from None
    if value != value or value in (float("inf"), float("-inf")) or value < 0:
        raise ConfigurationError(f"{name}: {raw!r} is not allowed; give a finite number of 0 or more")
    return value


def _level(raw: str) -> str:
    if raw.strip().upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ConfigurationError(f"DESKMAIL_LOG_LEVEL: {raw!r} is not a log level; give DEBUG, INFO, WARNING, "
                                 "ERROR or CRITICAL")
    return raw.strip().upper()


def _networks(name: str, raw: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    try:
        return tuple(ipaddress.ip_network(c.strip(), strict=False) for c in raw.split(",") if c.strip())
    except ValueError as exc:
        raise ConfigurationError(f"{name}: {exc}; give comma-separated CIDRs such as 10.0.0.0/8") from None


@dataclass(frozen=True)
class Config:
    """Everything a deskmail process needs from its environment."""

    database_url: str
    amqp_url: str
    secret_keys: tuple[str, ...] = ()
    control_key: str = ""
    control_amqp_url: str = ""
    insecure_control: bool = False
    control_timeout: float = 15.0
    control_max_age: float = 600.0
    db_pool_max: int = 10
    publish_timeout: float = 10.0
    smtp_final_reply_timeout: float = 600.0
    retry_base: float = 30.0
    retry_cap: float = 3600.0
    retry_lifetime: float = 432000.0
    stale_after: float = 900.0
    lease_seconds: float = 60.0
    takeover_grace: float = 30.0
    scheduler_interval: float = 5.0
    outbound_allow: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = field(default=())
    log_level: str = "INFO"
    global_per_day: int | None = None
    global_recipients_per_mail: int | None = None
    log_format: str = "text"
    metrics_port: int = 0
    metrics_host: str = "127.0.0.1"
    metrics_dir: str = ""
    heartbeat_max_age: float = 60.0
    health_timeout: float = 3.0
    attachment_max_bytes: int = 26214400
    attachments_max_bytes: int = 26214400
    attachments_max_count: int = 20
    attachment_retention: float = 604800.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Config":
        """Build the configuration from environment variables, with defaults for the local services."""
        env = os.environ if env is None else env
        get = lambda name: env.get(name, SETTINGS[name].default)  # noqa: E731
        real = lambda name: _number(name, get(name), float)
        whole = lambda name: _number(name, get(name), int)
        whole_or_none = lambda name: _optional_number(name, get(name), int)
        return cls(
            database_url=get("DESKMAIL_DATABASE_URL"),
            amqp_url=get("DESKMAIL_AMQP_URL"),
            secret_keys=tuple(k.strip() for k in get("DESKMAIL_SECRET_KEYS").split(",") if k.strip()),
            control_key=get("DESKMAIL_CONTROL_KEY"),
            control_amqp_url=get("DESKMAIL_CONTROL_AMQP_URL"),
            insecure_control=get("DESKMAIL_INSECURE_CONTROL").strip().lower() in ("1", "true", "yes", "on"),
            control_timeout=real("DESKMAIL_CONTROL_TIMEOUT"),
            control_max_age=real("DESKMAIL_CONTROL_MAX_AGE"),
            db_pool_max=whole("DESKMAIL_DB_POOL_MAX"),
            publish_timeout=real("DESKMAIL_PUBLISH_TIMEOUT"),
            smtp_final_reply_timeout=real("DESKMAIL_SMTP_FINAL_REPLY_TIMEOUT"),
            retry_base=real("DESKMAIL_RETRY_BASE"),
            retry_cap=real("DESKMAIL_RETRY_CAP"),
            retry_lifetime=real("DESKMAIL_RETRY_LIFETIME"),
            stale_after=real("DESKMAIL_STALE_AFTER"),
            lease_seconds=real("DESKMAIL_LEASE_SECONDS"),
            takeover_grace=real("DESKMAIL_TAKEOVER_GRACE"),
            scheduler_interval=real("DESKMAIL_SCHEDULER_INTERVAL"),
            outbound_allow=_networks("DESKMAIL_OUTBOUND_ALLOW", get("DESKMAIL_OUTBOUND_ALLOW")),
            log_level=_level(get("DESKMAIL_LOG_LEVEL")),
            global_per_day=whole_or_none("MAIL_LIMIT_PER_DAY_SMTP"),
            global_recipients_per_mail=whole_or_none("RECIPIENTS_LIMIT_PER_MAIL_SMTP"),
            log_format=get("DESKMAIL_LOG_FORMAT").strip().lower() or "text",
            metrics_port=whole_or_none("DESKMAIL_METRICS_PORT") or 0,
            metrics_host=get("DESKMAIL_METRICS_HOST"),
            metrics_dir=get("DESKMAIL_METRICS_DIR"),
            heartbeat_max_age=real("DESKMAIL_HEARTBEAT_MAX_AGE"),
            health_timeout=real("DESKMAIL_HEALTH_TIMEOUT"),
            attachment_max_bytes=whole("DESKMAIL_ATTACHMENT_MAX_BYTES"),
            attachments_max_bytes=whole("DESKMAIL_ATTACHMENTS_MAX_BYTES"),
            attachments_max_count=whole("DESKMAIL_ATTACHMENTS_MAX_COUNT"),
            attachment_retention=real("DESKMAIL_ATTACHMENT_RETENTION"),
        )

    def __post_init__(self) -> None:
        """Refuse timings that would let a live worker's mail be taken over."""
        if self.lease_seconds < 2:
            raise ConfigurationError(f"DESKMAIL_LEASE_SECONDS: {self.lease_seconds:g} is too short; give 2 or more "
                                     "(the lease is renewed every quarter of it)")
        if self.takeover_grace < self.lease_seconds / 2:
            raise ConfigurationError(
                f"DESKMAIL_TAKEOVER_GRACE: {self.takeover_grace:g} s cannot cover two missed renewals of a "
                f"{self.lease_seconds:g} s lease; give at least {self.lease_seconds / 2:g}")
        if self.stale_after <= 0:
            raise ConfigurationError("DESKMAIL_STALE_AFTER: give a number of seconds above 0")

    @property
    def renew_every(self) -> float:
        """Seconds between two renewals of the leases a worker holds."""
        return self.lease_seconds / 4
    @property
    def control_url(self) -> str:
        """Where control messages travel: the control vhost, or the data vhost when none is set."""
        return self.control_amqp_url or self.amqp_url

    def require_control_authority(self) -> None:
        """Refuse to run the control actor unauthenticated unless DESKMAIL_INSECURE_CONTROL says so."""
        if not self.control_key and not self.insecure_control:
            raise ConfigurationError(
                "DESKMAIL_CONTROL_KEY is not set, so anyone who may publish to the control queue could resume, "
                "suspend and change limits and settings: set it (the same value for workers and the deskmail "
                "command), or set DESKMAIL_INSECURE_CONTROL=1 for local development only")

    def attachment_caps(self) -> AttachmentCaps:
        """The attachment caps the publisher and admission check."""
        return AttachmentCaps(self.attachment_max_bytes, self.attachments_max_bytes, self.attachments_max_count)

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
