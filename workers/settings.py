"""Project mail settings: validated against the contract, secrets split off and sealed."""

from __future__ import annotations

import copy
import functools
import threading
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

from deskmail import schemas
from deskmail.workers.errors import UnknownProject
from deskmail.workers.secrets import SecretBox
from deskmail.workers.service_settings import ServiceSettings, typed
from deskmail.workers.store import Store

SCHEMA = "project-settings.v1"
T = TypeVar("T")
REDACTED = "********"


def split_secrets(document: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(settings without secrets, {"smtp.password": value, ...})."""
    public = copy.deepcopy(document)
    secrets: dict[str, Any] = {}
    for path in schemas.secret_paths(SCHEMA):
        parent: dict[str, Any] | None = public
        for part in path[:-1]:
            parent = parent.get(part) if isinstance(parent, dict) else None
        if isinstance(parent, dict) and path[-1] in parent:
            secrets[".".join(path)] = parent.pop(path[-1])
    return public, secrets


def merge_secrets(public: dict[str, Any], secrets: dict[str, Any]) -> dict[str, Any]:
    """The full settings document from its public part and its secrets."""
    full = copy.deepcopy(public)
    for dotted, value in secrets.items():
        *parents, leaf = dotted.split(".")
        node = full
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return full


def redact(public: dict[str, Any], secret_names: list[str]) -> dict[str, Any]:
    """Settings for display: every secret that is set shows as ********."""
    return merge_secrets(public, {name: REDACTED for name in secret_names})


@dataclass(frozen=True)
class ProjectSettings:
    """A project's effective settings, secrets included (never log or print this)."""

    key: str
    version: int
    service: str
    document: dict[str, Any]

    def block(self) -> dict[str, Any]:
        """The block of the chosen mail service (e.g. the `smtp` object)."""
        return self.document.get(self.service, {})

    @functools.cached_property
    def typed(self) -> ServiceSettings:
        """The chosen mail service's block as its typed settings, built once (workers.service_settings)."""
        return typed(self.service, self.block())

    def typed_as(self, kind: type[T]) -> T:
        """The typed settings, which a transport knows the class of (TypeError for another service's)."""
        found = self.typed
        if not isinstance(found, kind):
            raise TypeError(f"project {self.key!r} sends by {self.service}, not by {kind.__name__}")
        return found


class SettingsService:
    """Saves, loads and caches project settings; the cache is keyed by settings version."""

    def __init__(self, store: Store, box: Callable[[], SecretBox]) -> None:
        self.store = store
        self._box = box
        self._cache: dict[tuple[str, int], ProjectSettings] = {}
        self._lock = threading.Lock()

    def save(self, key: str, document: dict[str, Any]) -> None:
        """Validate and store a project's settings (the product's "Update")."""
        problems = schemas.validate(SCHEMA, document)
        if problems:
            raise schemas.InvalidPayload(tuple(problems))
        public, secrets = split_secrets(document)
        sealed = self._box().seal(key, secrets) if secrets else None
        public["secret_names"] = sorted(secrets)
        self.store.save_settings(key, document["mail_service"], public, sealed,
                                 document.get("time_zone", "UTC"), document.get("limits"))

    def shown(self, key: str) -> dict[str, Any]:
        """A project's own settings with secrets redacted."""
        project = self.store.get_project(key)
        if project is None or project.settings is None:
            raise UnknownProject(f"project {key!r} has no settings of its own")
        public = dict(project.settings)
        return redact(public, public.pop("secret_names", []))

    def load(self, key: str, version: int | None = None) -> ProjectSettings:
        """The full settings of a project row, from cache when the version matches."""
        if version is not None and (key, version) in self._cache:
            return self._cache[(key, version)]
        project = self.store.get_project(key)
        if project is None or project.settings is None:
            raise UnknownProject(f"project {key!r} has no settings")
        public = dict(project.settings)
        public.pop("secret_names", None)
        secrets = self._box().open(key, project.secrets) if project.secrets else {}
        loaded = ProjectSettings(key, project.settings_version, project.mail_service or "",
                                 merge_secrets(public, secrets))
        with self._lock:
            self._cache = {k: v for k, v in self._cache.items() if k[0] != key}
            self._cache[(key, loaded.version)] = loaded
        return loaded
