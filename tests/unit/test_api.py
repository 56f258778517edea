"""The HTTP API route by route, with the ledger and the key store swapped in by overrides."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from services.ledger.api.app import create_app
from services.ledger.api.auth import KeyStore, digest, new_key
from services.ledger.api.deps import get_ledger
from services.ledger.api.models import OptOutRequest
from services.ledger.application import what_if as what_if_module
from services.ledger.application.service import Ledger
from services.ledger.application.verify import verify
from services.ledger.application.what_if_jobs import WhatIfJobs
from services.ledger.bootstrap import build_ledger
from services.ledger.domain.clock import FixedClock
from services.ledger.domain.program import Arrival, NoticeKind, Tier, TierQualification
from services.notifier.bootstrap import build_notifier
from services.notifier.contacts import Contact
from services.notifier.embedded import as_records, ledger_entries
from services.notifier.notices import Notice
from services.notifier.templates import Rendered
from tests.integration.test_ledger_store import PROGRAM as STORE_PROGRAM
from tests.integration.test_ledger_store import T0

PROGRAM = STORE_PROGRAM.model_copy(update={"arrival": Arrival()})  # events may wait (202)

KEYS = {
    "checkout": ("k-checkout", ["events:write", "members:read"]),
    "support-7": ("k-support", ["members:read", "ops:write"]),
    "reader": ("k-reader", ["members:read"]),
    "crm": ("k-crm", ["members:read", "members:write"]),
    "analyst": ("k-analyst", ["members:read", "ops:what-if"]),
}
CHECKOUT = {"X-API-Key": "k-checkout"}
SUPPORT = {"X-API-Key": "k-support"}
READER = {"X-API-Key": "k-reader"}
CRM = {"X-API-Key": "k-crm"}
ANALYST = {"X-API-Key": "k-analyst"}


def key_store() -> KeyStore:
    return KeyStore.from_json(
        json.dumps(
            [
                {"name": name, "scopes": scopes, "sha256": digest(key)}
                for name, (key, scopes) in KEYS.items()
            ]
        )
    )


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(T0)


@pytest.fixture
def ledger(tmp_path: Path, clock: FixedClock) -> Iterator[Ledger]:
    env = {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": str(tmp_path / "l.db")}
    built = build_ledger(program=PROGRAM, clock=clock, env=env)
    yield built
    built.close()


@pytest.fixture
def client(ledger: Ledger) -> Iterator[TestClient]:
    app: FastAPI = create_app(ledger, key_store())
    app.dependency_overrides[get_ledger] = lambda: ledger
    with TestClient(app) as c:
        yield c


def event(event_id: str, kind: str, member: str, **data: Any) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "type": kind,
        "occurred_at": T0.isoformat().replace("+00:00", "Z"),
        "member_id": member,
        "data": data,
    }


def purchase(event_id: str, member: str, cents: int) -> dict[str, Any]:
    return event(
        event_id,
        "purchase.completed",
        member,
        order_id=f"o-{event_id}",
        currency="USD",
        total_minor=cents,
    )


def credited(client: TestClient, clock: FixedClock, member: str, points: int) -> None:
    """`points` available to `member`: a purchase, then past the return window."""
    assert (
        client.post(
            "/v1/events", json=purchase(f"e-{member}", member, points * 100), headers=CHECKOUT
        ).status_code
        == 201
    )
    clock.advance(timedelta(days=3))
    assert client.get(f"/v1/members/{member}/balance", headers=READER).json()["available"] == points


# ------------------------------------------------------------------- auth


def test_no_key_is_401_unknown_key_401_wrong_scope_403(client: TestClient) -> None:
    r = client.get("/v1/members/m-1/balance")
    assert (r.status_code, r.json()["code"]) == (401, "unauthenticated")
    r = client.get("/v1/members/m-1/balance", headers={"X-API-Key": "nope"})
    assert (r.status_code, r.json()["code"]) == (401, "unauthenticated")
    r = client.post("/v1/events", json=purchase("e-1", "m-1", 100), headers=READER)
    assert (r.status_code, r.json()["code"]) == (403, "forbidden")
    assert "events:write" in r.json()["reason"]
    r = client.post(
        "/v1/members/m-1/adjustments", json={"points": 5, "reason": "x"}, headers=CHECKOUT
    )
    assert r.status_code == 403


def test_keys_are_stored_hashed_and_made_with_known_scopes() -> None:
    key, entry = new_key("pos", ["events:write"])
    assert key not in entry.model_dump_json()
    store = KeyStore([entry])
    found = store.authenticate(key)
    assert found is not None
    assert (found.name, found.scopes) == ("pos", frozenset({"events:write"}))
    assert store.authenticate(key + "x") is None
    with pytest.raises(ValueError, match="unknown scopes"):
        new_key("pos", ["admin"])


# ----------------------------------------------------------------- events


def test_post_event_applies_once_and_a_repost_returns_the_original(client: TestClient) -> None:
    body = purchase("e-1", "m-1", 5000)
    first = client.post("/v1/events", json=body, headers=CHECKOUT)
    assert first.status_code == 201
    assert first.json()["status"] == "applied"
    again = client.post("/v1/events", json=body, headers=CHECKOUT)
    assert again.status_code == 200
    assert again.json()["status"] == "duplicate"
    assert again.json()["original"] == "applied"
    assert again.json()["entries"] == first.json()["entries"]
    balance = client.get("/v1/members/m-1/balance", headers=READER).json()
    assert (balance["available"], balance["pending"]) == (0, 50)
    changed = client.post("/v1/events", json=purchase("e-1", "m-1", 9900), headers=CHECKOUT)
    assert (changed.status_code, changed.json()["code"]) == (409, "conflict")


def test_post_event_rejects_bad_input_with_4xx_and_reason(
    client: TestClient, ledger: Ledger
) -> None:
    r = client.post("/v1/events", content=b"{not json", headers=CHECKOUT)
    assert (r.status_code, r.json()["code"]) == (422, "not_json")
    bad = purchase("e-2", "m-1", -5)
    r = client.post("/v1/events", json=bad, headers=CHECKOUT)
    assert (r.status_code, r.json()["code"]) == (422, "schema")
    assert "total_minor" in r.json()["reason"]
    unknown = event("e-3", "redemption.requested", "m-9", redemption_id="x", points=5)
    r = client.post("/v1/events", json=unknown, headers=CHECKOUT)
    # Not declined: it may have overtaken the member's first purchase (another topic).
    assert r.status_code == 202, r.json()
    assert (r.status_code, r.json()["status"], r.json()["reason"]) == (
        202,
        "parked",
        "unknown_member",
    )
    activity = event("e-4", "activity.completed", "m-9", activity="nope")
    r = client.post("/v1/events", json=activity, headers=CHECKOUT)
    assert (r.status_code, r.json()["code"]) == (422, "unknown_activity")
    r = client.post("/v1/events", content=b"x" * 70_000, headers=CHECKOUT)
    assert (r.status_code, r.json()["code"]) == (413, "oversized")
    # Rejections are kept with their reason, as for Kafka ingest.
    assert {x.reason for x in ledger.app.rejections()} >= {"not_json", "schema", "unknown_activity"}


# ---------------------------------------------------------------- members


def test_balance_of_an_unknown_member_is_404(client: TestClient) -> None:
    r = client.get("/v1/members/m-404/balance", headers=READER)
    assert (r.status_code, r.json()["code"]) == (404, "unknown_member")
    r = client.get("/v1/members/bad id/balance", headers=READER)
    assert (r.status_code, r.json()["code"]) == (422, "invalid_input")


def test_balance_shows_every_figure(client: TestClient, clock: FixedClock) -> None:
    credited(client, clock, "m-1", 40)
    b = client.get("/v1/members/m-1/balance", headers=READER).json()
    assert b["available"] == 40
    assert (b["pending"], b["held"], b["lifetime_earned"], b["tier"]) == (0, 0, 40, None)
    assert b["expiring"] == {"30d": 40, "60d": 40, "90d": 40}  # expiry is 1 month
    assert b["as_of_position"] > 0


def test_balance_as_of_an_instant_is_the_balance_then(
    client: TestClient, clock: FixedClock
) -> None:
    """seq 1 enrolled and 2 purchase +10 pending (day 0); 3 released (effective day 2,
    recorded on day 3 by the review's command); 4 review +3 (day 3)."""
    assert client.post("/v1/events", json=purchase("e-1", "m-1", 1000), headers=CHECKOUT)
    clock.advance(timedelta(days=3))
    review = {**event("e-2", "activity.completed", "m-1", activity="review")}
    review["occurred_at"] = clock.now().isoformat()
    assert client.post("/v1/events", json=review, headers=CHECKOUT).status_code == 201

    def as_of(at: datetime) -> dict[str, Any]:
        r = client.get("/v1/members/m-1/balance", params={"as_of": at.isoformat()}, headers=READER)
        assert r.status_code == 200, r.text
        found: dict[str, Any] = r.json()
        assert datetime.fromisoformat(found["as_of"]) == at
        return found

    def figures(b: dict[str, Any]) -> tuple[int, int, int, int]:
        return b["available"], b["pending"], b["held"], b["lifetime_earned"]

    day = timedelta(days=1)
    before = as_of(T0 - timedelta(hours=1))  # before the member's first entry
    assert figures(before) == (0, 0, 0, 0)
    assert (before["as_of_position"], before["expiring"]) == (0, {"30d": 0, "60d": 0, "90d": 0})
    assert figures(as_of(T0)) == (0, 10, 0, 10)
    assert figures(as_of(T0 + day)) == (0, 10, 0, 10)
    released = as_of(T0 + 2 * day + timedelta(hours=12))
    assert figures(released) == (10, 0, 0, 10)
    assert released["expiring"] == {"30d": 10, "60d": 10, "90d": 10}  # on 2026-04-02
    now = client.get("/v1/members/m-1/balance", headers=READER).json()
    assert figures(now) == (13, 0, 0, 13)
    assert figures(as_of(T0 + 3 * day)) == (13, 0, 0, 13)
    assert now["as_of_position"] > released["as_of_position"] > before["as_of_position"]


@pytest.mark.parametrize(
    ("as_of", "says"),
    [
        ("yesterday", "query.as_of"),
        ("2026-03-02T12:00:00", "timezone"),  # no zone
        ("2026-02-30T12:00:00Z", "query.as_of"),
        ("9999-12-31T23:00:00-05:00", "years"),  # would overflow in UTC
        ("0001-01-01T00:00:00+05:00", "years"),
    ],
)
def test_a_bad_as_of_is_422_with_a_reason(client: TestClient, as_of: str, says: str) -> None:
    assert client.post("/v1/events", json=purchase("e-1", "m-1", 1000), headers=CHECKOUT)
    r = client.get("/v1/members/m-1/balance", params={"as_of": as_of}, headers=READER)
    assert r.status_code == 422, r.text
    assert r.json()["code"] == "invalid_input"
    assert says in r.json()["reason"]


def test_balance_as_of_for_an_unknown_member_is_404(client: TestClient) -> None:
    r = client.get("/v1/members/m-404/balance", params={"as_of": T0.isoformat()}, headers=READER)
    assert (r.status_code, r.json()["code"]) == (404, "unknown_member")


def test_statement_pages_by_cursor_with_provenance(client: TestClient) -> None:
    for i in range(4):
        client.post("/v1/events", json=purchase(f"e-{i}", "m-1", 1000), headers=CHECKOUT)
    page = client.get("/v1/members/m-1/statement?limit=3", headers=READER).json()
    assert [e["seq"] for e in page["entries"]] == [5, 4, 3]
    assert page["entries"][0]["provenance"]["event_id"] == "e-3"
    assert page["entries"][0]["provenance"]["origin"] == {
        "channel": "http",
        "topic": None,
        "partition": None,
        "offset": None,
        "line": None,
        "file": None,
        "request_id": page["entries"][0]["provenance"]["origin"]["request_id"],
        "actor": "checkout",
    }
    rest = client.get(
        f"/v1/members/m-1/statement?limit=3&cursor={page['next_cursor']}", headers=READER
    ).json()
    assert [e["seq"] for e in rest["entries"]] == [2, 1]
    assert rest["next_cursor"] is None
    r = client.get("/v1/members/m-1/statement?cursor=abc", headers=READER)
    assert r.status_code == 422


def test_lots_and_member_search(client: TestClient, clock: FixedClock) -> None:
    credited(client, clock, "m-1", 12)
    lots = client.get("/v1/members/m-1/lots", headers=READER).json()
    assert [(x["amount"], x["remaining"], x["status"]) for x in lots] == [(12, 12, "pending")]
    found = client.get("/v1/members?prefix=m-", headers=READER).json()
    assert [m["member_id"] for m in found] == ["m-1"]


# ------------------------------------------------------------------ holds


def test_hold_capture_in_part_and_the_rest_returns(client: TestClient, clock: FixedClock) -> None:
    credited(client, clock, "m-1", 100)
    r = client.post(
        "/v1/members/m-1/holds", json={"reference": "cart-1", "points": 60}, headers=CHECKOUT
    )
    assert r.status_code == 201
    hold = r.json()
    assert (hold["status"], hold["points"]) == ("held", 60)
    again = client.post(
        "/v1/members/m-1/holds", json={"reference": "cart-1", "points": 60}, headers=CHECKOUT
    )
    assert (again.status_code, again.json()["hold_id"]) == (200, hold["hold_id"])
    b = client.get("/v1/members/m-1/balance", headers=READER).json()
    assert (b["available"], b["held"]) == (40, 60)
    r = client.post(f"/v1/holds/{hold['hold_id']}/capture", json={"points": 45}, headers=CHECKOUT)
    assert r.status_code == 200
    assert (r.json()["status"], r.json()["captured"]) == ("captured", 45)
    b = client.get("/v1/members/m-1/balance", headers=READER).json()
    assert (b["available"], b["held"]) == (55, 0)
    r = client.post(f"/v1/holds/{hold['hold_id']}/void", headers=CHECKOUT)
    assert (r.status_code, r.json()["code"]) == (409, "hold_resolved")
    statement = client.get("/v1/members/m-1/statement?limit=2", headers=READER).json()
    assert [e["entry_type"] for e in statement["entries"]] == ["hold_captured", "hold_placed"]
    assert statement["entries"][0]["provenance"]["origin"]["actor"] == "checkout"


def test_hold_errors_are_4xx(client: TestClient, clock: FixedClock) -> None:
    r = client.post("/v1/members/m-9/holds", json={"reference": "c", "points": 5}, headers=CHECKOUT)
    assert (r.status_code, r.json()["code"]) == (404, "unknown_member")
    credited(client, clock, "m-1", 10)
    r = client.post(
        "/v1/members/m-1/holds", json={"reference": "c", "points": 11}, headers=CHECKOUT
    )
    assert (r.status_code, r.json()["code"]) == (409, "insufficient_points")
    r = client.post("/v1/members/m-1/holds", json={"reference": "c", "points": 0}, headers=CHECKOUT)
    assert (r.status_code, r.json()["code"]) == (422, "invalid_input")
    r = client.post(
        "/v1/members/m-1/holds", json={"reference": "c", "points": "5"}, headers=CHECKOUT
    )
    assert r.status_code == 422
    client.post("/v1/members/m-1/holds", json={"reference": "c", "points": 5}, headers=CHECKOUT)
    r = client.post("/v1/members/m-1/holds", json={"reference": "c", "points": 6}, headers=CHECKOUT)
    assert (r.status_code, r.json()["code"]) == (409, "reference_conflict")
    for path in ("/v1/holds/nope/capture", "/v1/holds/h.bS05.0123456789abcdef0123/void"):
        r = client.post(path, headers=CHECKOUT)
        assert (r.status_code, r.json()["code"]) == (404, "unknown_hold")
    assert client.get("/v1/holds/nope", headers=READER).status_code == 404


def test_a_hold_past_its_ttl_releases_itself(
    client: TestClient, clock: FixedClock, ledger: Ledger
) -> None:
    credited(client, clock, "m-1", 30)
    hold = client.post(
        "/v1/members/m-1/holds",
        json={"reference": "c", "points": 30, "ttl_seconds": 60},
        headers=CHECKOUT,
    ).json()
    clock.advance(timedelta(seconds=61))
    assert client.get(f"/v1/holds/{hold['hold_id']}", headers=READER).json()["status"] == "expired"
    r = client.post(f"/v1/holds/{hold['hold_id']}/capture", headers=CHECKOUT)
    assert (r.status_code, r.json()["code"]) == (409, "hold_resolved")
    ledger.tick()
    b = client.get("/v1/members/m-1/balance", headers=READER).json()
    assert (b["available"], b["held"]) == (30, 0)
    assert verify(ledger.app, ledger.view).ok


# ------------------------------------------------------------ adjustments


def test_adjustment_needs_ops_scope_and_a_reason_and_records_the_actor(
    client: TestClient, clock: FixedClock
) -> None:
    credited(client, clock, "m-1", 10)
    r = client.post("/v1/members/m-1/adjustments", json={"points": 5}, headers=SUPPORT)
    assert (r.status_code, r.json()["code"]) == (422, "invalid_input")
    r = client.post(
        "/v1/members/m-1/adjustments", json={"points": 0, "reason": "x"}, headers=SUPPORT
    )
    assert (r.status_code, r.json()["code"]) == (422, "invalid_points")
    r = client.post(
        "/v1/members/m-1/adjustments", json={"points": -11, "reason": "x"}, headers=SUPPORT
    )
    assert (r.status_code, r.json()["code"]) == (409, "insufficient_points")
    r = client.post(
        "/v1/members/m-1/adjustments", json={"points": 25, "reason": "late order"}, headers=SUPPORT
    )
    assert r.status_code == 201
    assert (r.json()["actor"], r.json()["balance"]["available"]) == ("support-7", 35)
    entry = client.get("/v1/members/m-1/statement?limit=1", headers=READER).json()["entries"][0]
    assert entry["entry_type"] == "points_adjusted"
    assert entry["provenance"]["origin"]["actor"] == "support-7"
    assert entry["details"]["reason"] == "late order"


# ------------------------------------------------------- program, health


def test_program_metrics(client: TestClient, clock: FixedClock) -> None:
    credited(client, clock, "m-1", 100)
    credited(client, clock, "m-2", 100)
    hold = client.post(
        "/v1/members/m-1/holds", json={"reference": "c", "points": 25}, headers=CHECKOUT
    ).json()
    client.post(f"/v1/holds/{hold['hold_id']}/capture", headers=CHECKOUT)
    m = client.get("/v1/program/metrics", headers=READER).json()
    assert (m["members"], m["issued"], m["redeemed"], m["expired"]) == (2, 200, 25, 0)
    assert m["outstanding_points"] == 175
    assert m["redemption_rate_bp"] == 1250
    assert m["members_per_tier"] == {"none": 2}
    assert m["active_members"] == 2
    assert sum(d["issued"] for d in m["per_day"]) == 200


def test_health_ready_metrics_and_openapi(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok", "checks": {}}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"store": "ok", "broker": "not configured"}
    text = client.get("/metrics").text
    assert "loyalty_outstanding_points" in text
    assert 'loyalty_api_requests_total{method="GET",route="/readyz",status="200"}' in text
    paths = client.get("/openapi.json").json()["paths"]
    for path in (
        "/v1/members/{member_id}/balance",
        "/v1/members/{member_id}/statement",
        "/v1/events",
        "/v1/members/{member_id}/holds",
        "/v1/holds/{hold_id}/capture",
        "/v1/holds/{hold_id}/void",
        "/v1/members/{member_id}/adjustments",
        "/metrics",
        "/healthz",
        "/readyz",
    ):
        assert path in paths


# -------------------------------------------------------------------- ops

DOUBLE_YAML = """
id: test
name: Test
currencies: {USD: {minor_units: 2, points_per_unit: "2"}}
earn: {pending_days: 2}
activities: {signup: {points: 5}, review: {points: 3, limit: per_day}}
referral: {referrer_points: 20, referee_points: 10}
expiry: {months_after_earn: 1}
rewards: {mug: {name: Mug, points: 30}}
"""


def test_audit_lists_entries_with_their_source_event(client: TestClient, clock: FixedClock) -> None:
    credited(client, clock, "m-1", 10)
    r = client.get("/v1/members/m-1/audit", headers=READER)
    assert r.status_code == 200
    body = r.json()
    assert body["explained"] is True
    assert (body["entries_total"], body["recorded_total"]) == (10, 10)
    earned = body["entries"][1]
    assert earned["entry"]["entry_type"] == "points_earned"
    assert earned["source_event"]["event_id"] == "e-m-1"
    assert earned["source_event"]["data"]["total_minor"] == 1000
    assert client.get("/v1/members/m-9/audit", headers=READER).status_code == 404


def finished(client: TestClient, started: Any, headers: dict[str, str]) -> dict[str, Any]:
    """Poll a what-if job (202 and its Location) until it is done or failed."""
    assert started.status_code == 202, started.json()
    location = started.headers["Location"]
    assert location == f"/v1/ops/what-if/{started.json()['job_id']}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        job: dict[str, Any] = client.get(location, headers=headers).json()
        if job["status"] in ("done", "failed"):
            return job
        time.sleep(0.02)
    raise AssertionError(f"what-if job still {job['status']} after 30 s")


def test_what_if_over_http_shows_then_applies_once(client: TestClient, clock: FixedClock) -> None:
    credited(client, clock, "m-1", 10)
    job = finished(
        client,
        client.post("/v1/ops/what-if", json={"program_yaml": DOUBLE_YAML}, headers=ANALYST),
        ANALYST,
    )
    assert (job["status"], job["actor"], job["error"]) == ("done", "analyst", None)
    r = job["result"]
    (diff,) = r["members"]
    assert (diff["actual"], diff["would_have"], diff["difference"]) == (10, 20, 10)
    assert r["tiers_recomputed"] is False  # DOUBLE_YAML has no tiers
    recorded = {"program_yaml": DOUBLE_YAML, "recorded_tiers": True}  # gone in 0.2
    assert client.post("/v1/ops/what-if", json=recorded, headers=ANALYST).status_code == 422
    body = {"program_yaml": DOUBLE_YAML, "member_id": "m-1", "apply": True}
    assert client.post("/v1/ops/what-if", json=body, headers=ANALYST).status_code == 403
    applied = finished(client, client.post("/v1/ops/what-if", json=body, headers=SUPPORT), SUPPORT)
    assert applied["result"]["posted"] == ["m-1#4"]  # the adjustment (#3: the release due)
    entry = client.get("/v1/members/m-1/statement?limit=1", headers=READER).json()["entries"][0]
    assert (entry["entry_type"], entry["points"]) == ("points_adjusted", 10)
    assert entry["provenance"]["origin"]["actor"] == "support-7"
    again = finished(client, client.post("/v1/ops/what-if", json=body, headers=SUPPORT), SUPPORT)
    assert again["result"]["posted"] == []
    bad = client.post("/v1/ops/what-if", json={"program_yaml": "id: [1"}, headers=ANALYST)
    assert (bad.status_code, bad.json()["code"]) == (422, "invalid_program")
    unknown = {"program_yaml": DOUBLE_YAML, "member_id": "m-404"}
    r404 = client.post("/v1/ops/what-if", json=unknown, headers=ANALYST)
    assert (r404.status_code, r404.json()["code"]) == (404, "unknown_member")
    verified = client.get("/v1/ops/verify", headers=SUPPORT).json()
    assert (verified["ok"], verified["violations"]) == (True, [])


def test_a_read_only_key_cannot_start_or_read_a_what_if(
    client: TestClient, clock: FixedClock
) -> None:
    """What-if replays history: `members:read` is not enough (ops:what-if or ops:write)."""
    credited(client, clock, "m-1", 10)
    r = client.post("/v1/ops/what-if", json={"program_yaml": DOUBLE_YAML}, headers=READER)
    assert (r.status_code, r.json()["code"]) == (403, "forbidden")
    assert "ops:what-if" in r.json()["reason"]
    started = client.post("/v1/ops/what-if", json={"program_yaml": DOUBLE_YAML}, headers=SUPPORT)
    location = started.headers["Location"]
    assert client.get(location, headers=READER).status_code == 403
    assert finished(client, started, SUPPORT)["status"] == "done"
    unknown = client.get(f"/v1/ops/what-if/{'0' * 32}", headers=SUPPORT)
    assert (unknown.status_code, unknown.json()["code"]) == (404, "unknown_job")


def test_what_if_reports_its_progress_until_the_report(
    client: TestClient, clock: FixedClock
) -> None:
    """The job's progress: events replayed of those to replay, then members compared."""
    credited(client, clock, "m-1", 10)
    credited(client, clock, "m-2", 30)
    seen: list[tuple[str, int, int]] = []
    real = what_if_module.what_if

    def watched(*args: Any, **kwargs: Any) -> Any:
        report = kwargs.pop("progress")

        def progress(stage: str, done: int, total: int) -> None:
            seen.append((stage, done, total))
            report(stage, done, total)

        return real(*args, progress=progress, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(what_if_module, "what_if", watched)
        started = client.post(
            "/v1/ops/what-if", json={"program_yaml": DOUBLE_YAML}, headers=ANALYST
        )
        job = finished(client, started, ANALYST)
    assert job["status"] == "done"
    stages = [stage for stage, _, _ in seen]
    assert (stages[0], stages[-1]) == ("replay", "compare")
    assert seen[-1] == ("compare", 2, 2)
    replay = [(done, total) for stage, done, total in seen if stage == "replay"]
    assert replay[-1][0] == replay[-1][1] == job["result"]["position"]
    assert job["progress"] == {"stage": "done", "done": 2, "total": 2}
    assert [m["member_id"] for m in job["result"]["members"]] == ["m-1", "m-2"]


def test_what_if_runs_are_limited_and_one_more_gets_429(
    client: TestClient, clock: FixedClock
) -> None:
    """The limit counts runs going (queued or running); one more is refused at once with
    429 and Retry-After, and accepted again once a run is done."""
    credited(client, clock, "m-1", 10)
    jobs: WhatIfJobs = client.app.state.what_if_jobs  # type: ignore[attr-defined]
    assert jobs.limit == 1
    release = threading.Event()
    real = what_if_module.what_if

    def slow(*args: Any, **kwargs: Any) -> Any:
        kwargs["progress"]("replay", 1, 3)
        assert release.wait(30)
        return real(*args, **kwargs)

    body = {"program_yaml": DOUBLE_YAML, "member_id": "m-1"}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(what_if_module, "what_if", slow)
        first = client.post("/v1/ops/what-if", json=body, headers=ANALYST)
        assert first.status_code == 202
        location = first.headers["Location"]
        deadline = time.monotonic() + 10
        while client.get(location, headers=ANALYST).json()["progress"]["done"] != 1:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        running = client.get(location, headers=ANALYST).json()
        assert (running["status"], running["progress"]) == (
            "running",
            {"stage": "replay", "done": 1, "total": 3},
        )
        assert running["result"] is None
        busy = client.post("/v1/ops/what-if", json=body, headers=SUPPORT)
        assert (busy.status_code, busy.json()["code"]) == (429, "too_many_jobs")
        assert busy.headers["Retry-After"] == "5"
        release.set()
        assert finished(client, first, ANALYST)["status"] == "done"
    again = client.post("/v1/ops/what-if", json=body, headers=SUPPORT)
    assert finished(client, again, SUPPORT)["result"]["members"][0]["difference"] == 10


def test_the_what_if_limit_is_configurable(ledger: Ledger, clock: FixedClock) -> None:
    app: FastAPI = create_app(ledger, key_store(), what_if_jobs=2)
    release = threading.Event()
    real = what_if_module.what_if

    def slow(*args: Any, **kwargs: Any) -> Any:
        assert release.wait(30)
        return real(*args, **kwargs)

    body = {"program_yaml": DOUBLE_YAML}
    with TestClient(app) as c, pytest.MonkeyPatch.context() as patch:
        patch.setattr(what_if_module, "what_if", slow)
        two = [c.post("/v1/ops/what-if", json=body, headers=ANALYST) for _ in range(2)]
        assert [r.status_code for r in two] == [202, 202]
        assert c.post("/v1/ops/what-if", json=body, headers=ANALYST).status_code == 429
        release.set()
        assert [finished(c, r, ANALYST)["status"] for r in two] == ["done", "done"]


def test_list_reads_are_bounded_with_a_documented_maximum(
    client: TestClient, clock: FixedClock
) -> None:
    """Lists whose size the caller (or the store) decides take a `limit` with a maximum:
    past it, 422 rather than an unbounded read."""
    for n in range(3):  # parked: the members are unknown yet
        waiting = event(f"r-{n}", "redemption.requested", f"m-p{n}", redemption_id="x", points=5)
        assert client.post("/v1/events", json=waiting, headers=CHECKOUT).status_code == 202
    parked = client.get("/v1/ops/parked", headers=READER).json()
    assert [p["member_id"] for p in parked] == ["m-p0", "m-p1", "m-p2"]
    first = client.get("/v1/ops/parked?limit=2", headers=READER).json()
    assert [p["member_id"] for p in first] == ["m-p0", "m-p1"]
    r = client.get("/v1/ops/parked?limit=1001", headers=READER)
    assert (r.status_code, r.json()["code"]) == (422, "invalid_input")

    credited(client, clock, "m-1", 40)
    for n in range(3):
        hold = {"reference": f"c-{n}", "points": 5}
        assert client.post("/v1/members/m-1/holds", json=hold, headers=CHECKOUT).status_code == 201
        clock.advance(timedelta(seconds=1))
    holds = client.get("/v1/members/m-1/holds?limit=2", headers=READER).json()
    assert [h["reference"] for h in holds] == ["c-2", "c-1"]  # the newest
    r = client.get("/v1/members/m-1/holds?limit=501", headers=READER)
    assert (r.status_code, r.json()["code"]) == (422, "invalid_input")
    r = client.get("/v1/members/m-1/statement?limit=501", headers=READER)
    assert (r.status_code, r.json()["code"]) == (422, "invalid_input")

    too_far = {"topic": "loyalty.purchases.v1", "from_offset": 0, "to_offset": 100_000}
    r = client.post("/v1/ops/replay", json=too_far, headers=SUPPORT)
    assert (r.status_code, r.json()["code"]) == (422, "invalid_input")
    assert "100000 offsets" in r.json()["reason"]
    fits = {**too_far, "to_offset": 99_999}  # 100000 offsets: the range is fine, no broker
    r = client.post("/v1/ops/replay", json=fits, headers=SUPPORT)
    assert (r.status_code, r.json()["code"]) == (409, "no_broker")


def test_member_ids_with_a_slash_work_when_encoded(client: TestClient) -> None:
    member = "airline/MX-123"  # a partner's member number; ids may contain "/"
    r = client.post("/v1/events", json=purchase("e-x", member, 1000), headers=CHECKOUT)
    assert r.status_code == 201
    r = client.get("/v1/members/airline%2FMX-123/balance", headers=READER)
    assert (r.status_code, r.json()["member_id"]) == (200, member)
    r = client.get("/v1/members/airline/MX-123/statement", headers=READER)
    assert [e["member_id"] for e in r.json()["entries"]] == [member, member]


def test_rebuild_and_replay_over_http(client: TestClient, clock: FixedClock) -> None:
    credited(client, clock, "m-1", 10)
    r = client.post("/v1/ops/rebuild", headers=SUPPORT)
    assert r.status_code == 200
    assert r.json()["serving"] == "view_b_"
    assert client.get("/v1/members/m-1/balance", headers=READER).json()["available"] == 10
    assert client.post("/v1/ops/rebuild", headers=READER).status_code == 403
    body = {"topic": "loyalty.purchases.v1", "from_offset": 5, "to_offset": 9}
    r = client.post("/v1/ops/replay", json=body, headers=SUPPORT)
    assert (r.status_code, r.json()["code"]) == (409, "no_broker")
    r = client.post("/v1/ops/replay", json={**body, "topic": "x"}, headers=SUPPORT)
    assert (r.status_code, r.json()["code"]) == (422, "invalid_input")
    r = client.post("/v1/ops/replay", json={**body, "to_offset": 1}, headers=SUPPORT)
    assert r.status_code == 422


def test_an_adjustment_retried_with_its_request_id_is_posted_once(
    client: TestClient, clock: FixedClock
) -> None:
    credited(client, clock, "m-1", 10)
    headers = {**SUPPORT, "X-Request-Id": "ticket-881"}
    body = {"points": 25, "reason": "ticket 881"}
    first = client.post("/v1/members/m-1/adjustments", json=body, headers=headers)
    again = client.post("/v1/members/m-1/adjustments", json=body, headers=headers)
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["entries"] == first.json()["entries"][-1:]
    assert again.json()["balance"]["available"] == 35
    other = client.post("/v1/members/m-1/adjustments", json={**body, "points": 26}, headers=headers)
    assert (other.status_code, other.json()["code"]) == (409, "request_conflict")


def test_balance_shows_the_tier_it_is_held_until_and_the_progress(
    tmp_path: Path, clock: FixedClock
) -> None:
    """With tiers in the program, the balance says how far the member is from the next."""
    program = PROGRAM.model_copy(
        update={
            "tiers": (
                Tier(id="green", name="Green", threshold=0),
                Tier(id="gold", name="Gold", threshold=100),
            )
        }
    )
    env = {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": str(tmp_path / "t.db")}
    tiered = build_ledger(program=program, clock=clock, env=env)
    try:
        app: FastAPI = create_app(tiered, key_store())
        app.dependency_overrides[get_ledger] = lambda: tiered
        with TestClient(app) as c:
            posted = c.post("/v1/events", json=purchase("e-1", "m-1", 4000), headers=CHECKOUT)
            assert posted.status_code == 201
            b = c.get("/v1/members/m-1/balance", headers=READER).json()
    finally:
        tiered.close()
    progress = b["tier_progress"]
    assert progress["qualifying_value"] == 40
    assert (progress["next_tier"], progress["next_threshold"]) == ("gold", 100)
    assert progress["period_end"] is not None


def test_a_verify_that_finds_a_drift_says_so_on_metrics(
    client: TestClient, ledger: Ledger, clock: FixedClock
) -> None:
    """Prometheus alerts on loyalty_invariant_violations (deploy/prometheus/alerts.yml)."""

    def violations() -> float:
        for line in client.get("/metrics").text.splitlines():
            if line.startswith("loyalty_invariant_violations "):
                return float(line.split()[1])
        raise AssertionError("loyalty_invariant_violations is not exported")

    credited(client, clock, "m-1", 10)
    assert client.get("/v1/ops/verify", headers=SUPPORT).json()["ok"] is True
    assert violations() == 0
    view: Any = ledger.view
    with view._tx(commit=True) as cursor:
        view._run(cursor, f"UPDATE {view.prefix}balances SET pending = pending + 1")
    report = client.get("/v1/ops/verify", headers=SUPPORT).json()
    assert report["ok"] is False
    assert violations() == len(report["violations"]) >= 1


def test_the_ledger_decides_tiers_and_the_scheduler_reviews_them(
    tmp_path: Path, clock: FixedClock
) -> None:
    """No tiers service needed: a member reaches Gold with the purchase posted over HTTP (the
    ledger decides inline), and `loyalty api`'s scheduler drops them back after the period
    with no activity."""
    import time

    program = PROGRAM.model_copy(
        update={
            "tiers": (
                Tier(id="green", name="Green", threshold=0),
                Tier(id="gold", name="Gold", threshold=100),
            ),
            "tier_qualification": TierQualification(grace_days=0),
        }
    )
    env = {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": str(tmp_path / "t.db")}
    tiered = build_ledger(program=program, clock=clock, env=env)

    def tier_becomes(c: TestClient, expected: str) -> dict[str, Any]:
        deadline = time.monotonic() + 20
        while True:
            b: dict[str, Any] = c.get("/v1/members/m-1/balance", headers=READER).json()
            if b["tier"] == expected:
                return b
            assert time.monotonic() < deadline, f"tier is {b['tier']}, not {expected}"
            time.sleep(0.05)

    try:
        app: FastAPI = create_app(tiered, key_store(), tick_seconds=0.05)
        app.dependency_overrides[get_ledger] = lambda: tiered
        with TestClient(app) as c:
            posted = c.post("/v1/events", json=purchase("e-1", "m-1", 15000), headers=CHECKOUT)
            assert posted.status_code == 201
            gold = c.get("/v1/members/m-1/balance", headers=READER).json()
            assert gold["tier"] == "gold"  # at once: no Kafka round trip
            held_until = datetime.fromisoformat(gold["tier_held_until"])
            clock.set(held_until + timedelta(days=1))
            tier_becomes(c, "green")
            entries = c.get("/v1/members/m-1/statement?limit=50", headers=READER).json()
        tiers = [
            e["details"]["tier"] for e in entries["entries"] if e["entry_type"] == "tier_assigned"
        ]
        assert tiers == ["green", "gold", "green"]  # newest first
    finally:
        tiered.close()


# ---------------------------------------------------------- notifications


class RecordingEmail:
    """An email channel that keeps what it was asked to send."""

    name = "email"

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    def unreachable(self, contact: Contact | None) -> str | None:
        return None if contact and contact.email else "no email address"

    async def send(self, notice: Notice, rendered: Rendered, contact: Contact | None) -> None:
        assert contact is not None
        self.sent.append((str(contact.email), str(notice.kind)))

    async def close(self) -> None:
        return None


def test_contacts_opt_outs_and_notices_over_http(
    tmp_path: Path, ledger: Ledger, clock: FixedClock
) -> None:
    """A CRM sets the contact and an opt-out over HTTP; the notifier then sends the notices
    the member still wants and suppresses the other; support reads what happened."""
    url = f"sqlite:///{tmp_path / 'notifier.sqlite'}"
    served = build_notifier(PROGRAM, url, [], clock.now)
    email = RecordingEmail()
    sender = build_notifier(PROGRAM, url, [email], clock.now)  # `loyalty notify run`
    app: FastAPI = create_app(ledger, key_store(), notifier=served)
    app.dependency_overrides[get_ledger] = lambda: ledger
    base = "/v1/members/m-1/notifications"
    try:
        with TestClient(app) as c:
            assert c.get(f"{base}/preferences", headers=READER).status_code == 404  # unknown
            credited(c, clock, "m-1", 50)
            ledger.tick()  # 50 points released: points_available, and the mug (30) unlocked
            contact = {"email": "ana@example.com", "name": "Ana"}
            assert c.put(f"{base}/contact", json=contact, headers=READER).status_code == 403
            r = c.put(f"{base}/contact", json=contact, headers=CRM)
            assert (r.status_code, r.json()["email"]) == (200, "ana@example.com")
            bad = c.post(f"{base}/opt-outs", json={"channel": "fax"}, headers=CRM)
            assert bad.status_code == 422
            out = {"channel": "email", "kind": "reward_unlocked"}
            r = c.post(f"{base}/opt-outs", json=out, headers=CRM)
            assert r.json()["opted_out"] == [out]

            sender.recorder.apply(as_records(ledger_entries(ledger)))
            asyncio.run(sender.sender.drain())
            assert email.sent == [("ana@example.com", "points_available")]
            states = {n["kind"]: n["state"] for n in c.get(base, headers=READER).json()}
            assert states == {"points_available": "sent", "reward_unlocked": "suppressed"}

            again = c.delete(f"{base}/opt-outs/email/reward_unlocked", headers=CRM)
            assert again.json()["opted_out"] == []
            gone = c.delete(f"{base}/opt-outs/email/reward_unlocked", headers=CRM)
            assert (gone.status_code, gone.json()["code"]) == (404, "no_opt_out")
            assert c.post(f"{base}/erase", headers=CRM).status_code == 403
            erased = c.post(f"{base}/erase", headers=SUPPORT).json()
            assert (erased["email"], erased["name"]) == (None, None)
    finally:
        served.close()
        sender.close()


def test_every_notice_kind_can_be_opted_out_over_http() -> None:
    schema = OptOutRequest.model_json_schema()["properties"]["kind"]
    assert set(schema["enum"]) == {k.value for k in NoticeKind} | {"*"}
