"""The SMTP Settings form, built from schemas/project-settings.v1.json: each mail service's fields and
help, and the settings document back from a posted form. Secrets are write-only: a blank secret field
keeps the saved value, and no saved secret is ever put into the page."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping

from deskmail import schemas

SERVICES = {"smtp": "SMTP", "exchange": "Exchange", "exchange_oauth2": "OAuth2 Authentication Exchange",
            "gmail_oauth2": "SMTP OAuth2 GSuite/Gmail"}
COMMON = ("from_address", "from_name", "reply_to", "time_zone")


@dataclass(frozen=True)
class Field:
    """One input of the form; `name` is the dotted path in the settings document (smtp.host)."""

    name: str
    label: str
    kind: str  # text, number, decimal, select, checkbox, secret, secret_json
    help: str
    required: bool = False
    choices: tuple[str, ...] = ()
    default: Any = None


def _resolve(root: dict, node: dict) -> dict:
    merged = dict(node)
    while "$ref" in merged:
        target = root
        for part in merged.pop("$ref")[2:].split("/"):
            target = target[part]
        merged = {**target, **merged}
    return merged


def _field(root: dict, name: str, node: dict, required: bool) -> list[Field]:
    node = _resolve(root, node)
    label = name.rsplit(".", 1)[-1].replace("_", " ")
    help_ = node.get("description", "")
    if node.get("x-secret"):
        return [Field(name, label, "secret_json" if node.get("type") == "object" else "secret", help_, required)]
    if node.get("type") == "object":
        return [f for key, child in node.get("properties", {}).items()
                for f in _field(root, f"{name}.{key}", child, False)]
    if "enum" in node:
        return [Field(name, label, "select", help_, required, tuple(node["enum"]), node.get("default"))]
    if node.get("type") == "boolean":
        return [Field(name, label, "checkbox", help_, required, default=node.get("default", False))]
    if node.get("type") in ("integer", "number"):
        kind = "number" if node["type"] == "integer" else "decimal"
        return [Field(name, label, kind, help_, required, default=node.get("default"))]
    return [Field(name, label, "text", help_, required, default=node.get("default"))]


def service_fields() -> dict[str, list[Field]]:
    """{mail service: its fields} in the schema's order."""
    root = schemas.load_schema(schemas.SETTINGS)
    out = {}
    for service in SERVICES:
        block = _resolve(root, root["$defs"][service])
        required = set(block.get("required", ()))
        out[service] = [f for key, node in block["properties"].items()
                        for f in _field(root, f"{service}.{key}", node, key in required)]
    return out


def common_fields() -> list[Field]:
    """From address, name, reply-to and time zone."""
    root = schemas.load_schema(schemas.SETTINGS)
    required = set(root.get("required", ()))
    return [f for key in COMMON for f in _field(root, key, root["properties"][key], key in required)]


def shown_values(public: Mapping[str, Any] | None) -> tuple[dict[str, Any], set[str]]:
    """(non-secret values by dotted name, names of secrets that are set) of saved settings."""
    values: dict[str, Any] = {}

    def walk(node: Mapping[str, Any], prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            else:
                values[f"{prefix}{key}"] = value
    public = dict(public or {})
    secret_names = set(public.pop("secret_names", []))
    walk(public, "")
    return values, secret_names


class FormProblem(ValueError):
    """A field's value cannot be read (not a number, not JSON)."""


def document(form: Mapping[str, str], saved: Mapping[str, Any] | None) -> dict[str, Any]:
    """The settings document of a posted form; blank secrets keep the `saved` document's values."""
    service = form.get("mail_service", "")
    if service not in SERVICES:
        raise FormProblem("mail_service: choose a mail service")
    doc: dict[str, Any] = {"mail_service": service}
    for f in common_fields() + service_fields()[service]:
        value = _value(f, form, saved)
        if value is not None:
            _put(doc, f.name, value)
    limits = {k: _integer(f"limits.{k}", form.get(f"limits.{k}", "")) for k in ("per_day", "recipients_per_mail")}
    if any(v is not None for v in limits.values()):
        doc["limits"] = limits
    return doc


def _value(f: Field, form: Mapping[str, str], saved: Mapping[str, Any] | None) -> Any:
    raw = (form.get(f.name) or "").strip() if f.kind != "checkbox" else form.get(f.name)
    if f.kind in ("secret", "secret_json") and not raw:
        return _get(saved or {}, f.name)
    if f.kind == "checkbox":  # an unchecked box is False only where the default is True
        return True if raw else (False if f.default else None)
    if not raw:
        return None
    if f.kind == "number":
        return _integer(f.name, raw)
    if f.kind == "decimal":
        try:
            return float(raw)
        except ValueError as exc:
            raise FormProblem(f"{f.name}: must be a number") from exc
    if f.kind == "secret_json":
        try:
            return json.loads(raw)
        except json.JSONDecodeError as exc:
            raise FormProblem(f"{f.name}: not valid JSON ({exc.msg})") from exc
    return raw


def _integer(name: str, raw: str) -> int | None:
    if not raw.strip():
        return None
    try:
        return int(raw)
    except ValueError as exc:
        raise FormProblem(f"{name}: must be a whole number") from exc


def _put(doc: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = doc
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value


def _get(doc: Mapping[str, Any], dotted: str) -> Any:
    node: Any = doc
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, Mapping) else None
    return node
