"""Compact stored events (services/ledger/application/compact.py): every event the ledger
writes comes back from a fresh mapper as it was written and as the library's full form
decodes; rows of the full form decode as before; nothing is left out that cannot be filled
back exactly."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest
from eventsourcing.domain import Aggregate, Snapshot
from eventsourcing.persistence import (
    JSONTranscoder,
    Mapper,
    MapperDeserialisationError,
    StoredEvent,
)
from eventsourcing.utils import get_topic, resolve_topic
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.ledger.application import compact
from services.ledger.application.compact import (
    ALIASES,
    EMPTY_SEQUENCE,
    POSITIONS,
    SHORT_NAMES,
    CompactMapper,
    CompactTranscoder,
    Derived,
    EventSpec,
)
from services.ledger.application.transcodings import VALUE_TYPES
from services.ledger.application.verify import verify
from services.ledger.bootstrap import Settings, build_ledger
from services.ledger.domain import account, parking, program_record, receipts
from services.ledger.domain.clock import FixedClock
from services.ledger.domain.provenance import Origin
from tests.unit import test_determinism_examples as examples
from tests.unit.conftest import Open
from tests.unit.test_transcodings import _apply, _mix, _open, _records, _registered


def _receipt(**fields: Any) -> Any:
    recorded: Any = receipts.InboundReceipt.Recorded  # its fields are the dataclass's
    return recorded(**fields)


def _transcoder() -> CompactTranscoder:
    transcoder = _registered(CompactTranscoder())
    assert isinstance(transcoder, CompactTranscoder)
    return transcoder


def _mapper() -> CompactMapper:
    return CompactMapper(_registered(CompactTranscoder()))


def _plain() -> Mapper[UUID]:
    return Mapper(_registered(JSONTranscoder()))


def _as_decoded(value: Any) -> Any:
    """An event's `vars` as decoding gives them back: JSON has no tuples, so an event's own
    sequences (and those in a snapshot's plain dicts) come back as lists; value objects
    make theirs tuples again."""
    if type(value) is dict:
        return {k: _as_decoded(v) for k, v in value.items()}
    if type(value) is tuple or type(value) is list:
        return [_as_decoded(v) for v in value]
    return value


def _event_classes() -> list[type[Any]]:
    found: list[type[Any]] = []
    for module in (account, parking, program_record, receipts):
        for aggregate in vars(module).values():
            if isinstance(aggregate, type) and issubclass(aggregate, Aggregate):
                for value in vars(aggregate).values():
                    if isinstance(value, type) and issubclass(value, Aggregate.Event):
                        found.append(value)
    return found


# ---------------------------------------------------------------- a varied real history


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Any, StoredEvent]]:
    """Every event a varied history wrote (inbound mix, late arrivals, parking, operator
    adjustments, holds placed, captured, voided and expired, a tier override, releases
    and expiries), each with the row it was stored as."""
    db = tmp_path_factory.mktemp("compact") / "ledger.sqlite"
    ledger = _open(db, None)
    app = ledger.app
    seen: list[tuple[Any, StoredEvent]] = []
    to_stored = app.mapper.to_stored_event

    def recording(event: Any) -> StoredEvent:
        stored = to_stored(event)
        seen.append((event, stored))
        return stored

    app.mapper.to_stored_event = recording  # type: ignore[assignment,method-assign]
    try:
        items, members = _mix(1_500, 15)
        _apply(ledger, items)
        member = members[0]
        ledger.adjust(member, 25, reason="goodwill", actor="ops", request_id="r-1")
        ledger.adjust(member, -3, reason="fix", actor="ops", allow_negative=True)
        holds = [
            ledger.place_hold(
                member, reference=f"h{i}", points=1, ttl=timedelta(hours=1), actor="ops"
            ).result.hold_id
            for i in range(3)
        ]
        ledger.capture_hold(holds[0], points=None, actor="ops")
        ledger.void_hold(holds[1], reason="changed mind", actor="ops")
        app.assign_tier(
            members[1],
            "gold",
            reason="vip",
            actor="ops",
            until=app.clock.now() + timedelta(days=30),
            locked=True,
        )
        later = app.clock.now()
        for days in (1, 40, 400):
            ledger.tick(later + timedelta(days=days))
    finally:
        app.mapper.to_stored_event = to_stored  # type: ignore[method-assign]
        ledger.close()
    return seen


def test_every_event_the_ledger_writes_reads_back_through_a_fresh_mapper(
    written: list[tuple[Any, StoredEvent]],
) -> None:
    fresh, plain = _mapper(), _plain()
    kinds = set()
    for original, stored in written:
        kinds.add(type(original).__qualname__)
        assert stored.state.startswith(b'{"@":'), stored.topic
        again = fresh.to_domain_event(stored)
        assert type(again) is type(original)
        assert vars(again) == _as_decoded(vars(original)), stored.topic
        # What the library's full form of the same event decodes to, key order and all.
        full = plain.to_domain_event(plain.to_stored_event(original))
        assert list(vars(again).items()) == list(vars(full).items()), stored.topic
    expected = {
        "MemberAccount.Enrolled",
        "MemberAccount.PointsEarned",
        "MemberAccount.PointsRedeemed",
        "MemberAccount.PointsReversed",
        "MemberAccount.PointsAdjusted",
        "MemberAccount.PointsExpired",
        "MemberAccount.PendingReleased",
        "MemberAccount.HoldPlaced",
        "MemberAccount.HoldCaptured",
        "MemberAccount.HoldVoided",
        "MemberAccount.HoldExpired",
        "MemberAccount.TierAssigned",
        "InboundReceipt.Recorded",
        "ParkedEvents.Parked",
    }
    assert expected <= kinds, expected - kinds


def test_the_entries_of_late_arrivals_read_back_through_a_fresh_mapper(
    open_fresh: Open, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The entry types only events read out of time order make (reallocations, top-ups,
    referral reversals, enrolments completed and undone), from worked examples."""
    fresh, plain = _mapper(), _plain()
    to_stored = CompactMapper.to_stored_event
    kinds = set()

    def checking(self: CompactMapper, event: Any) -> StoredEvent:
        stored = to_stored(self, event)
        kinds.add(type(event).__qualname__)
        again = fresh.to_domain_event(stored)
        full = plain.to_domain_event(plain.to_stored_event(event))
        assert list(vars(again).items()) == list(vars(full).items()), stored.topic
        assert vars(again) == _as_decoded(vars(event)), stored.topic
        return stored

    monkeypatch.setattr(CompactMapper, "to_stored_event", checking)
    examples.test_a_refunded_purchase_topped_up_by_a_late_tier_keeps_its_refunds_share(open_fresh)
    examples.test_an_enrolment_read_after_an_auto_enrolment_pays_the_signup_bonus_once(open_fresh)
    examples.test_of_two_referrals_of_one_referee_the_earliest_pays_whichever_is_read_first(
        open_fresh, "latest"
    )
    examples.test_a_cancelled_redemption_held_its_points_until_its_cancellation(open_fresh)
    expected = {
        "MemberAccount.PointsToppedUp",
        "MemberAccount.EnrolmentCompleted",
        "MemberAccount.EnrolmentUndone",
        "MemberAccount.ReferralReversed",
        "MemberAccount.LotsReallocated",
        "MemberAccount.RedemptionCancelled",
    }
    assert expected <= kinds, expected - kinds


def test_the_rows_of_a_history_are_smaller_than_the_full_form(
    written: list[tuple[Any, StoredEvent]],
) -> None:
    plain = _plain()
    compact_bytes = sum(len(stored.state) for _, stored in written)
    full_bytes = sum(len(plain.to_stored_event(event).state) for event, _ in written)
    assert compact_bytes < 0.6 * full_bytes


def test_a_store_read_back_whole_decodes_as_written(tmp_path: Path) -> None:
    """Snapshots too, through the application's own mapper after a restart."""
    items, members = _mix(2_400, 12)  # about 300 account events a member: snapshots
    ledger = _open(tmp_path / "s.sqlite", None)
    _apply(ledger, items)
    ledger.close()
    again = _open(tmp_path / "s.sqlite", None)
    try:
        records = _records(again, members)
        assert any(r.topic.endswith("Snapshot") for r in records)
        plain, mapper = _plain(), again.app.mapper
        for record in records:
            assert record.state.startswith(b'{"@":')
            event = mapper.to_domain_event(record)
            full = plain.to_domain_event(plain.to_stored_event(event))
            assert list(vars(event).items()) == list(vars(full).items())
    finally:
        again.close()


# ------------------------------------------------------------------ rows written before


def test_rows_of_the_full_form_decode_as_the_library_decodes_them() -> None:
    plain, mapper = _plain(), _mapper()
    origin = Origin("kafka", topic="t", partition=0, offset=3)
    event = _receipt(
        originator_id=uuid4(),
        originator_version=1,
        timestamp=datetime(2026, 1, 1, tzinfo=UTC),
        originator_topic=get_topic(receipts.InboundReceipt),
        event_id="e-1",
        digest="not the payload's",
        event_type="purchase.completed",
        member_id="m-1",
        outcome="applied",
        reason=None,
        detail=None,
        entries=(),
        origin=origin,
        received_at=datetime(2026, 1, 1, 0, 0, 1, tzinfo=UTC),
        payload='{"a":1}',
    )
    full = plain.to_stored_event(event)
    assert not full.state.startswith(b'{"@":')
    assert list(vars(mapper.to_domain_event(full)).items()) == list(
        vars(plain.to_domain_event(full)).items()
    )
    row = mapper.to_stored_event(event)
    assert b"not the payload's" in row.state  # not derivable: kept
    assert vars(mapper.to_domain_event(row)) == vars(plain.to_domain_event(full))


def test_a_receipts_digest_is_left_out_only_while_it_is_its_payloads() -> None:
    mapper = _mapper()
    payload = '{"event_id":"e-2","type":"member.enrolled"}'
    digest = hashlib.sha256(payload.encode()).hexdigest()
    event = _receipt(
        originator_id=uuid4(),
        originator_version=1,
        timestamp=datetime(2026, 1, 1, tzinfo=UTC),
        originator_topic=get_topic(receipts.InboundReceipt),
        event_id="e-2",
        digest=digest,
        event_type="member.enrolled",
        member_id="m-2",
        outcome="applied",
        reason=None,
        detail=None,
        entries=("m-2#1",),
        origin=Origin("file", line=2, file="x.jsonl"),
        received_at=datetime(2026, 1, 1, tzinfo=UTC),
        payload=payload,
    )
    row = mapper.to_stored_event(event)
    assert digest.encode() not in row.state
    assert b"originator_topic" not in row.state  # its own aggregate's: left out too
    assert vars(mapper.to_domain_event(row)) == _as_decoded(vars(event))


# ---------------------------------------------------------------- what is left out


class Probe(Aggregate):
    """An event class with fields of types the table must not fill (and some it must)."""

    class Happened(Aggregate.Event):
        amount: Decimal
        counts: dict[str, int]
        either: int | str
        maybe: int | None
        note: str
        n: int
        flag: bool
        items: tuple[str, ...]
        at: datetime


def _probe(**changes: Any) -> Any:
    values: dict[str, Any] = {
        "originator_id": uuid4(),
        "originator_version": 1,
        "timestamp": datetime(2026, 1, 1, tzinfo=UTC),
        "amount": Decimal(0),
        "counts": {},
        "either": 0,
        "maybe": None,
        "note": "",
        "n": 0,
        "flag": False,
        "items": (),
        "at": datetime(2026, 1, 2, tzinfo=UTC),
    }
    values.update(changes)
    return Probe.Happened(**values)


def test_a_field_of_a_type_the_table_cannot_fill_is_never_left_out() -> None:
    spec = EventSpec.of(Probe.Happened)
    assert spec.fills == {"maybe": None, "note": "", "n": 0, "flag": False, "items": EMPTY_SEQUENCE}
    mapper = _mapper()
    event = _probe()
    state = json.loads(mapper.to_stored_event(event).state)
    assert set(state) == {"@", ALIASES["timestamp"], "amount", "counts", "either", "at"}
    assert vars(mapper.to_domain_event(mapper.to_stored_event(event))) == _as_decoded(vars(event))


@pytest.mark.parametrize(
    "changes",
    [{"n": False}, {"flag": 0}, {"note": None}, {"maybe": 0}, {"items": ("",)}, {"n": 0.0}],
    ids=["False for int", "0 for bool", "None for str", "0 for int|None", "one item", "0.0"],
)
def test_a_value_like_the_empty_but_not_it_is_kept(changes: dict[str, Any]) -> None:
    mapper = _mapper()
    event = _probe(**changes)
    row = mapper.to_stored_event(event)
    [(name, _)] = changes.items()
    assert f'"{ALIASES.get(name, name)}":'.encode() in row.state
    again = vars(mapper.to_domain_event(row))
    assert again == _as_decoded(vars(event))
    assert type(again[name]) is type(_as_decoded(changes)[name])


def test_every_event_class_fills_only_what_its_annotations_say() -> None:
    """The table of what is left out, for every event class of the domain: a fill only for
    a field annotated str, int, bool, a sequence or optional, or with a plain default, or
    derived (the aggregate's topic, a receipt's digest)."""
    classes = _event_classes()
    assert len(classes) > 25
    for cls in classes:
        spec = EventSpec.of(cls)
        for field in dataclasses.fields(cls):
            fill = spec.fills.get(field.name, "<kept>")
            annotation = str(field.type)
            parts = {part.strip() for part in annotation.split("|")}
            if fill == "<kept>":
                continue
            where = f"{cls.__qualname__}.{field.name}: {annotation}"
            if field.name == "originator_topic":
                assert fill == get_topic(cls).rpartition(".")[0], where
            elif type(fill) is Derived:
                assert cls in compact.DERIVED, where
            elif field.default is not dataclasses.MISSING:
                assert fill == field.default or (fill is EMPTY_SEQUENCE and field.default == ())
            elif fill is None:
                assert "None" in parts, where
            elif fill is EMPTY_SEQUENCE:
                assert annotation.startswith(("tuple[", "list[")), where
            else:
                assert annotation == type(fill).__name__, where
                assert not fill, where


def test_a_compact_row_without_a_field_it_must_have_is_refused() -> None:
    mapper = _mapper()
    row = mapper.to_stored_event(_probe(amount=Decimal("1.5")))
    broken = dataclasses.replace(row, state=row.state.replace(b'"amount"', b'"amountx"'))
    with pytest.raises(MapperDeserialisationError, match="amount"):
        mapper.to_domain_event(broken)


# ---------------------------------------------------------------- frames


def test_the_short_names_and_positions_never_change() -> None:
    """Stored rows name their values by these: add new ones, never change one."""
    assert SHORT_NAMES == {
        "datetime_iso": "t",
        "Balances": "Ba",
        "HoldRecord": "Ho",
        "Line": "Li",
        "LinePoints": "LP",
        "Lot": "Lo",
        "LotMove": "LM",
        "OrderRecord": "Or",
        "Origin": "Og",
        "ParkedEvent": "PE",
        "Posting": "Po",
        "Provenance": "Pv",
        "Qualifying": "Q",
        "RedemptionRecord": "RR",
        "RefundStep": "RS",
        "Respent": "Rp",
        "TierChange": "TC",
    }
    assert len(set(SHORT_NAMES.values())) == len(SHORT_NAMES)
    # While a class keeps these fields it is written by position; the test tells when one
    # changed (it is then written as a dict: give it a new short name with new positions).
    for cls in VALUE_TYPES:
        code = SHORT_NAMES[cls.__name__]
        assert POSITIONS[code] == tuple(f.name for f in dataclasses.fields(cls)), cls


def test_a_plain_dict_that_looks_like_a_frame_makes_the_row_full() -> None:
    mapper = _mapper()
    for counts in ({"$t": 5}, {"$Lo": 1}, {"$zz": 2}):
        event = _probe(counts=counts)
        row = mapper.to_stored_event(event)
        assert not row.state.startswith(b'{"@":')
        assert vars(mapper.to_domain_event(row)) == _as_decoded(vars(event))


@pytest.mark.parametrize(
    "at",
    [
        datetime(2026, 3, 1, 12, 30, 0, 1, tzinfo=UTC),
        datetime(1900, 1, 1, tzinfo=UTC),
        datetime(2026, 3, 1, 12, 30, tzinfo=timezone(timedelta(hours=2))),
        datetime(2026, 3, 1, 12, 30),
    ],
    ids=["utc", "before 1970", "another offset", "naive"],
)
def test_datetimes_come_back_exactly(at: datetime) -> None:
    mapper = _mapper()
    event = _probe(at=at)
    again = mapper.to_domain_event(mapper.to_stored_event(event))
    assert again.at == at  # type: ignore[attr-defined]
    assert again.at.tzinfo == at.tzinfo  # type: ignore[attr-defined]
    assert again.at.utcoffset() == at.utcoffset()  # type: ignore[attr-defined]


def test_a_value_object_written_as_a_dict_still_decodes() -> None:
    """What the transcoder writes for a class whose fields no longer match its positions."""
    transcoder = _transcoder()
    origin = Origin("file", line=3, file="f")
    assert transcoder.decode_compact(b'{"o":{"$Og":{"channel":"file","line":3,"file":"f"}}}') == {
        "o": origin
    }
    assert transcoder.decode_compact(b'{"o":{"$Og":["file",null,null,null,3,"f"]}}') == {
        "o": origin
    }
    with pytest.raises(ValueError, match="values for"):
        transcoder.decode_compact(b'{"o":{"$Og":[1,2,3,4,5,6,7,8,9]}}')


def test_the_aliases_never_change_and_are_never_a_fields_name() -> None:
    assert list(ALIASES.values()) == [str(i) for i in range(len(ALIASES))]  # add at the end
    assert list(ALIASES)[:12] == [
        "timestamp",
        "member_id",
        "effective_at",
        "balance_after",
        "provenance",
        "note",
        "points",
        "kind",
        "reference",
        "order",
        "day",
        "event_id",
    ]
    assert len(ALIASES) == 51
    assert not any(alias.isidentifier() for alias in ALIASES.values())


def test_a_field_is_read_under_its_alias_or_its_name() -> None:
    mapper = _mapper()
    event = _probe(note="hello", n=3)
    row = mapper.to_stored_event(event)
    assert b'"5":"hello"' in row.state
    by_name = dataclasses.replace(row, state=row.state.replace(b'"5":', b'"note":'))
    assert vars(mapper.to_domain_event(by_name)) == vars(mapper.to_domain_event(row))


def test_with_the_librarys_transcoder_the_mapper_still_writes_and_reads_compact_rows() -> None:
    mapper = CompactMapper(_registered(JSONTranscoder()))
    event = _probe(note="x", items=("a",))
    row = mapper.to_stored_event(event)
    assert row.state.startswith(b'{"@":')
    assert b'"_type_":"datetime_iso"' in row.state  # the library's frames
    assert vars(mapper.to_domain_event(row)) == _as_decoded(vars(event))


def test_a_compact_row_of_an_earlier_class_version_goes_through_its_upcasters(
    written: list[tuple[Any, StoredEvent]],
) -> None:
    """A TierAssigned written at version 3 had no rank nor retracts: its upcaster gives
    rank -1 (not the 0 an int field is filled with)."""
    mapper = _mapper()
    [(event, row)] = [(e, r) for e, r in written if type(e) is account.MemberAccount.TierAssigned][
        :1
    ]
    state = json.loads(row.state)
    assert state["@"] == 4
    state["@"] = 3
    for name in ("rank", "retracts"):
        state.pop(ALIASES[name], None)
    old = dataclasses.replace(row, state=json.dumps(state, separators=(",", ":")).encode())
    again = mapper.to_domain_event(old)
    assert (again.rank, again.retracts) == (-1, 0)  # type: ignore[attr-defined]
    assert again.tier == event.tier  # type: ignore[attr-defined]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(*(st.from_type(cls) for cls in VALUE_TYPES)))
def test_every_value_type_round_trips_in_the_compact_frames(value: Any) -> None:
    transcoder = _transcoder()
    stored = transcoder.encode_compact({"v": value})
    if stored is None:  # what orjson cannot write as the library would: stored in full
        assert transcoder.decode(transcoder.encode({"v": value})) == {"v": value}
        return
    assert transcoder.decode_compact(stored) == {"v": value}
    again = transcoder.decode_compact(stored)["v"]
    assert [type(getattr(again, f.name)) for f in dataclasses.fields(again)] == [
        type(getattr(value, f.name)) for f in dataclasses.fields(value)
    ]


# ------------------------------------------------------------ short topics, packed receipts

# As the rows are written: never change one (rows are read by them).
PINNED_TOPICS = {
    "account:MemberAccount.Created": "a:C",
    "account:MemberAccount.Enrolled": "a:En",
    "account:MemberAccount.EnrolmentCompleted": "a:EC",
    "account:MemberAccount.EnrolmentUndone": "a:EU",
    "account:MemberAccount.HoldCaptured": "a:HC",
    "account:MemberAccount.HoldExpired": "a:HE",
    "account:MemberAccount.HoldPlaced": "a:HP",
    "account:MemberAccount.HoldVoided": "a:HV",
    "account:MemberAccount.LotsReallocated": "a:LR",
    "account:MemberAccount.PendingReleased": "a:PR",
    "account:MemberAccount.PointsAdjusted": "a:PA",
    "account:MemberAccount.PointsEarned": "a:PE",
    "account:MemberAccount.PointsExpired": "a:PX",
    "account:MemberAccount.PointsRedeemed": "a:PD",
    "account:MemberAccount.PointsReversed": "a:PV",
    "account:MemberAccount.PointsToppedUp": "a:PT",
    "account:MemberAccount.RedemptionCancelled": "a:RC",
    "account:MemberAccount.ReferralReassigned": "a:RA",
    "account:MemberAccount.ReferralReversed": "a:RV",
    "account:MemberAccount.TierAssigned": "a:TA",
    "parking:ParkedEvents.Created": "p:C",
    "parking:ParkedEvents.Opened": "p:O",
    "parking:ParkedEvents.Parked": "p:P",
    "parking:ParkedEvents.Unparked": "p:U",
    "program_record:ProgramRecord.Created": "g:C",
    "program_record:ProgramRecord.Recorded": "g:R",
    "receipts:InboundReceipt.Created": "r:C",
    "receipts:InboundReceipt.Reapplied": "r:A",
    "receipts:InboundReceipt.Recorded": "r:R",
    "receipts:InboundReceipt.Settled": "r:S",
    "receipts:InboundReceipt.Withdrawn": "r:W",
    "receipts:Rejection.Created": "j:C",
    "receipts:Rejection.Recorded": "j:R",
    "receipts:Rejection.Redriven": "j:D",
}


def test_every_event_class_has_a_short_topic_and_they_never_change() -> None:
    assert {
        f"services.ledger.domain.{topic}": short for topic, short in PINNED_TOPICS.items()
    } == compact.SHORT_TOPICS
    shorts = list(compact.SHORT_TOPICS.values())
    assert len(set(shorts)) == len(shorts)
    for topic, short in compact.SHORT_TOPICS.items():
        assert get_topic(resolve_topic(topic)) == topic
        module = short.partition(":")[0]
        assert "." not in module  # never a module's topic
        assert module not in sys.modules
    for cls in _event_classes():
        if cls.__module__.startswith("services.") and cls.__name__ not in ("Event", "Entry"):
            assert get_topic(cls) in compact.SHORT_TOPICS, cls


def test_every_event_is_stored_under_its_short_topic_and_reads_back_under_either(
    written: list[tuple[Any, StoredEvent]],
) -> None:
    fresh = _mapper()
    kinds = set()
    for original, stored in written:
        topic = get_topic(type(original))
        if topic == get_topic(Snapshot):  # the library's class: its own topic
            assert stored.topic == topic
            assert compact.stored_topics(type(original)) == [topic]
        else:
            assert stored.topic == compact.SHORT_TOPICS[topic]
            assert compact.stored_topics(type(original)) == [topic, stored.topic]
        assert compact.long_topic(stored.topic) == topic
        again = fresh.to_domain_event(stored)
        assert type(again) is type(original)
        assert vars(again) == _as_decoded(vars(original)), topic
        # The same row under the class's own topic (as written before) reads the same.
        old = dataclasses.replace(stored, topic=topic)
        assert vars(fresh.to_domain_event(old)) == vars(again), topic
        kinds.add(type(original))
    assert receipts.InboundReceipt.Recorded in kinds


def test_a_row_of_the_librarys_form_under_a_short_topic_still_reads() -> None:
    event = _receipt(
        originator_id=uuid4(),
        originator_version=1,
        timestamp=datetime.now(UTC),
        originator_topic=get_topic(receipts.InboundReceipt),
        reason=None,
        detail=None,
        event_id="e-1",
        event_type="purchase.completed",
        member_id="m-1",
        outcome="applied",
        entries=("m-1#1",),
        origin=Origin("kafka", topic="t", partition=0, offset=3),
        received_at=datetime.now(UTC),
        payload='{"a":1}',
        digest=hashlib.sha256(b'{"a":1}').hexdigest(),
    )
    full = _plain().to_stored_event(event)
    short = dataclasses.replace(full, topic="r:R")
    assert vars(_mapper().to_domain_event(short)) == vars(_plain().to_domain_event(full))


@pytest.mark.parametrize(
    ("payload", "packed"),
    [
        ('{"data":{"x":1},"event_id":"e"}', "17'"),
        ('{"note":"it\'s"}', "17"),  # a ' in it: kept as it is
        ('{"note":"a \\"b\\""}', "17"),  # a backslash: kept
        ("", "17"),
        ("{}", "17"),  # nothing to gain
        ("'", "17"),
    ],
)
def test_a_receipt_is_packed_only_where_it_unpacks_exactly(payload: str, packed: str) -> None:
    event = _receipt(
        originator_id=uuid4(),
        originator_version=1,
        timestamp=datetime.now(UTC),
        originator_topic=get_topic(receipts.InboundReceipt),
        reason=None,
        detail=None,
        event_id="e-1",
        event_type="purchase.completed",
        member_id="m-1",
        outcome="applied",
        entries=("m-1#1",),
        origin=None,
        received_at=datetime.now(UTC),
        payload=payload,
        digest=hashlib.sha256(payload.encode()).hexdigest(),
    )
    stored = _mapper().to_stored_event(event)
    state = json.loads(stored.state)
    assert packed in state
    assert not ({"17", "17'"} - {packed}) & state.keys()
    again = _mapper().to_domain_event(stored)
    assert vars(again) == _as_decoded(vars(event))
    assert vars(again)["digest"] == event.digest


def test_a_store_with_rows_written_before_reads_as_one_written_now(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows under the classes' own topics and unpacked receipts (as written before), then
    rows written now, in one store: every read gives what a store written now alone gives
    (statements, balances now and as of an instant, lots, parked events, verify and its
    replay, which read the notification log by topic)."""
    items, members = _mix(1_500, 15)
    now = datetime.now(UTC) + timedelta(days=1)

    def opened(db: Path) -> Any:
        env = {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": str(db)}
        return build_ledger(Settings(db=db), clock=FixedClock(now), env=env)

    mixed_db, fresh_db = tmp_path / "mixed.sqlite", tmp_path / "fresh.sqlite"
    with monkeypatch.context() as before_now:
        before_now.setattr(compact, "SHORT_TOPICS", {})
        before_now.setattr(compact, "PACKED", {})
        before = opened(mixed_db)
        _apply(before, items[:750])
        old_rows = list(before.app.recorder.select_notifications(start=1, limit=10**6))
        before.close()
    assert all(r.topic.startswith("services.") for r in old_rows)
    assert any(b'"17":' in r.state for r in old_rows)
    after = opened(mixed_db)
    _apply(after, items[750:])
    fresh = opened(fresh_db)
    _apply(fresh, items)
    try:
        rows = list(after.app.recorder.select_notifications(start=1, limit=10**6))
        assert {r.topic for r in rows} & set(compact.SHORT_TOPICS.values())
        assert any(b'"17\'":' in r.state for r in rows)
        reads = []
        for ledger in (after, fresh):
            ledger.catch_up()
            at = now - timedelta(hours=12)
            entries = [ledger.statement(m, limit=10**4) for m in members]
            reads.append(
                (
                    [
                        [(e.seq, e.entry_type, e.effective_at, _as_read(e.body)) for e in es]
                        for es in entries
                    ],
                    [ledger.balance(m) for m in members],
                    [ledger.balance(m, at) for m in members],
                    [ledger.lots(m) for m in members],
                    ledger.app.parked(),
                    dataclasses.asdict(verify(ledger.app, ledger.view)),
                )
            )
        assert reads[0] == reads[1]
        assert any(reads[0][0])  # entries, parked events and receipts compared
        assert reads[0][4]
        assert reads[0][5]["receipts"]
        assert not reads[0][5]["violations"]
    finally:
        after.close()
        fresh.close()


def _as_read(body: dict[str, Any]) -> dict[str, Any]:
    """An entry's body but the wall-clock instant it was recorded at and its position in
    the log (each store its own: the mixed one was opened twice)."""
    return {k: v for k, v in body.items() if k not in ("recorded_at", "position")}


def test_a_tier_note_is_left_out_only_while_it_is_the_one_its_fields_make(
    written: list[tuple[Any, StoredEvent]],
) -> None:
    fresh = _mapper()
    left_out = 0
    for original, stored in written:
        if type(original) is account.MemberAccount.TierAssigned:
            left_out += "5" not in json.loads(stored.state)
            assert vars(fresh.to_domain_event(stored)) == _as_decoded(vars(original))
    assert left_out
    tier: Any = next(e for e, _ in written if type(e) is account.MemberAccount.TierAssigned)
    for note in ("", "tier none -> gold: x", tier.note + " ", tier.note.replace("->", "kept")):
        changed: Any = dataclasses.replace(tier, note=note)
        stored = fresh.to_stored_event(changed)
        assert vars(_mapper().to_domain_event(stored)) == _as_decoded(vars(changed))
