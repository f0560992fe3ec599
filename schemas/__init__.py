"""deskmail's contract: versioned JSON Schemas that publishers in any language read, and their validation."""

from deskmail.schemas.validation import (
    CONTROL,
    EVENT,
    SCHEMA_NAMES,
    SETTINGS,
    InvalidPayload,
    Problem,
    load_schema,
    normalize_event,
    secret_paths,
    unique_recipients,
    validate,
)

__all__ = [
    "CONTROL", "EVENT", "SCHEMA_NAMES", "SETTINGS", "InvalidPayload", "Problem", "load_schema",
    "normalize_event", "secret_paths", "unique_recipients", "validate",
]
