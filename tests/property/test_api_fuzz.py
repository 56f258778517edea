"""Schemathesis against the OpenAPI document: no request, however odd, gets a 5xx."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.core.result import Ok

from services.ledger.api.app import create_app
from services.ledger.api.auth import KeyStore, digest
from services.ledger.application.service import Ledger
from services.ledger.bootstrap import build_ledger
from services.ledger.domain.clock import FixedClock
from services.notifier.bootstrap import build_notifier
from tests.integration.test_ledger_store import PROGRAM, T0, _file, _purchase

EXAMPLES = int(os.environ.get("LOYALTY_FUZZ_EXAMPLES", "12"))
KEY = "k-all"


@pytest.fixture(scope="module")
def ledger(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ledger]:
    db: Path = tmp_path_factory.mktemp("fuzz") / "l.db"
    env = {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": str(db)}
    built = build_ledger(program=PROGRAM, clock=FixedClock(T0), env=env)
    built.app.apply_batch([_file(_purchase("e-1", "m-1", "o-1", 100_000))])
    built.projection.run()
    yield built
    built.close()


def test_no_operation_answers_5xx(ledger: Ledger, tmp_path: Path) -> None:
    keys = KeyStore.from_json(
        json.dumps(
            [
                {
                    "name": "fuzz",
                    "scopes": ["events:write", "members:read", "members:write", "ops:write"],
                    "sha256": digest(KEY),
                }
            ]
        )
    )
    notifier = build_notifier(PROGRAM, f"sqlite:///{tmp_path / 'notifier.sqlite'}", [])
    app = create_app(ledger, keys, notifier=notifier)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    failures: list[str] = []
    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result  # the document itself is valid
        operations.append(result.ok())
    assert len(operations) >= 18  # with the notification routes

    for operation in operations:

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(), with_key=st.booleans())
        def check(case: Any, with_key: bool) -> None:
            headers = {"X-API-Key": KEY} if with_key else {}
            response = case.call(headers=headers)
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.formatted_path}: {response.status_code}")
            elif response.status_code >= 400:
                body = response.json()
                assert set(body) >= {"code", "reason"}, body

        check()
    notifier.close()
    assert failures == []
