"""`make schema`: write workers/sql/schema.sql, the schema that workers/sql/migrations/ build.

A fresh database is made, migrated by `Store.migrate()` and dumped with `pg_dump --schema-only
--no-owner --no-privileges`; the dump is normalised (pg_dump's comments, SET lines, version banner
and \\restrict keys dropped, blank lines folded) and headed by the names of the migrations it was
built from. pg_dump's order (by kind of object, then name) depends only on the schema, so the same
migrations give the same text. tests/integration/test_schema_snapshot.py builds it the same way and
compares: a migration changed without the snapshot fails there with the difference.

`python deploy/schema_snapshot.py [--check] [--admin-url URL]`; the admin URL defaults to
DESKMAIL_TEST_PG, or postgres on 127.0.0.1:5432.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Iterator

import psycopg

ROOT = Path(__file__).resolve().parent.parent
SNAPSHOT = ROOT / "workers" / "sql" / "schema.sql"
MIGRATIONS = ROOT / "workers" / "sql" / "migrations"
REGENERATE = "make schema"
DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
HEADER = ("-- deskmail's schema as workers/sql/migrations/ build it, from pg_dump --schema-only.\n"
          f"-- Made by `{REGENERATE}`; do not edit. Migrations:\n")
# Lines of pg_dump's own outside any statement: its comments, session settings and psql meta-commands.
_DUMP_NOISE = re.compile(r"^(--|SET |SELECT pg_catalog\.set_config\(|\\(un)?restrict )")
_DOLLAR_QUOTE = re.compile(r"\$(?:[A-Za-z_][A-Za-z_0-9]*)?\$")
_CLIENT_VERSION = re.compile(r"\(PostgreSQL\) (\d+)")


class SnapshotError(Exception):
    """The schema could not be dumped as the snapshot needs (no pg_dump, or the wrong one)."""


def normalise(dump: str) -> str:
    """pg_dump's text without its comments, SET lines, banner and restrict keys; single blank lines."""
    kept: list[str] = []
    quote: str | None = None  # the dollar-quote tag of the function body we are inside, if any
    for line in dump.splitlines():
        if quote is None and _DUMP_NOISE.match(line):
            continue
        if not line.strip() and (not kept or not kept[-1]) and quote is None:
            continue
        kept.append(line.rstrip() if quote is None else line)
        for tag in _DOLLAR_QUOTE.findall(line):
            quote = tag if quote is None else (None if tag == quote else quote)
    while kept and not kept[-1]:
        kept.pop()
    return "\n".join(kept) + "\n"


def migration_names() -> list[str]:
    """The migrations in workers/sql/migrations/, in the order Store.migrate() applies them."""
    from deskmail.workers import sql
    return [name for name, _ in sql.migrations()]


def server_major(url: str) -> int:
    """The PostgreSQL server's major version."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SHOW server_version_num").fetchone()
    assert row is not None
    return int(row[0]) // 10000


def pg_dump_for(url: str, program: str = "pg_dump") -> str:
    """The path of a pg_dump of the server's major version; SnapshotError naming both versions otherwise."""
    path = shutil.which(program)
    if path is None:
        raise SnapshotError(f"{program} was not found: install the PostgreSQL client of the server's version "
                            f"(Debian: postgresql-client-{server_major(url)})")
    answer = subprocess.run([path, "--version"], capture_output=True, text=True, check=False).stdout
    found = _CLIENT_VERSION.search(answer)
    client, server = (int(found.group(1)) if found else None), server_major(url)
    if client != server:
        raise SnapshotError(f"{path} is PostgreSQL {client or answer.strip()!r} but the server is {server}: "
                            f"pg_dump's text differs between major versions, so the snapshot can only be "
                            f"made and compared with pg_dump {server} (Debian: postgresql-client-{server})")
    return path


def dump(url: str, pg_dump: str) -> str:
    """The normalised schema of the database at url, headed by the migrations it was built from."""
    done = subprocess.run([pg_dump, "--schema-only", "--no-owner", "--no-privileges", f"--dbname={url}"],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SnapshotError(f"pg_dump failed: {done.stderr.strip()}")
    return HEADER + "".join(f"--   {name}\n" for name in migration_names()) + "\n" + normalise(done.stdout)


@contextlib.contextmanager
def fresh_database(admin_url: str) -> Iterator[str]:
    """A new database migrated by Store.migrate(); dropped afterwards."""
    from deskmail.workers.store import Store, open_pool
    name = f"deskmail_schema_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = admin_url.rsplit("/", 1)[0] + "/" + name
    try:
        pool = open_pool(url, 1)
        try:
            Store(pool).migrate()
        finally:
            pool.close()
        yield url
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def difference(snapshot: str, built: str) -> str:
    """A unified diff from the committed snapshot to the schema the migrations build ('' when equal)."""
    return "".join(difflib.unified_diff(
        snapshot.splitlines(keepends=True), built.splitlines(keepends=True),
        fromfile="workers/sql/schema.sql (committed)", tofile="workers/sql/schema.sql (built by the migrations)"))


def main(argv: list[str] | None = None) -> int:
    """Write the snapshot, or with --check say whether it is current."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--check", action="store_true", help="compare with the committed snapshot, write nothing")
    parser.add_argument("--admin-url", default=os.environ.get("DESKMAIL_TEST_PG", DEFAULT_ADMIN_URL),
                        help="a database to create the scratch database from (env DESKMAIL_TEST_PG)")
    args = parser.parse_args(argv)
    try:
        pg_dump = pg_dump_for(args.admin_url)
        with fresh_database(args.admin_url) as url:
            built = dump(url, pg_dump)
    except (SnapshotError, psycopg.Error) as exc:
        print(f"schema snapshot: {exc}", file=sys.stderr)
        return 2
    if not args.check:
        SNAPSHOT.write_text(built, "utf-8")
        print(f"wrote {SNAPSHOT.relative_to(ROOT)} ({len(built.splitlines())} lines)")
        return 0
    diff = difference(SNAPSHOT.read_text("utf-8") if SNAPSHOT.exists() else "", built)
    print(diff or f"{SNAPSHOT.relative_to(ROOT)} is current", end="" if diff else "\n")
    return 1 if diff else 0


if __name__ == "__main__":
    sys.exit(main())
