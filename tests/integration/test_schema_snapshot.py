"""workers/sql/schema.sql is the schema the migrations build on a fresh database, dumped by pg_dump.

A migration changed without the snapshot fails here with a unified diff; `make schema` regenerates it.
The migrations table's rows (which ran, and when) are data and never compared; the list of migration
files is, through the snapshot's header and the rows a fresh migration leaves.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Iterator

import psycopg
import pytest

from deploy.schema_snapshot import (MIGRATIONS, REGENERATE, SNAPSHOT, SnapshotError, difference, dump,
                                    fresh_database, migration_names, pg_dump_for)
from tests.conftest import PG_ADMIN
from deskmail.workers.store import Store, open_pool

MIGRATION_FILE = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


@pytest.fixture(scope="module")
def server() -> None:
    """PostgreSQL is there; the test fails (never skips) without it."""
    try:
        socket.create_connection(("127.0.0.1", 5432), timeout=2).close()
    except OSError:
        pytest.fail("PostgreSQL is not running on 127.0.0.1:5432 (run deploy/local-services.sh)")


@pytest.fixture(scope="module")
def pg_dump(server: None) -> str:
    """pg_dump of the server's major version; the test fails (never skips) without one."""
    try:
        return pg_dump_for(PG_ADMIN)
    except SnapshotError as exc:
        problem = str(exc)
    pytest.fail(f"cannot compare the schema snapshot: {problem}", pytrace=False)


@pytest.fixture(scope="module")
def migrated(pg_dump: str) -> Iterator[str]:
    """A database of its own, migrated from empty."""
    with fresh_database(PG_ADMIN) as url:
        yield url


def test_the_migrations_build_the_committed_schema(migrated: str, pg_dump: str) -> None:
    diff = difference(SNAPSHOT.read_text("utf-8"), dump(migrated, pg_dump))
    if diff:
        pytest.fail(f"the migrations no longer build {SNAPSHOT.name}:\n{diff}\n"
                    f"If the change is meant, regenerate the snapshot with `{REGENERATE}` and commit it "
                    f"with the migration.", pytrace=False)


def test_a_column_added_without_the_snapshot_shows_in_the_diff(pg_dump: str) -> None:
    with fresh_database(PG_ADMIN) as url:
        before = dump(url, pg_dump)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("ALTER TABLE mail ADD COLUMN unsnapshotted integer")
        diff = difference(before, dump(url, pg_dump))
    added = [line for line in diff.splitlines() if line.startswith("+") and not line.startswith("+++")]
    assert [line.strip(" +,") for line in added] == ["unsnapshotted integer"]


def test_every_migration_file_ran_once_and_the_rows_are_not_compared(migrated: str, pg_dump: str) -> None:
    pool = open_pool(migrated, 1)
    try:
        store = Store(pool)
        assert store.applied_migrations() == migration_names()
        assert store.migrate() == []  # a second run applies nothing
        before = dump(migrated, pg_dump)
        with pool.connection() as conn:
            conn.execute("INSERT INTO deskmail_migrations (name) VALUES ('9999_recorded_elsewhere')")
        after = dump(migrated, pg_dump)
        with pool.connection() as conn:
            conn.execute("DELETE FROM deskmail_migrations WHERE name = '9999_recorded_elsewhere'")
    finally:
        pool.close()
    assert after == before
    assert "9999_recorded_elsewhere" not in after


def test_the_snapshot_names_the_migration_files_in_order() -> None:
    listed = re.findall(r"^--   (\S+)$", SNAPSHOT.read_text("utf-8"), re.MULTILINE)
    assert listed == migration_names(), f"the migrations changed: regenerate the snapshot with `{REGENERATE}`"


def test_migration_files_are_numbered_once_each_from_0001_without_gaps() -> None:
    names = sorted(path.name for path in Path(MIGRATIONS).iterdir() if not path.name.startswith("__"))
    assert [name for name in names if not MIGRATION_FILE.match(name)] == []
    numbers = [int(MIGRATION_FILE.match(name).group(1)) for name in names]  # type: ignore[union-attr]
    assert numbers == list(range(1, len(names) + 1))
    assert [name.removesuffix(".sql") for name in names] == migration_names()


def test_a_pg_dump_of_another_major_version_is_refused_by_name(tmp_path: Path, server: None) -> None:
    other = tmp_path / "pg_dump"
    other.write_text("#!/bin/sh\necho 'pg_dump (PostgreSQL) 99.1'\n")
    other.chmod(0o755)
    with pytest.raises(SnapshotError, match=r"is PostgreSQL 99 but the server is \d+: .* pg_dump \d+"):
        pg_dump_for(PG_ADMIN, str(other))
