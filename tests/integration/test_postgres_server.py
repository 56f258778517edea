"""The PostgreSQL test plumbing works: an event store per test, isolated from the others."""

from __future__ import annotations

from uuid import UUID

import pytest
from eventsourcing.application import AggregateNotFoundError, Application
from eventsourcing.domain import Aggregate, event

from tests.support.postgres import PostgresServer

pytestmark = pytest.mark.postgres


class Card(Aggregate):
    @event("Issued")
    def __init__(self, holder: str) -> None:
        self.holder = holder


class Cards(Application[UUID]):
    def issue(self, holder: str) -> UUID:
        card = Card(holder)
        self.save(card)
        return card.id

    def holder_of(self, card_id: UUID) -> str:
        card: Card = self.repository.get(card_id)
        return card.holder


@pytest.mark.parametrize("store_env", ["postgres"], indirect=True)
def test_saves_and_reads_back_an_aggregate(store_env: dict[str, str]) -> None:
    assert store_env["PERSISTENCE_MODULE"] == "eventsourcing.postgres"
    with Cards(env=store_env) as cards:
        card_id = cards.issue("Ada")
    # A second application on the same database sees what the first one saved.
    with Cards(env=store_env) as cards:
        assert cards.holder_of(card_id) == "Ada"


def test_each_new_database_is_empty(postgres_server: PostgresServer) -> None:
    first_env = postgres_server.new_database_env()
    second_env = postgres_server.new_database_env()
    assert first_env["POSTGRES_DBNAME"] != second_env["POSTGRES_DBNAME"]
    with Cards(env=first_env) as cards:
        card_id = cards.issue("Grace")
    with Cards(env=second_env) as cards:
        with pytest.raises(AggregateNotFoundError):
            cards.repository.get(card_id)
        assert cards.recorder.max_notification_id() is None
