"""Issue 15: the input policy (text, ids, numbers), its statement in the schemas, the 4xx the
README promises for every odd body, and text neutralised wherever it is printed."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from typer.testing import CliRunner

import services.ledger.application.ledger
from schemas import (
    TOPIC_DEADLETTER,
    TOPIC_REDEMPTIONS,
    InvalidInput,
    parse_inbound,
    payload_digest,
)
from schemas.export import json_schemas
from schemas.text import printable
from services.ledger.adapters.kafka_relay import OutboxRelay
from services.ledger.api.app import create_app
from services.ledger.api.deps import get_ledger
from services.ledger.application.ledger import Inbound
from services.ledger.application.service import Ledger
from services.ledger.application.views import EntryRow
from services.ledger.bootstrap import EXAMPLES
from services.ledger.cli import _format_entry
from services.ledger.cli import app as cli
from services.ledger.domain.clock import FixedClock
from services.ledger.domain.program import NoticeKind
from services.ledger.domain.provenance import Origin
from services.notifier.bootstrap import build_notifier
from services.notifier.channels.printer import PrintChannel
from services.notifier.channels.smtp import SmtpChannel
from services.notifier.channels.webhook import payload
from services.notifier.contacts import Contact
from services.notifier.notices import Notice
from services.notifier.templates import render
from tests.unit.test_api import (
    CHECKOUT,
    CRM,
    PROGRAM,
    READER,
    SUPPORT,
    client,
    clock,
    credited,
    event,
    key_store,
    ledger,
    purchase,
)

__all__ = ["client", "clock", "ledger"]  # the fixtures of tests/unit/test_api.py

FORGERY = "ok\r\n#99 2026-11-20 points_adjusted       +5000"
CONTROL_TEXTS = ["a\x00b", "line\nbreak", FORGERY, "tab\there", "esc\x1b[2J", "nel\x85"]


@pytest.fixture
def notifier_client(tmp_path: Path, ledger: Ledger) -> Iterator[TestClient]:
    notifier = build_notifier(PROGRAM, f"sqlite:///{tmp_path / 'notifier.sqlite'}", [])
    app: FastAPI = create_app(ledger, key_store(), notifier=notifier)
    app.dependency_overrides[get_ledger] = lambda: ledger
    with TestClient(app) as c:
        yield c
    notifier.close()


def _code(response: Any) -> tuple[int, str]:
    return response.status_code, response.json()["code"]


# ------------------------------------------------------------------ item 2: NUL in a contact


@pytest.mark.parametrize(
    "contact",
    [
        {"email": "a\u0000b@example.com"},
        {"email": "a@example.com\r\nBcc: all@example.com"},
        {"email": "a@example.com", "name": "Ann\u0000"},
        {"email": "a@example.com", "name": "Ann\r\nBob"},
    ],
)
def test_a_contact_with_a_control_character_is_refused_with_422(
    notifier_client: TestClient, contact: dict[str, str]
) -> None:
    assert notifier_client.post(
        "/v1/events", json=purchase("e-m2", "m-2", 1000), headers=CHECKOUT
    ).is_success
    # On PostgreSQL a NUL was a 500 (psycopg.DataError); no store sees it now.
    r = notifier_client.put("/v1/members/m-2/notifications/contact", json=contact, headers=CRM)

    assert _code(r) == (422, "invalid_input")
    prefs = notifier_client.get("/v1/members/m-2/notifications/preferences", headers=READER)
    assert prefs.status_code == 404 or prefs.json()["email"] is None  # nothing stored
    clean = {"email": "a@example.com", "name": "Ann Ñoño"}
    ok = notifier_client.put("/v1/members/m-2/notifications/contact", json=clean, headers=CRM)
    assert ok.status_code == 200, ok.text


# ------------------------------------------------------- item 5: control characters, ids


@pytest.mark.parametrize("reason", CONTROL_TEXTS)
def test_control_characters_in_reasons_are_refused_with_422(
    client: TestClient, clock: FixedClock, reason: str
) -> None:
    credited(client, clock, "m-1", 50)
    hold = client.post(
        "/v1/members/m-1/holds", json={"reference": "b-1", "points": 5}, headers=CHECKOUT
    ).json()

    void = client.post(
        f"/v1/holds/{hold['hold_id']}/void", json={"reason": reason}, headers=CHECKOUT
    )
    adjust = client.post(
        "/v1/members/m-1/adjustments", json={"points": 5, "reason": reason}, headers=SUPPORT
    )
    cancelled = event("c-1", "redemption.cancelled", "m-1", redemption_id="r-1", reason=reason)
    posted = client.post("/v1/events", json=cancelled, headers=CHECKOUT)

    assert _code(void) == (422, "invalid_input")
    assert _code(adjust) == (422, "invalid_input")
    assert _code(posted) == (422, "schema")
    assert "no control character" in void.json()["reason"]
    assert "data.reason: Text should hold no control character" in posted.json()["reason"]
    statement = client.get("/v1/members/m-1/statement", headers=READER).json()
    assert all(reason not in entry["note"] for entry in statement["entries"])


@pytest.mark.parametrize(
    "member",
    ["x/../m-2", "x/./m-2", "x//m-2", "m-2/", "/m-2", "a/-b", "m\x00", "m-2/..", "m-2/balance#x"],
)
def test_member_ids_that_change_a_path_are_refused(client: TestClient, member: str) -> None:
    r = client.post("/v1/events", json=purchase("e-odd", member, 1000), headers=CHECKOUT)
    assert _code(r) == (422, "schema")
    assert r.json()["reason"].startswith("member_id: Id should be ASCII letters")
    encoded = member.replace("/", "%2F").replace("\x00", "%00").replace("#", "%23")
    assert _code(client.get(f"/v1/members/{encoded}/balance", headers=READER)) == (
        422,
        "invalid_input",
    )


def test_member_ids_with_slashes_between_segments_still_work(client: TestClient) -> None:
    for member in ("airline/MX-123", "p.1/a:b@c/d_e"):
        assert (
            client.post(
                "/v1/events", json=purchase(f"e-{member}", member, 1000), headers=CHECKOUT
            ).status_code
            == 201
        )
        assert client.get(f"/v1/members/{member}/balance", headers=READER).status_code == 200


def test_kafka_input_with_a_control_character_or_a_dot_segment_is_dead_lettered(
    ledger: Ledger,
) -> None:
    bad = [
        event("k-1", "redemption.cancelled", "m-1", redemption_id="r-1", reason=FORGERY),
        event("k-2", "redemption.requested", "m-1/../m-2", redemption_id="r-2", points=5),
    ]
    ledger.app.apply_batch(
        [
            Inbound(
                json.dumps(doc).encode(),
                Origin("kafka", topic=TOPIC_REDEMPTIONS, partition=0, offset=offset),
                b"m-1",
            )
            for offset, doc in enumerate(bad)
        ]
    )
    _, messages = OutboxRelay(ledger, "unused:9092")._next_messages()
    letters = [dict(headers) for topic, _, _, headers in messages if topic == TOPIC_DEADLETTER]
    assert [h["reason"] for h in letters] == [b"schema", b"schema"]


def test_the_statement_command_neutralises_stored_control_characters() -> None:
    # Stored before the API refused them (a void reason ends up in the entry's note).
    row = EntryRow(
        7,
        "m-1",
        3,
        "hold_voided",
        datetime(2026, 11, 20, tzinfo=UTC),
        {
            "note": f"5 points back: {FORGERY}\x00\x1b[2J",
            "points": 5,
            "balance_after": {"available": 10, "pending": 0},
            "moves": [],
            "provenance": {"origin": {"channel": "http", "actor": "ops\r\nx"}, "event_id": None},
        },
    )

    text = _format_entry(row)

    assert text.count("\n") == 1  # the entry's own two lines, nothing more
    assert not any(c in text for c in "\r\x00\x1b")
    assert "ok\\x0d\\x0a#99" in text
    assert "actor=ops\\x0d\\x0ax" in text


def test_cli_refuses_a_reason_or_actor_with_a_control_character(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOYALTY_DB", str(tmp_path / "ledger.sqlite"))
    monkeypatch.setenv("LOYALTY_PROGRAM", str(EXAMPLES / "coffee.yaml"))
    monkeypatch.setenv("LOYALTY_NOW", "2026-11-20T12:00:00Z")
    monkeypatch.delenv("PERSISTENCE_MODULE", raising=False)
    runner = CliRunner()
    events = tmp_path / "events.jsonl"
    events.write_text(json.dumps(purchase("e-1", "m-1", 1000)) + "\n")
    assert runner.invoke(cli, ["ingest", str(events)]).exit_code == 0
    for args in (["--reason", FORGERY, "--actor", "ops-1"], ["--reason", "ok", "--actor", "a\x00"]):
        result = runner.invoke(cli, ["adjust", "m-1", "8", *args])
        assert result.exit_code == 2, result.output
    assert (
        runner.invoke(cli, ["adjust", "m-1", "8", "--reason", "ok", "--actor", "o"]).exit_code == 0
    )


def _notice() -> Notice:
    return Notice(
        member_id="m-1",
        kind=NoticeKind.POINTS_AVAILABLE,
        subject="entry-3",
        window="2026-11",
        at=datetime(2026, 11, 20, tzinfo=UTC),
        cause="entry 3\r\n(forged)",
        data={"points": 5, "available": 10},
    )


def test_emails_webhooks_and_the_printer_show_control_characters_escaped() -> None:
    rendered = render(_notice(), "Coffee\r\nClub", name="Ann\r\nBcc: x\x00")

    # The subject is the text template's first line; the program name and the member's name
    # (stored before the API refused control characters) add no line anywhere.
    assert rendered.subject == "5 points are ready to spend"
    for text in (rendered.subject, rendered.text, rendered.html):
        assert "\x00" not in text
        assert "\r" not in text
    assert "Ann\\x0d\\x0aBcc: x\\x00" in rendered.text
    assert "Ann\\x0d\\x0aBcc: x\\x00" in rendered.html
    sent = json.loads(payload(_notice(), rendered))  # a webhook's body
    assert "\r" not in sent["text"]
    assert "Ann\\x0d\\x0aBcc: x\\x00" in sent["text"]
    printed: list[str] = []
    asyncio.run(PrintChannel(printed.append).send(_notice(), rendered, None))
    assert printed
    assert "\n" not in printed[0]
    assert "\r" not in printed[0]
    smtp = SmtpChannel(host="localhost", port=25, sender="l@example.com")
    unreachable = smtp.unreachable(Contact("m-1", "a\r\n@example.com", None))
    assert unreachable is not None
    assert "control" in unreachable


def test_printable_escapes_only_control_characters() -> None:
    assert printable("Ñoño €5 ✓") == "Ñoño €5 ✓"
    assert printable("a\x00b\r\n\x7f\x85\u2028") == "a\\x00b\\x0d\\x0a\\x7f\\x85\\u2028"


# ----------------------------------------------------- item 7: the README's 4xx, numbers


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b'{"reference": "b-\xff", "points": 5}', "not_utf8"),
        (b"[" * 30_000 + b"]" * 30_000, "not_json"),  # deeper than the parser goes
        (b'{"reference": ', "not_json"),
    ],
)
def test_a_body_that_is_not_json_is_422_on_every_route(
    client: TestClient, body: bytes, code: str
) -> None:
    headers = {**CHECKOUT, "Content-Type": "application/json"}
    for path in ("/v1/members/m-1/holds", "/v1/events"):
        r = client.post(path, content=body, headers=headers)
        assert _code(r) == (422, code), (path, r.text)


def test_whole_floats_are_taken_as_integers_and_stored_as_integers(
    client: TestClient, clock: FixedClock
) -> None:
    doc = purchase("e-f", "m-1", 10_000)
    as_float = {**doc, "data": {**doc["data"], "total_minor": 10_000.0}}
    assert client.post("/v1/events", json=as_float, headers=CHECKOUT).status_code == 201
    again = client.post("/v1/events", json=doc, headers=CHECKOUT)
    assert again.status_code == 200
    assert again.json()["status"] == "duplicate"
    assert payload_digest(parse_inbound(json.dumps(as_float).encode())) == payload_digest(
        parse_inbound(json.dumps(doc).encode())
    )
    clock.advance(timedelta(days=3))
    hold = client.post(
        "/v1/members/m-1/holds",
        content=b'{"reference": "b-1", "points": 10.0, "ttl_seconds": 6e2}',
        headers={**CHECKOUT, "Content-Type": "application/json"},
    )
    assert hold.status_code == 201, hold.text
    assert b'"points":10,' in hold.content
    adjust = client.post(
        "/v1/members/m-1/adjustments", json={"points": -2.0, "reason": "r"}, headers=SUPPORT
    )
    assert adjust.status_code == 201, adjust.text
    entries = client.get("/v1/members/m-1/statement", headers=READER).json()["entries"]
    assert all(type(entry["points"]) is int for entry in entries)
    for bad in (10.5, "10", True):
        r = client.post(
            "/v1/members/m-1/holds", json={"reference": "b-2", "points": bad}, headers=CHECKOUT
        )
        assert _code(r) == (422, "invalid_input")


def _openapi(client: TestClient) -> dict[str, Any]:
    document: dict[str, Any] = client.get("/openapi.json").json()
    return document


def _valid(schema: dict[str, Any], document: dict[str, Any], instance: Any) -> bool:
    # A component schema inside its document, so its $refs resolve.
    wrapper = {**schema, "components": document["components"]}
    return jsonschema_rs.Draft202012Validator(wrapper).is_valid(instance)


def test_the_schemas_state_the_rules_the_models_apply(client: TestClient) -> None:
    files = json_schemas()
    redemption = files["redemption.requested.json"]
    base = event("e-1", "redemption.requested", "m-1", redemption_id="r-1", points=5)
    both = {**base, "data": {**base["data"], "reward_id": "coffee"}}
    neither = {**base, "data": {"redemption_id": "r-1", "points": None}}
    early = {**base, "occurred_at": "1999-12-31T23:59:59Z"}
    late = {**base, "occurred_at": "2101-01-01T00:00:00Z"}
    check = jsonschema_rs.Draft202012Validator(redemption)
    assert check.is_valid(base)
    for refused in (both, neither, early, late):
        assert not check.is_valid(refused)
        with pytest.raises(Exception):  # noqa: B017, PT011 - InvalidInput
            parse_inbound(json.dumps(refused).encode())
    refund = jsonschema_rs.Draft202012Validator(files["purchase.refunded.json"])
    r = event("e-2", "purchase.refunded", "m-1", order_id="o", refund_id="r", amount_minor=5)
    assert refund.is_valid(r)
    assert not refund.is_valid({**r, "data": {**r["data"], "lines": [{"sku": "a", "quantity": 1}]}})

    document = _openapi(client)
    adjustment = document["components"]["schemas"]["AdjustmentRequest"]
    assert _valid(adjustment, document, {"points": 5, "reason": "r"})
    assert not _valid(adjustment, document, {"points": 0, "reason": "r"})
    assert not _valid(adjustment, document, {"points": 5, "reason": "a\nb"})


def test_the_contact_schema_states_the_character_policy(notifier_client: TestClient) -> None:
    document = _openapi(notifier_client)
    contact = document["components"]["schemas"]["ContactRequest"]
    assert _valid(contact, document, {"email": "a@example.com", "name": "Ann"})
    assert not _valid(contact, document, {"email": "a\u0000b@example.com"})
    assert not _valid(contact, document, {"name": "Ann\r\n"})


def test_a_parked_event_the_schema_now_refuses_is_declined_not_a_crash(
    client: TestClient, ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Parked (or rejected) under the previous schema, e.g. a member id with "#" in it.
    waiting = event("r-old", "redemption.requested", "m-1", redemption_id="r-1", points=50)
    assert client.post("/v1/events", json=waiting, headers=CHECKOUT).status_code == 202
    stricter = parse_inbound  # what services.ledger.application.ledger calls

    def parse(raw: bytes, *, topic: str | None = None) -> Any:
        if b'"r-old"' in raw:
            raise InvalidInput("schema", "member_id: String should match pattern")
        return stricter(raw, topic=topic)

    monkeypatch.setattr(services.ledger.application.ledger, "parse_inbound", parse)
    r = client.post("/v1/events", json=purchase("e-1", "m-1", 100_000), headers=CHECKOUT)

    assert r.status_code == 201  # the retry of the parked event did not fail the request
    assert ledger.app.parked() == []
    [rejection] = ledger.app.rejections()
    assert (rejection.event_id, rejection.reason) == ("r-old", "schema")
    [result] = ledger.app.redrive(actor="ops-1", event_ids=("r-old",))
    assert result.outcome == "skipped"


def test_a_request_id_with_a_control_character_is_refused(
    client: TestClient, clock: FixedClock
) -> None:
    credited(client, clock, "m-1", 50)
    odd = {"X-Request-Id": "req\t1"}  # the one control character HTTP lets through

    posted = client.post(
        "/v1/events", json=purchase("e-2", "m-1", 100), headers={**CHECKOUT, **odd}
    )
    adjusted = client.post(
        "/v1/members/m-1/adjustments",
        json={"points": 5, "reason": "r"},
        headers={**SUPPORT, **odd},
    )

    assert _code(posted) == (422, "invalid_input")
    assert _code(adjusted) == (422, "invalid_input")


def test_the_notifier_cli_refuses_and_neutralises_control_characters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = f"sqlite:///{tmp_path / 'n.sqlite'}"
    monkeypatch.setenv("LOYALTY_NOTIFIER_DB", db)
    monkeypatch.setenv("LOYALTY_PROGRAM", str(EXAMPLES / "coffee.yaml"))
    runner = CliRunner()
    for args in (["--email", "a\x00@example.com"], ["--name", "Ann\r\nBob"]):
        refused = runner.invoke(cli, ["notify", "contact", "m-1", *args])
        assert refused.exit_code == 2, refused.output
    # Stored before the CLI and the API refused them: shown escaped, on one line.
    stored = build_notifier(PROGRAM, db, [])
    stored.contacts.set_contact("m-1", "a@example.com", "Ann\r\nemail x@evil")
    stored.close()
    shown = runner.invoke(cli, ["notify", "prefs", "m-1"])
    assert shown.exit_code == 0, shown.output
    assert shown.stdout.splitlines()[0] == (
        "m-1: email a@example.com, name Ann\\x0d\\x0aemail x@evil"
    )
