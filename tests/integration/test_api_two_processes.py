"""Two real `loyalty api` processes on one PostgreSQL store, as deployed behind a balancer.

Each process caches the member accounts it wrote. A decision, a refusal included, must be
made against the account as stored, whatever the other process wrote meanwhile."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

from services.ledger.bootstrap import EXAMPLES
from tests.integration.test_api_service import CO, KEYS, OPS, _event, _free_port
from tests.support.postgres import PostgresServer

pytestmark = [pytest.mark.postgres, pytest.mark.integration]


def _start(env: dict[str, str], log_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    loyalty = str(Path(sys.executable).parent / "loyalty")
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [loyalty, "api", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    return proc, f"http://127.0.0.1:{port}"


def _wait_ready(proc: subprocess.Popen[bytes], base: str, log_path: Path) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(log_path.read_text())
        time.sleep(0.1)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    proc.wait(timeout=15)


@pytest.fixture(scope="module")
def two_services(
    postgres_server: PostgresServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str]]:
    """Processes A and B: one ledger database, one notifier database, default account cache.
    Each test uses its own members, so the pair is started once for the module."""
    logs = tmp_path_factory.mktemp("two-apis")
    notices = postgres_server.new_database_env()
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
    env.pop("LEDGER_ACCOUNT_CACHE", None)  # the default: a cache
    with ExitStack() as stack:
        bases = []
        # One after the other: the notifier's tables are not yet created safely by two
        # processes starting at once on a fresh database.
        for name in ("a", "b"):
            log_path = logs / f"api-{name}.log"
            proc, base = _start(env, log_path)
            stack.callback(_stop, proc)
            _wait_ready(proc, base, log_path)
            bases.append(base)
        yield bases[0], bases[1]


def _post_event(http: httpx.Client, event: dict[str, object]) -> httpx.Response:
    return http.post("/v1/events", json=event, headers=CO)


@pytest.fixture
def clients(two_services: tuple[str, str]) -> Iterator[tuple[httpx.Client, httpx.Client]]:
    base_a, base_b = two_services
    with (
        httpx.Client(base_url=base_a, timeout=10) as a,
        httpx.Client(base_url=base_b, timeout=10) as b,
    ):
        yield a, b


def test_a_full_refund_of_an_order_the_other_process_applied(
    clients: tuple[httpx.Client, httpx.Client],
) -> None:
    a, b = clients
    assert _post_event(b, _event("en-st2", "member.enrolled", "st2")).status_code == 201
    purchase = _event(
        "buy-77", "purchase.completed", "st2", order_id="o-77", currency="USD", total_minor=5000
    )
    assert _post_event(a, purchase).status_code == 201
    refund = _event(
        "ref-77", "purchase.refunded", "st2", order_id="o-77", refund_id="r-77", amount_minor=5000
    )
    refunded = _post_event(b, refund)  # B's cached copy predates the purchase
    assert refunded.status_code == 201, refunded.text  # not 409 unknown_order
    balance = b.get("/v1/members/st2/balance", headers=CO).json()
    assert (balance["available"], balance["pending"]) == (10, 0)  # the purchase is undone


def test_a_redemption_funded_by_the_other_process(
    clients: tuple[httpx.Client, httpx.Client],
) -> None:
    a, b = clients
    assert _post_event(b, _event("en-st3", "member.enrolled", "st3")).status_code == 201
    adjusted = a.post(
        "/v1/members/st3/adjustments", json={"points": 100, "reason": "goodwill"}, headers=OPS
    )
    assert adjusted.status_code == 201, adjusted.text
    assert a.get("/v1/members/st3/balance", headers=CO).json()["available"] == 110
    redeem = _event(
        "red-st3", "redemption.requested", "st3", redemption_id="x-3", reward_id="free-drink"
    )
    redeemed = _post_event(b, redeem)
    assert redeemed.status_code == 201, redeemed.text  # not 409 insufficient_points
    assert b.get("/v1/members/st3/balance", headers=CO).json()["available"] == 60


def test_a_capture_of_a_hold_the_other_process_placed(
    clients: tuple[httpx.Client, httpx.Client],
) -> None:
    a, b = clients
    assert _post_event(b, _event("en-st4", "member.enrolled", "st4")).status_code == 201
    body = {"reference": "cart-4", "points": 6, "ttl_seconds": 300}
    placed = a.post("/v1/members/st4/holds", json=body, headers=CO)
    assert placed.status_code == 201, placed.text
    hold_id = placed.json()["hold_id"]
    captured = b.post(f"/v1/holds/{hold_id}/capture", headers=CO)
    assert captured.status_code == 200, captured.text  # not 404 unknown_hold
    assert captured.json()["status"] == "captured"
    balance = a.get("/v1/members/st4/balance", headers=CO).json()
    assert (balance["available"], balance["held"]) == (4, 0)
