"""Typed settings of each mail service, built once from a validated settings document.

Defaults are read from the contract (schemas/project-settings.v1.json), never repeated here: a field the
document leaves out takes the schema's `default`, or None where the schema has none.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from typing import Any, Union

from deskmail.schemas.compiled import schema as contract

SCHEMA = "project-settings.v1"


@functools.cache
def _defaults(service: str) -> dict[str, Any]:
    """The schema's default for each property of a service's block (following one $ref)."""
    defs = contract(SCHEMA)["$defs"]
    found: dict[str, Any] = {}
    for name, prop in defs[service]["properties"].items():
        if "$ref" in prop:
            prop = {**defs[prop["$ref"].rsplit("/", 1)[-1]], **{k: v for k, v in prop.items() if k != "$ref"}}
        if "default" in prop:
            found[name] = prop["default"]
    return found


def _build(cls: type, service: str, block: dict[str, Any]) -> Any:
    """cls from the block, each missing field from the schema's default (or None)."""
    defaults = _defaults(service)
    return cls(**{f.name: block.get(f.name, defaults.get(f.name)) for f in dataclasses.fields(cls)})


@dataclass(frozen=True)
class SmtpSettings:
    """The `smtp` block."""

    host: str
    port: int
    security: str
    verify_certificate: bool
    ca_file: str | None
    auth: str
    username: str | None
    password: str | None = field(repr=False)
    timeout_seconds: float


@dataclass(frozen=True)
class ExchangeSettings:
    """The `exchange` block (on-premises EWS with a password)."""

    ews_url: str | None
    autodiscover: bool
    username: str
    password: str = field(repr=False)
    auth_type: str
    sender: str | None
    verify_certificate: bool
    ca_file: str | None
    timeout_seconds: float


@dataclass(frozen=True)
class ExchangeOAuth2Settings:
    """The `exchange_oauth2` block (Microsoft 365, app-only tokens)."""

    tenant_id: str
    client_id: str
    client_secret: str | None = field(repr=False)
    certificate: dict | None = field(repr=False)
    sender: str
    route: str
    authority_url: str
    graph_url: str
    ews_url: str
    smtp_host: str
    smtp_port: int
    ca_file: str | None
    timeout_seconds: float


@dataclass(frozen=True)
class GmailSettings:
    """The `gmail_oauth2` block (Google Workspace, SMTP XOAUTH2)."""

    service_account_key: dict | None = field(repr=False)
    client_id: str | None
    client_secret: str | None = field(repr=False)
    refresh_token: str | None = field(repr=False)
    sender: str
    token_uri: str
    smtp_host: str
    smtp_port: int
    ca_file: str | None
    timeout_seconds: float


ServiceSettings = Union[SmtpSettings, ExchangeSettings, ExchangeOAuth2Settings, GmailSettings]
CLASSES: dict[str, type] = {"smtp": SmtpSettings, "exchange": ExchangeSettings,
                            "exchange_oauth2": ExchangeOAuth2Settings, "gmail_oauth2": GmailSettings}


def typed(service: str, block: dict[str, Any]) -> ServiceSettings:
    """The typed settings of service from its (validated) block."""
    return _build(CLASSES[service], service, block)
