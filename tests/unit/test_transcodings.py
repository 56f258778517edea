"""The stored-event codec: `LedgerTranscoder` writes what the library's `JSONTranscoder`
writes, byte for byte, so stores written before it (and by it) load with either one."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest
from eventsourcing.persistence import (
    DatetimeAsISO,
    DecimalAsStr,
    JSONTranscoder,
    Mapper,
    StoredEvent,
    Transcoding,
    TranscodingNotRegisteredError,
    UUIDAsHex,
)
from eventsourcing.utils import get_topic
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.pipeline import Mix
from services.ledger.adapters.program_file import load_program
from services.ledger.application.compact import CompactMapper, CompactTranscoder
from services.ledger.application.ledger import Inbound, LedgerApplication
from services.ledger.application.service import Ledger
from services.ledger.application.transcodings import (
    VALUE_TYPES,
    DataclassAsDict,
    LedgerTranscoder,
    omitted_defaults,
    register_value_types,
)
from services.ledger.bootstrap import EXAMPLES, Settings, build_ledger
from services.ledger.domain.account import MemberAccount, account_id
from services.ledger.domain.clock import FixedClock
from services.ledger.domain.lots import Lot
from services.ledger.domain.program import Program
from services.ledger.domain.provenance import Origin


def _registered(transcoder: JSONTranscoder) -> JSONTranscoder:
    """`transcoder` with the ledger's transcodings, as `LedgerApplication` registers them."""
    for transcoding in (UUIDAsHex(), DecimalAsStr(), DatetimeAsISO()):
        transcoder.register(transcoding)
    register_value_types(transcoder)
    return transcoder


class _AsPreviously(Transcoding):
    """A value object as the releases before this codec stored and loaded it: every field,
    except `Lot.settled` while it is 0."""

    def __init__(self, cls: type[Any]) -> None:
        self.type, self.name = cls, cls.__name__

    def encode(self, obj: Any) -> dict[str, Any]:
        out = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
        if isinstance(obj, Lot) and obj.settled == 0:
            del out["settled"]
        return out

    def decode(self, data: Any) -> Any:  # as those releases decoded: every list a tuple
        assert isinstance(data, dict)
        return self.type(**{k: _tuples(v) if isinstance(v, list) else v for k, v in data.items()})


def _tuples(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


class PreviousTranscoder(JSONTranscoder):
    """The library's JSONTranscoder with the value objects as earlier releases wrote them."""

    def register(self, transcoding: Transcoding) -> None:
        if isinstance(transcoding, DataclassAsDict):
            transcoding = _AsPreviously(transcoding.type)
        super().register(transcoding)


PREVIOUS = get_topic(PreviousTranscoder)
PLAIN = get_topic(JSONTranscoder)  # the library's own, with this release's value encoding


# ------------------------------------------------------------------------------ values


def test_the_ledger_uses_the_orjson_transcoder_and_the_environment_can_change_it() -> None:
    env = {"PERSISTENCE_MODULE": "eventsourcing.popo"}
    clock = FixedClock(datetime(2026, 1, 1, tzinfo=UTC))
    app = LedgerApplication(_coffee(), clock, env)
    assert type(app.mapper) is CompactMapper
    assert type(app.mapper.transcoder) is CompactTranscoder
    assert isinstance(app.mapper.transcoder, LedgerTranscoder)
    plain = LedgerApplication(
        _coffee(), clock, {**env, "TRANSCODER_TOPIC": PLAIN, "MAPPER_TOPIC": get_topic(Mapper)}
    )
    assert type(plain.mapper.transcoder) is JSONTranscoder
    assert type(plain.mapper) is Mapper


def test_the_defaults_left_out_of_stored_values_never_change() -> None:
    """A value stored without a defaulted field loads with the field's default *then*: a
    changed default would change what every such stored value means. Add, never change."""
    pinned = {
        "Balances": {},
        "HoldRecord": {"status": "held", "captured": 0, "resolved_at": None},
        "Line": {},
        "LinePoints": {},
        "Lot": {"program_version": None, "settled": 0},
        "LotMove": {},
        "OrderRecord": {
            "refunded_minor": 0,
            "refunded_quantities": (),
            "reversed_points": 0,
            "refund_ids": (),
            "expired_credited": 0,
            "basis": (),
            "source": None,
            "earned_at": None,
            "tier": None,
            "day": "",
            "seq": 0,
            "refunds": (),
        },
        "Origin": {
            "topic": None,
            "partition": None,
            "offset": None,
            "line": None,
            "file": None,
            "request_id": None,
            "actor": None,
        },
        "ParkedEvent": {},
        "Posting": {},
        "Provenance": {
            "event_id": None,
            "event_type": None,
            "rule_id": None,
            "program_version": None,
            "tier": None,
        },
        "Qualifying": {},
        "RedemptionRecord": {
            "at": None,
            "event_id": None,
            "dated": None,
            "cancelled_at": None,
            "settled": None,
        },
        "RefundStep": {
            "refund_id": "",
            "taken_from": None,
            "wanted": 0,
            "owes": False,
            "expired": 0,
        },
        "Respent": {},
        "TierChange": {
            "cause": "",
            "rank": -1,
            "period_end": None,
            "held_until": None,
            "retracts": 0,
            "override_until": None,
            "locked": False,
        },
    }
    assert {cls.__name__: omitted_defaults(cls) for cls in VALUE_TYPES} == pinned


def test_a_value_at_its_defaults_stores_without_them_and_loads_the_same() -> None:
    origin = Origin("kafka", topic="t", partition=0, offset=7)
    new, plain = _registered(LedgerTranscoder()), _registered(JSONTranscoder())
    stored = new.encode({"origin": origin})
    assert stored == (
        b'{"origin":{"_type_":"Origin","_data_":'
        b'{"channel":"kafka","topic":"t","partition":0,"offset":7}}}'
    )
    assert stored == plain.encode({"origin": origin})
    assert new.decode(stored) == plain.decode(stored) == {"origin": origin}
    before = _registered(PreviousTranscoder()).encode({"origin": origin})
    assert b'"line":null' in before
    assert new.decode(before) == {"origin": origin}


def test_a_default_is_left_out_only_with_its_own_type() -> None:
    [steps] = [DataclassAsDict(cls) for cls in VALUE_TYPES if cls.__name__ == "RefundStep"]
    fields = {f.name: f for f in dataclasses.fields(steps.type)}
    assert fields["owes"].default is False
    required = {name: f"x-{name}" for name, f in fields.items() if f.default is dataclasses.MISSING}
    assert "owes" not in steps.encode(steps.type(**required, owes=False))
    assert steps.encode(steps.type(**required, owes=0))["owes"] == 0  # not False: kept
    assert steps.encode(steps.type(**required, wanted=False))["wanted"] is False


_VALUES = st.one_of(*(st.from_type(cls) for cls in VALUE_TYPES))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_VALUES)
def test_every_value_type_round_trips_and_encodes_as_the_library_would(value: Any) -> None:
    new, plain = _registered(LedgerTranscoder()), _registered(JSONTranscoder())
    previous = _registered(PreviousTranscoder())
    stored = new.encode({"value": value})
    assert stored == plain.encode({"value": value})
    assert new.decode(stored) == {"value": value}
    assert previous.decode(stored) == {"value": value}  # a new row, read by an earlier release
    assert new.decode(previous.encode({"value": value})) == {"value": value}


_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.text()
    | st.datetimes(timezones=st.none() | st.just(UTC))
    | st.uuids()
    | st.decimals(allow_nan=False, allow_infinity=False),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text(), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.text(), _JSON, max_size=6))
def test_any_event_state_encodes_byte_for_byte_as_the_library_would(state: dict[str, Any]) -> None:
    """Text of any kind (controls, quotes, non-ASCII), integers beyond 64 bits (the
    fallback), UUIDs (the fallback), decimals and datetimes: the library's bytes."""
    new, plain = _registered(LedgerTranscoder()), _registered(JSONTranscoder())
    stored = new.encode(state)
    assert stored == plain.encode(state)
    assert new.decode(stored) == plain.decode(stored)


def test_a_uuid_is_stored_as_the_librarys_object_not_as_orjsons_text() -> None:
    new = _registered(LedgerTranscoder())
    value = uuid4()
    stored = new.encode({"id": value, "n": 1})
    assert stored == _registered(JSONTranscoder()).encode({"id": value, "n": 1})
    assert json.loads(stored)["id"] == {"_type_": "uuid_hex", "_data_": value.hex}
    assert new.decode(stored) == {"id": value, "n": 1}
    looks_like_one = {"event_id": str(value)}  # text, not a UUID: stays text
    assert new.decode(new.encode(looks_like_one)) == looks_like_one


@pytest.mark.parametrize(
    "where",
    [
        lambda u: {"origin": Origin(u)},  # in a value object (against its type, but still)
        lambda u: {"ids": ["a", (1, u)]},
        lambda u: {"by": {"k": {"j": [u]}}},
    ],
    ids=["value object", "list", "nested dict"],
)
def test_a_uuid_anywhere_is_stored_as_the_librarys_object(where: Any) -> None:
    new, plain = _registered(LedgerTranscoder()), _registered(JSONTranscoder())
    state = where(uuid4())
    assert new.encode(state) == plain.encode(state)
    assert b'"uuid_hex"' in new.encode(state)


def test_ids_that_are_uuid_text_do_not_send_events_through_the_slow_encoder(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    new = _registered(LedgerTranscoder())
    member, event = str(uuid4()), str(uuid4())
    state = {"member_id": member, "origin": Origin("http", request_id=event), "n": [event]}

    def refuse(self: JSONTranscoder, obj: Any) -> bytes:
        raise AssertionError("the library's encoder was used")

    monkeypatch.setattr(JSONTranscoder, "encode", refuse)
    assert new.decode(new.encode(state)) == state


def test_what_the_library_refuses_is_refused_the_same_way() -> None:
    new = _registered(LedgerTranscoder())

    class Unknown:
        pass

    with pytest.raises(TranscodingNotRegisteredError):
        new.encode({"x": Unknown()})
    assert new.encode({1: 2**70}) == _registered(JSONTranscoder()).encode({1: 2**70})
    assert new.decode(new.encode({"d": Decimal("1.50")})) == {"d": Decimal("1.50")}


# ------------------------------------------------------------------------------ stores


def _coffee() -> Program:
    return load_program(EXAMPLES / "coffee.yaml")


def _open(db: Path, transcoder: str | None) -> Ledger:
    env = {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": str(db)}
    if transcoder is not None:  # as an earlier release wrote: the library's mapper too
        env["TRANSCODER_TOPIC"] = transcoder
        env["MAPPER_TOPIC"] = get_topic(Mapper)
    return build_ledger(
        Settings(db=db), clock=FixedClock(datetime.now(UTC) + timedelta(days=1)), env=env
    )


def _mix(events: int, members: int) -> tuple[list[Inbound], list[str]]:
    mix = Mix(members, "codec")
    items = []
    for offset in range(events):
        topic, _member, raw = mix.next()
        items.append(Inbound(raw, Origin("kafka", topic=topic, partition=0, offset=offset)))
    return items, mix.members


def _apply(ledger: Ledger, items: list[Inbound]) -> None:
    for i in range(0, len(items), 250):
        ledger.app.apply_batch(items[i : i + 250])


def _records(ledger: Ledger, members: list[str]) -> list[StoredEvent]:
    app = ledger.app
    records: list[StoredEvent] = list(app.recorder.select_notifications(start=1, limit=10**6))
    assert app.snapshots is not None
    for member in members:
        records += app.snapshots.recorder.select_events(account_id(member))
    return records


def _members_state(ledger: Ledger, members: list[str]) -> dict[str, Any]:
    found = {m: ledger.app.find_account(m) for m in members}
    return {
        m: (a.balance, a.lifetime_earned, sorted(a.lots.items()))
        for m, a in found.items()
        if isinstance(a, MemberAccount)
    }


def test_a_store_written_before_loads_and_goes_on_with_the_new_codec(tmp_path: Path) -> None:
    """Events and snapshots written as earlier releases did, then more by this one: every
    row of the library's form decodes the same with the library's mapper and with this
    one, every row written again compactly or in full decodes the same, and the accounts
    come out as in a store written by this release alone."""
    items, members = _mix(2_400, 12)  # about 300 account events a member: snapshots too
    mixed_db, fresh_db = tmp_path / "mixed.sqlite", tmp_path / "fresh.sqlite"
    before = _open(mixed_db, PREVIOUS)
    _apply(before, items[:1_200])
    written_before = _records(before, members)
    assert any(b'"line":null' in r.state for r in written_before)  # the old, full values
    assert any(r.topic.endswith("Snapshot") for r in written_before)
    before.close()

    after = _open(mixed_db, None)
    _apply(after, items[1_200:])
    fresh = _open(fresh_db, None)
    _apply(fresh, items)
    try:
        assert _members_state(after, members) == _members_state(fresh, members)
        records = _records(after, members)
        assert len(records) > len(written_before)
        new_mapper = after.app.mapper
        plain_mapper: Mapper[UUID] = Mapper(_registered(JSONTranscoder()))
        previous_mapper: Mapper[UUID] = Mapper(_registered(PreviousTranscoder()))
        for record in records:
            event = new_mapper.to_domain_event(record)
            if not record.state.startswith(b'{"@":'):  # a row of the library's form
                for other in (plain_mapper, previous_mapper):
                    assert vars(other.to_domain_event(record)) == vars(event), record.topic
            again = new_mapper.to_stored_event(event)
            assert again.state.startswith(b'{"@":')  # compact, whatever it was read from
            full = plain_mapper.to_stored_event(event)
            assert vars(new_mapper.to_domain_event(again)) == vars(event)
            assert vars(new_mapper.to_domain_event(full)) == vars(event)
    finally:
        after.close()
        fresh.close()


def test_rows_of_the_new_codec_are_smaller(tmp_path: Path) -> None:
    items, members = _mix(300, 30)
    sizes = {}
    for name, topic in (("previous", PREVIOUS), ("new", None)):
        ledger = _open(tmp_path / f"{name}.sqlite", topic)
        _apply(ledger, items)
        sizes[name] = sum(len(r.state) for r in _records(ledger, members))
        ledger.close()
    assert sizes["new"] < sizes["previous"]
