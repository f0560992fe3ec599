"""SQL text of deskmail: named query blocks and ordered migrations, loaded once."""

from __future__ import annotations

import functools
import re
from importlib import resources

_NAME = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


def parse_blocks(text: str) -> dict[str, str]:
    """Split a file of `-- name: X` blocks into {name: sql}."""
    parts = _NAME.split(text)
    return {name: body.strip() for name, body in zip(parts[1::2], parts[2::2])}


@functools.cache
def queries() -> dict[str, str]:
    """All named queries of workers/sql/queries.sql."""
    return parse_blocks(resources.files(__package__).joinpath("queries.sql").read_text("utf-8"))


def migrations() -> list[tuple[str, str]]:
    """(name, sql) of every migration, in order of their file names."""
    folder = resources.files(__package__).joinpath("migrations")
    files = sorted((f for f in folder.iterdir() if f.name.endswith(".sql")), key=lambda f: f.name)
    return [(f.name.removesuffix(".sql"), f.read_text("utf-8")) for f in files]
