"""pytest fixtures for the local peers; use with `pytest_plugins = ["tests.peers.fixtures"]`."""

from __future__ import annotations

import pytest

from tests.peers.tlsca import TestCA


@pytest.fixture(scope="session")
def tls_ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    """One test CA for the whole session."""
    return TestCA(tmp_path_factory.mktemp("tls-ca"))
