"""The view's entry bodies, stored compactly (services/ledger/adapters/entry_body.py): every
read gives what a fully stored body gives.

The oracle is independent of the view: each entry's message worked out again from the
stored events (`entry_message` of each account event in the notification log, at its
position), as the projection made it before it was written."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import BaseModel

from schemas.outbound import (
    BalanceOut,
    LedgerEntry,
    LotMoveOut,
    LotOut,
    OriginOut,
    PostingOut,
    ProvenanceOut,
)
from services.ledger.adapters import entry_body
from services.ledger.adapters.program_file import load_program
from services.ledger.adapters.sql_views import SqlLedgerView, _ts
from services.ledger.application.audit import audit
from services.ledger.application.entries import entry_message
from services.ledger.application.program_metrics import compute
from services.ledger.application.projection import account_topics
from services.ledger.application.service import Ledger
from services.ledger.application.verify import verify
from services.ledger.cli import _format_entry, audit_json
from tests.support.histories import (
    Event,
    activity,
    apply_at,
    at,
    cancellation,
    enrolment,
    file_item,
    purchase,
    redemption,
    referral,
    refund,
)
from tests.unit.conftest import Open

EXAMPLES = Path(__file__).resolve().parents[2] / "services/ledger/examples"
T0 = at("2026-03-02T10:00:00Z")


def _history() -> list[Event]:
    return [
        enrolment("e-ana", "m-ana", T0),
        purchase("p1", "m-ana", T0 + timedelta(hours=1), order_id="o1", total_minor=4250),
        purchase("p2", "m-ana", T0 + timedelta(hours=2), order_id="o2", total_minor=1999),
        activity("a1", "m-ana", T0 + timedelta(hours=3), name="review", reference="rv-1"),
        purchase("p3", "m-ben", T0 + timedelta(hours=4), order_id="o3", total_minor=12000),
        referral("r1", "m-ben", T0 + timedelta(hours=5), referee="m-cy"),
        purchase("p4", "m-cy", T0 + timedelta(hours=6), order_id="o4", total_minor=800),
        refund(
            "f1",
            "m-ben",
            T0 + timedelta(hours=7),
            order_id="o3",
            refund_id="rf1",
            amount_minor=3000,
        ),
        enrolment("e-ben", "m-ben", T0 + timedelta(hours=8)),
        redemption("d1", "m-ana", T0 + timedelta(days=4), redemption_id="rd1", points=20),
        redemption("d2", "m-ana", T0 + timedelta(days=4, hours=1), redemption_id="rd2", points=5),
        cancellation("c1", "m-ana", T0 + timedelta(days=4, hours=2), redemption_id="rd2"),
        refund(
            "f2", "m-ana", T0 + timedelta(days=5), order_id="o1", refund_id="rf2", amount_minor=4250
        ),
        # Late arrivals: an earlier referral of the same referee (the later one's bonus
        # reversed, the link reassigned), one that displaces the only activity of an
        # auto-enrolled referrer (its enrolment undone), an earlier earn that lifts the
        # tier of a purchase recorded before it (topped up) and comes before a redemption
        # (lots reallocated).
        referral("r2", "m-fay", T0 + timedelta(hours=4, minutes=30), referee="m-cy"),
        referral("r3", "m-hal", T0 + timedelta(hours=9), referee="m-ivy"),
        referral("r4", "m-jon", T0 + timedelta(hours=8), referee="m-ivy"),
        purchase("q2", "m-eve", T0 + timedelta(days=2), order_id="o12", total_minor=3000),
        redemption("d3", "m-eve", T0 + timedelta(days=6), redemption_id="rd3", points=20),
        purchase("q1", "m-eve", T0 + timedelta(days=1), order_id="o11", total_minor=6000),
    ]


def _feed(ledger: Ledger, clock: Any) -> None:
    now = T0
    for line, event in enumerate(_history(), 1):
        now = max(now, event.occurred_at)
        apply_at(ledger, clock, now, [file_item(event, line)])
        ledger.catch_up()
    ledger.tick(T0 + timedelta(days=3))  # pending released
    ledger.adjust("m-ana", 7, reason="goodwill", actor="ops@x", request_id="req-1")
    ledger.adjust("m-ben", -3, reason="fix", actor="ops@x", allow_negative=True)
    hold = ledger.place_hold(
        "m-ben", reference="basket-1", points=2, ttl=timedelta(minutes=5), actor="pos"
    )
    assert hold.result is not None
    ledger.capture_hold(hold.result.hold_id, points=1, actor="pos")
    hold = ledger.place_hold(
        "m-ben", reference="basket-2", points=1, ttl=timedelta(minutes=5), actor="pos"
    )
    assert hold.result is not None
    ledger.void_hold(hold.result.hold_id, reason="changed mind", actor="pos")
    ledger.place_hold(
        "m-ana", reference="basket-3", points=1, ttl=timedelta(minutes=5), actor="pos"
    )
    ledger.tick(T0 + timedelta(days=5, hours=1))  # the hold expires
    ledger.tick(T0 + timedelta(days=800))  # everything expires
    ledger.catch_up()


def _oracle(ledger: Ledger) -> dict[int, dict[str, Any]]:
    app = ledger.app
    found = app.process_recorder.select_notifications(
        start=1, limit=100_000, topics=account_topics()
    )
    return {
        n.id: entry_message(app.mapper.to_domain_event(n), n.id).model_dump(mode="json")
        for n in found
    }


def _sorted(value: Any) -> Any:
    """What a full body decoded to: its keys sorted at every level."""
    return json.loads(json.dumps(value, sort_keys=True))


@pytest.fixture
def fed(open_fresh: Open) -> Ledger:
    ledger, clock = open_fresh(load_program(EXAMPLES / "coffee.yaml"), T0)
    _feed(ledger, clock)
    return ledger


# Every kind of entry the ledger makes today (referral_reassigned is no longer made:
# `test_a_body_of_every_shape_round_trips` covers it).
KINDS = {
    "enrolled",
    "enrolment_completed",
    "enrolment_undone",
    "points_earned",
    "points_topped_up",
    "lots_reallocated",
    "pending_released",
    "points_redeemed",
    "redemption_cancelled",
    "points_reversed",
    "points_expired",
    "points_adjusted",
    "referral_reversed",
    "hold_placed",
    "hold_captured",
    "hold_voided",
    "hold_expired",
    "tier_assigned",
}
MEMBERS = ["m-ana", "m-ben", "m-cy", "m-eve", "m-fay", "m-hal", "m-ivy", "m-jon"]
INSTANTS = [T0 + timedelta(hours=h) for h in (0, 3, 5, 8, 30, 80, 100, 130, 150, 200)]


def _reads(ledger: Ledger) -> dict[str, Any]:
    """What every read that returns entries gives: the statement (as the API and `loyalty
    statement --json` give it, and as the console prints it), the audit, the published
    messages, balances as of instants, the program summary verify compares."""
    view = ledger.view
    rows = view.all_entries()
    last = max(r.position for r in rows)
    out: dict[str, Any] = {
        "all": [(r.position, r.member_id, r.seq, r.entry_type, r.effective_at) for r in rows],
        "json": [json.dumps(r.body) for r in rows],  # key order included
        "published": view.published_entries(1, last),
    }
    for member in MEMBERS:
        page = ledger.statement(member, limit=1000)
        out[f"statement {member}"] = [LedgerEntry.model_validate(r.body) for r in page]
        out[f"statement json {member}"] = [json.dumps(r.body) for r in page]
        out[f"console {member}"] = [_format_entry(r) for r in page]
        out[f"paged {member}"] = [
            json.dumps(r.body) for r in ledger.statement(member, before_seq=4, limit=2)
        ]
        found = audit(ledger, member)
        out[f"audit {member}"] = None if found is None else audit_json(found)
        out[f"as of {member}"] = [ledger.balance(member, when) for when in INSTANTS]
    out["summary"] = compute(view.all_balances(), rows, T0 + timedelta(days=10), 30)
    out["verify"] = verify(ledger.app, view, replay=False).violations
    return out


def test_every_read_gives_what_the_full_body_gives(fed: Ledger) -> None:
    oracle = _oracle(fed)
    rows = fed.view.all_entries()
    assert {r.entry_type for r in rows} >= KINDS
    assert [r.position for r in rows] == sorted(oracle)
    for row in rows:
        full = _sorted(oracle[row.position])
        assert row.body == full
        assert json.dumps(row.body) == json.dumps(full)  # the same keys in the same order
    published = fed.view.published_entries(1, max(oracle))
    assert [text for *_, text in published] == [
        json.dumps(oracle[p], sort_keys=True) for p in sorted(oracle)
    ]
    assert [(p, m, t) for p, m, t, _ in published] == [
        (r.position, r.member_id, r.entry_type) for r in rows
    ]
    # Every body was stored compactly, smaller than in full.
    stored = _stored(fed)
    assert all(text.startswith("[") for text in stored.values())
    full_size = sum(len(json.dumps(oracle[p], sort_keys=True)) for p in stored)
    assert sum(map(len, stored.values())) < 0.6 * full_size


def test_old_full_bodies_read_as_before(fed: Ledger) -> None:
    """Rows an earlier release wrote (the body in full) next to compact ones: every read
    gives the same as with every row compact."""
    compact = _reads(fed)
    oracle = _oracle(fed)
    view = fed.view
    assert isinstance(view, SqlLedgerView)
    with view._tx(commit=True) as c:
        for position in list(oracle)[::2]:  # every other row, as an earlier release wrote it
            view._run(
                c,
                f"UPDATE {view.prefix}entries SET body = ? WHERE position = ?",
                (json.dumps(oracle[position], sort_keys=True), position),
            )
    stored = _stored(fed)
    assert sum(text.startswith("{") for text in stored.values()) == (len(oracle) + 1) // 2
    assert _reads(fed) == compact
    assert compact["verify"] == []


def _stored(ledger: Ledger) -> dict[int, str]:
    view = ledger.view
    assert isinstance(view, SqlLedgerView)
    with view._tx(commit=False) as c:
        view._run(c, f"SELECT position, body FROM {view.prefix}entries")
        return {r["position"]: r["body"] for r in c.fetchall()}


# ----------------------------------------------------------------------- the codec alone


def _fields(model: type[BaseModel]) -> tuple[str, ...]:
    return tuple(sorted(model.model_fields))


def test_the_detail_key_sets_are_sorted_and_known_once() -> None:
    keys = entry_body.DETAIL_KEYS
    assert all(list(k) == sorted(k) for k in keys)
    assert len(set(keys)) == len(keys)


def test_the_entries_details_are_stored_by_number(fed: Ledger) -> None:
    """Every entry kind's details (of the ledger made today) has its key set listed."""
    stored = _stored(fed)
    by_number = [orjson.loads(text)[9] for text in stored.values()]
    assert all(type(d) is list or d == {} for d in by_number)


def test_the_key_lists_are_the_outbound_schemas() -> None:
    """A compact body lists values by these keys: a field added to the message must be
    added here (and a new format number given), or its bodies are stored in full."""
    assert _fields(LedgerEntry) == entry_body.TOP_KEYS
    assert _fields(LotOut) == entry_body.LOT_KEYS
    assert _fields(BalanceOut) == entry_body.BALANCE_KEYS
    assert _fields(ProvenanceOut) == entry_body.PROVENANCE_KEYS
    assert _fields(OriginOut) == entry_body.ORIGIN_KEYS
    assert _fields(PostingOut) == entry_body.POSTING_KEYS
    assert _fields(LotMoveOut) == entry_body.MOVE_KEYS


def _body(**changes: Any) -> dict[str, Any]:
    """A referral_reassigned entry (no longer made, still read), with `changes`."""
    when = datetime(2026, 3, 2, 10, 0, 0, 250000, tzinfo=UTC)
    entry = LedgerEntry(
        member_id="m-cy",
        seq=3,
        position=41,
        entry_type="referral_reassigned",
        effective_at=when,
        recorded_at=when + timedelta(seconds=2),
        points=0,
        postings=(PostingOut(account="member:available", amount=0),),
        moves=(LotMoveOut(lot_id="L1", amount=0),),
        lots_after=(
            LotOut(
                lot_id="L1",
                amount=10,
                remaining=10,
                status="available",
                earned_at=when,
                release_at=None,
                expires_at=None,
                source="referral",
                program_version="p@1",
            ),
        ),
        balance_after=BalanceOut(available=10, pending=0, held=0),
        provenance=ProvenanceOut(
            origin=OriginOut(channel="kafka", topic="t", partition=0, offset=7),
            event_id="r-2",
            event_type="referral.qualified",
        ),
        note="referred by m-fay now (was m-ben)",
        details={"referrer": "m-fay", "previous": "m-ben", "zero": 0, "none": None},
    )
    body = entry.model_dump(mode="json")
    body.update(changes)
    return body


COLUMNS: dict[str, Any] = {
    "position": 41,
    "member_id": "m-cy",
    "seq": 3,
    "entry_type": "referral_reassigned",
    "effective_at": _ts(datetime(2026, 3, 2, 10, 0, 0, 250000, tzinfo=UTC)) or "",
}


@pytest.mark.parametrize(
    ("changes", "compact"),
    [
        ({}, True),
        # What the columns hold, written otherwise in the body: kept in the compact body.
        ({"effective_at": "2026-03-02T12:00:00.250000+02:00"}, True),
        ({"effective_at": "2026-03-02T10:00:00.25Z"}, True),
        ({"position": None}, True),
        ({"seq": True}, True),
        ({"member_id": "m-other", "entry_type": "other"}, True),
        ({"details": {"b": "é ✓", "a": -(2**63)}}, True),
        ({"lots_after": [], "postings": [], "moves": []}, True),
        # Details of a known key set (by number), with nulls at their end.
        ({"details": {"referrer": "m-fay", "previous": "m-ben"}}, True),
        ({"details": {"points": None, "lot_id": None}}, True),
        ({"details": {"lot_id": "L1", "points": 0, "respent": None}}, True),
        ({"details": {}}, True),
        # A lot's program version the provenance's (SAME), or not; an earned_at not the
        # effective time.
        ({"provenance": {**_body()["provenance"], "program_version": "p@1"}}, True),
        ({"provenance": {**_body()["provenance"], "program_version": "p@2"}}, True),
        ({"lots_after": [{**_body()["lots_after"][0], "earned_at": "2026-01-01T00:00:00Z"}]}, True),
        ({"lots_after": [{**_body()["lots_after"][0], "program_version": None}]}, True),
        ({"lots_after": [{**_body()["lots_after"][0], "program_version": 1}]}, False),
        # Bodies a compact one cannot hold: stored in full.
        ({"details": {"n": 2**64}}, False),  # beyond 64 bits
        ({"note": "\ud800"}, False),  # a lone surrogate
        ({"extra_field": 1}, False),
        ({"balance_after": {"available": 1, "pending": 0, "held": 0, "more": 1}}, False),
        ({"moves": [{"lot_id": "L1"}]}, False),
        ({"lots_after": "no"}, False),
        ({"provenance": {**_body()["provenance"], "origin": None}}, False),
    ],
)
def test_a_body_of_every_shape_round_trips(changes: dict[str, Any], compact: bool) -> None:
    body = _body(**changes)
    text = entry_body.encode(body, **COLUMNS)
    assert text.startswith("[") is compact
    if not compact:
        assert text == json.dumps(body, sort_keys=True)  # as an earlier release wrote it
    back = entry_body.expand(text, **COLUMNS)
    assert back == body
    assert json.dumps(back) == json.dumps(body, sort_keys=True)  # keys sorted at every level
    assert [type(back[k]) for k in sorted(body)] == [type(body[k]) for k in sorted(body)]
    assert entry_body.published(text, **COLUMNS) == json.dumps(body, sort_keys=True)
