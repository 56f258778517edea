"""Issue 15, item 2: a NUL in a contact was a 500 on the PostgreSQL notifier store
(psycopg.DataError); the API refuses it with 422 before any store sees it."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from services.ledger.api.app import create_app
from services.ledger.bootstrap import build_ledger
from services.ledger.domain.clock import FixedClock
from services.notifier.bootstrap import Notifier
from tests.integration.test_ledger_store import T0
from tests.integration.test_notifier_store import notifier
from tests.unit.test_api import CHECKOUT, CRM, PROGRAM, key_store, purchase

__all__ = ["notifier"]  # the fixture: SQLite and PostgreSQL


@pytest.mark.parametrize(
    "contact",
    [{"email": "a\u0000b@example.com"}, {"email": "a@example.com", "name": "A\u0000"}],
)
def test_a_nul_in_a_contact_is_422_on_every_notifier_store(
    notifier: Notifier, tmp_path: Path, contact: dict[str, str]
) -> None:
    env = {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": str(tmp_path / "l.db")}
    ledger = build_ledger(program=PROGRAM, clock=FixedClock(T0), env=env)
    app = create_app(ledger, key_store(), notifier=notifier)
    try:
        with TestClient(app) as client:
            member = client.post("/v1/events", json=purchase("e-1", "m-2", 1000), headers=CHECKOUT)
            assert member.status_code == 201
            r = client.put("/v1/members/m-2/notifications/contact", json=contact, headers=CRM)
            assert r.status_code == 422
            assert r.json()["code"] == "invalid_input"
            assert notifier.contacts.contact("m-2") is None
    finally:
        ledger.close()
