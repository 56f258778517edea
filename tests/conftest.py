"""Fixtures shared by every test suite."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.kafka import kafka_broker_for_tests
from tests.support.postgres import PostgresServer, postgres_server_for_tests


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server for the whole session: $LOYALTY_TEST_POSTGRES_URL or a throwaway one."""
    with postgres_server_for_tests() as server:
        yield server


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """Bootstrap servers of a real broker: $KAFKA_BOOTSTRAP_SERVERS or a throwaway one."""
    with kafka_broker_for_tests() as bootstrap:
        yield bootstrap


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
    ]
)
def store_env(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    """The eventsourcing environment of an empty event store, once per kind of store."""
    if request.param == "sqlite":
        return {
            "PERSISTENCE_MODULE": "eventsourcing.sqlite",
            "SQLITE_DBNAME": str(tmp_path / "ledger.sqlite"),
        }
    # Looked up here, not declared as an argument, so the server only starts when a
    # test actually runs the postgres variant.
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return server.new_database_env()
