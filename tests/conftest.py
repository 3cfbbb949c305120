"""Fixtures every test tier shares."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from consumer.devenv.postgres import postgres_server


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """One PostgreSQL server for the whole session (unit ledger contract, integration ledger
    tests, chaos); it failing to start fails the PostgreSQL tests. Started on first use."""
    with postgres_server() as url:
        yield url
