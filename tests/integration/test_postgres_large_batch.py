"""One batch of thousands of events in one PostgreSQL transaction.

The library's insert sends its statements in psycopg's pipeline mode, where a message
larger than the socket takes at once was left half sent and the insert never returned
(adapters/pg_recorder.py has the root cause). The ledger's recorder inserts outside
pipeline mode: 3,000 purchases in one batch (about 6,500 stored events, over 8 MB in one
statement) are saved, with the notification ids in order.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest

from services.ledger.adapters.pg_recorder import LedgerPostgresProcessRecorder
from services.ledger.application.ledger import Outcome
from services.ledger.bootstrap import EXAMPLES, Settings, build_ledger
from services.ledger.domain.clock import FixedClock
from tests.support.histories import file_item, purchase
from tests.support.postgres import PostgresServer

pytestmark = [pytest.mark.postgres, pytest.mark.integration]

EVENTS = 3000
HANG = 300.0  # seconds: a guard against a hang, far above the few seconds it takes


def test_one_batch_of_thousands_of_events_is_saved_on_postgresql(
    postgres_server: PostgresServer,
) -> None:
    start = datetime(2026, 1, 5, 12, tzinfo=UTC)
    ledger = build_ledger(
        Settings(program=EXAMPLES / "coffee.yaml"),
        clock=FixedClock(start + timedelta(days=1)),
        env=postgres_server.new_database_env(),
    )
    try:
        assert isinstance(ledger.app.recorder, LedgerPostgresProcessRecorder)
        items = [
            file_item(
                purchase(
                    f"big-{i}",
                    f"m-{i % 100}",
                    start + timedelta(seconds=i),
                    order_id=f"o-{i}",
                    total_minor=1999,
                ),
                i + 1,
            )
            for i in range(EVENTS)
        ]
        outcomes: list[Outcome] = []
        worker = threading.Thread(target=lambda: outcomes.extend(ledger.app.apply_batch(items)))
        worker.start()
        worker.join(HANG)
        assert not worker.is_alive(), "the insert did not return (psycopg's pipeline hang)"
        assert [o.status for o in outcomes] == ["applied"] * EVENTS
        ids = [n.id for n in ledger.app.process_recorder.select_notifications(start=1, limit=20000)]
        assert len(ids) > 2 * EVENTS
        assert ids == sorted(ids) == list(range(1, len(ids) + 1))
    finally:
        ledger.close()
