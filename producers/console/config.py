"""The console's own settings (DESKMAIL_CONSOLE_*), read once at start."""

from __future__ import annotations

import ipaddress
import os
import urllib.parse
from dataclasses import dataclass
from typing import Mapping

from deskmail.workers.config import SETTINGS


class UnsafeListen(Exception):
    """The console was asked to serve plain HTTP to the network."""


@dataclass(frozen=True)
class ConsoleConfig:
    """Where and how the console listens, and its optional single sign-on."""

    host: str = "127.0.0.1"
    port: int = 8025
    tls_cert: str = ""
    tls_key: str = ""
    behind_tls_proxy: bool = False
    forwarded_allow: str = "127.0.0.1"
    session_hours: float = 12.0
    oidc_issuer: str = ""
    oidc_client_id: str = ""
    oidc_client_secret: str = ""
    oidc_claim: str = "email"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "ConsoleConfig":
        """Build from DESKMAIL_CONSOLE_* variables."""
        env = os.environ if env is None else env
        get = lambda name: env.get(f"DESKMAIL_CONSOLE_{name}", SETTINGS[f"DESKMAIL_CONSOLE_{name}"].default)  # noqa: E731
        return cls(host=get("HOST"), port=int(get("PORT")), tls_cert=get("TLS_CERT"), tls_key=get("TLS_KEY"),
                   behind_tls_proxy=get("BEHIND_TLS_PROXY").strip().lower() in ("1", "true", "yes", "on"),
                   forwarded_allow=get("FORWARDED_ALLOW"), session_hours=float(get("SESSION_HOURS")),
                   oidc_issuer=get("OIDC_ISSUER").rstrip("/"), oidc_client_id=get("OIDC_CLIENT_ID"),
                   oidc_client_secret=get("OIDC_CLIENT_SECRET"), oidc_claim=get("OIDC_CLAIM"))

    @property
    def tls(self) -> bool:
        """True when the console itself serves HTTPS."""
        return bool(self.tls_cert and self.tls_key)

    @property
    def oidc(self) -> bool:
        """True when single sign-on is configured."""
        return bool(self.oidc_issuer and self.oidc_client_id)

    def check_listen(self) -> None:
        """Refuse plain HTTP on a non-loopback address unless a TLS proxy is declared in front, and an OIDC
        issuer reached over plain HTTP anywhere but on loopback (its keys decide who logs in)."""
        issuer = urllib.parse.urlsplit(self.oidc_issuer)
        if self.oidc and issuer.scheme != "https" and not is_loopback(issuer.hostname or ""):
            raise UnsafeListen(f"DESKMAIL_CONSOLE_OIDC_ISSUER must be an https URL, not {self.oidc_issuer!r}")
        if self.tls or self.behind_tls_proxy or is_loopback(self.host):
            return
        raise UnsafeListen(
            f"refusing to serve the console over plain HTTP on {self.host}: passwords and session cookies "
            "would cross the network in clear. Set DESKMAIL_CONSOLE_TLS_CERT and DESKMAIL_CONSOLE_TLS_KEY, "
            "or DESKMAIL_CONSOLE_BEHIND_TLS_PROXY=1 when a TLS proxy in front terminates HTTPS, "
            "or listen on 127.0.0.1")


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
