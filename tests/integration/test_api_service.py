"""The running `loyalty api` process on PostgreSQL, driven over HTTP as an integrator would."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from services.ledger.api.auth import digest
from services.ledger.bootstrap import EXAMPLES
from tests.support.postgres import PostgresServer

pytestmark = [pytest.mark.postgres, pytest.mark.integration]

KEYS = [
    {"name": "checkout", "scopes": ["events:write", "members:read"], "sha256": digest("k-co")},
    {"name": "support-1", "scopes": ["members:read", "ops:write"], "sha256": digest("k-ops")},
    {"name": "crm", "scopes": ["members:read", "members:write"], "sha256": digest("k-crm")},
]
CO = {"X-API-Key": "k-co"}
OPS = {"X-API-Key": "k-ops"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def service(postgres_server: PostgresServer, tmp_path: Path) -> Iterator[str]:
    port = _free_port()
    notices = postgres_server.new_database_env()  # the notifier's own database
    env = {
        **os.environ,
        **postgres_server.new_database_env(),
        "LOYALTY_NOTIFIER_DB": (
            f"postgresql://{notices['POSTGRES_USER']}:{notices['POSTGRES_PASSWORD']}@"
            f"{notices['POSTGRES_HOST']}:{notices['POSTGRES_PORT']}/{notices['POSTGRES_DBNAME']}"
        ),
        "LOYALTY_PROGRAM": str(EXAMPLES / "coffee.yaml"),
        "LOYALTY_API_KEYS": json.dumps(KEYS),
        "LOYALTY_TICK_SECONDS": "0.2",
    }
    env.pop("LOYALTY_NOW", None)
    loyalty = str(Path(sys.executable).parent / "loyalty")
    log = (tmp_path / "api.log").open("wb")
    proc = subprocess.Popen(
        [loyalty, "api", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail((tmp_path / "api.log").read_text())
            time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        log.close()


def _event(event_id: str, kind: str, member: str, **data: object) -> dict[str, object]:
    now = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    return {
        "event_id": event_id,
        "type": kind,
        "occurred_at": now,
        "member_id": member,
        "data": data,
    }


def test_credit_hold_capture_and_read_over_http(service: str) -> None:
    with httpx.Client(base_url=service, timeout=10) as http:
        assert http.get("/readyz").status_code == 200
        for i, activity in enumerate(("signup", "birthday")):
            e = _event(f"act-{i}", "activity.completed", "m-42", activity=activity)
            assert http.post("/v1/events", json=e, headers=CO).status_code == 201
            assert http.post("/v1/events", json=e, headers=CO).json()["status"] == "duplicate"
        balance = http.get("/v1/members/m-42/balance", headers=CO).json()
        assert balance["available"] == 35

        def hold(i: int) -> int:
            body = {"reference": f"cart-{i}", "points": 10, "ttl_seconds": 300}
            return http.post("/v1/members/m-42/holds", json=body, headers=CO).status_code

        with ThreadPoolExecutor(max_workers=5) as pool:
            codes = sorted(pool.map(hold, range(5)))
        assert codes == [201, 201, 201, 409, 409]
        holds = http.get("/v1/members/m-42/holds", headers=CO).json()
        assert len(holds) == 3
        captured = http.post(
            f"/v1/holds/{holds[0]['hold_id']}/capture", json={"points": 4}, headers=CO
        )
        assert captured.json()["status"] == "captured"
        http.post(f"/v1/holds/{holds[1]['hold_id']}/void", headers=CO)
        balance = http.get("/v1/members/m-42/balance", headers=CO).json()
        assert (balance["available"], balance["held"]) == (5 + 6 + 10, 10)

        short = {"reference": "quick", "points": 5, "ttl_seconds": 1}
        assert http.post("/v1/members/m-42/holds", json=short, headers=CO).status_code == 201
        time.sleep(2.5)  # the service's scheduler releases it by itself
        balance = http.get("/v1/members/m-42/balance", headers=CO).json()
        assert (balance["available"], balance["held"]) == (21, 10)
        types = [
            e["entry_type"]
            for e in http.get("/v1/members/m-42/statement", headers=CO).json()["entries"]
        ]
        assert types[0] == "hold_expired"

        r = http.post(
            "/v1/members/m-42/adjustments", json={"points": 5, "reason": "dispute"}, headers=OPS
        )
        assert r.status_code == 201
        assert r.json()["actor"] == "support-1"
        assert (
            http.post(
                "/v1/members/m-42/adjustments", json={"points": 5, "reason": "x"}, headers=CO
            ).status_code
            == 403
        )
        assert "loyalty_outstanding_points" in http.get("/metrics").text


def test_notice_preferences_over_http_on_postgresql(service: str) -> None:
    """The API keeps members' contacts and opt-outs in the notifier's database."""
    crm = {"X-API-Key": "k-crm"}
    base = "/v1/members/m-7/notifications"
    with httpx.Client(base_url=service, timeout=10) as http:
        e = _event("act-7", "activity.completed", "m-7", activity="signup")
        assert http.post("/v1/events", json=e, headers=CO).status_code == 201
        contact = {"email": "m7@example.com", "name": "Sam"}

        def set_contact(_: int) -> int:
            return http.put(f"{base}/contact", json=contact, headers=crm).status_code

        with ThreadPoolExecutor(max_workers=4) as pool:  # one connection, many threads
            assert sorted(pool.map(set_contact, range(8))) == [200] * 8
        out = {"channel": "*", "kind": "monthly_statement"}
        assert http.post(f"{base}/opt-outs", json=out, headers=crm).status_code == 200
        prefs = http.get(f"{base}/preferences", headers=CO).json()
        assert (prefs["email"], prefs["opted_out"]) == ("m7@example.com", [out])
        assert http.get(f"{base}", headers=CO).json() == []  # the notifier sent nothing yet
