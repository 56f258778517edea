"""Dead letters keep the rejected message as it was: its key, its bytes and where it was.

The relay's messages are built from the store alone, so this needs no broker; the
pipeline test (tests/integration/test_kafka_pipeline.py) checks the same on a real one.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from uuid import UUID, uuid4

import pytest
from eventsourcing.persistence import Mapper, StoredEvent

from schemas import TOPIC_DEADLETTER, TOPIC_PURCHASES
from services.ledger.adapters.kafka_relay import OutboxRelay
from services.ledger.application.compact import long_topic
from services.ledger.application.ledger import Inbound
from services.ledger.application.service import Ledger
from services.ledger.bootstrap import build_ledger
from services.ledger.domain.clock import FixedClock
from services.ledger.domain.provenance import Origin
from services.ledger.domain.receipts import Rejection
from tests.integration.test_ledger_store import PROGRAM, T0, _purchase


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    env = {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": str(tmp_path / "l.db")}
    built = build_ledger(program=PROGRAM, clock=FixedClock(T0), env=env)
    yield built
    built.close()


def _kafka(raw: bytes, offset: int, key: bytes | None) -> Inbound:
    return Inbound(raw, Origin("kafka", topic=TOPIC_PURCHASES, partition=0, offset=offset), key)


def _dead_letters(ledger: Ledger) -> list[tuple[bytes | None, bytes, dict[str, bytes]]]:
    _, messages = OutboxRelay(ledger, "unused:9092")._next_messages()
    return [
        (key, value, dict(headers))
        for topic, key, value, headers in messages
        if topic == TOPIC_DEADLETTER
    ]


def test_a_dead_letter_carries_the_original_key_and_bytes(ledger: Ledger) -> None:
    declined = _purchase("e-1", "m-8", "o-1", 100).replace(b'"USD"', b'"EUR"')
    ledger.app.apply_batch(
        [
            _kafka(b"{not json", 10, b"m-7"),  # no member id to fall back on
            _kafka(b"\xff\xfe", 11, None),  # a null key stays null
            _kafka(b"{also not json", 12, b""),  # an empty key is a key
            _kafka(declined, 13, b"\x00raw-key"),  # the key, not the member id
        ]
    )
    letters = _dead_letters(ledger)
    assert [(key, value) for key, value, _ in letters] == [
        (b"m-7", b"{not json"),
        (None, b"\xff\xfe"),
        (b"", b"{also not json"),
        (b"\x00raw-key", declined),
    ]
    reasons = [headers["reason"] for _, _, headers in letters]
    assert reasons == [b"not_json", b"not_utf8", b"not_json", b"unsupported_currency"]
    assert [headers["source-offset"] for _, _, headers in letters] == [b"10", b"11", b"12", b"13"]
    stored = {r.origin.offset: r.key_b64 for r in ledger.app.rejections()}
    assert stored == {10: "bS03", 11: None, 12: "", 13: "AHJhdy1rZXk="}


def test_input_from_a_file_or_http_has_no_key_and_is_keyed_by_member_as_before(
    ledger: Ledger,
) -> None:
    declined = _purchase("e-1", "m-8", "o-1", 100).replace(b'"USD"', b'"EUR"')
    ledger.app.apply_batch([Inbound(declined, Origin("file", file="f", line=1))])
    [(key, value, _)] = _dead_letters(ledger)
    assert (key, value) == (b"m-8", declined)


def _as_previous_release(ledger: Ledger, rejection: Rejection, originator_id: UUID) -> None:
    """Store a copy of `rejection`'s recorded event as the previous release wrote it: no
    `key_b64` and no class version (the stored state is the event's own JSON)."""
    [stored] = ledger.app.recorder.select_events(rejection.id)
    full: Mapper[UUID] = Mapper(ledger.app.mapper.transcoder)  # the library's form
    state = json.loads(full.to_stored_event(ledger.app.mapper.to_domain_event(stored)).state)
    del state["key_b64"]
    del state["class_version"]
    ledger.app.recorder.insert_events(
        [
            StoredEvent(
                originator_id=originator_id,
                originator_version=1,
                topic=long_topic(stored.topic),  # the class's own, as that release wrote
                state=json.dumps(state).encode(),
            )
        ]
    )


def test_a_rejection_stored_by_the_previous_release_still_loads_and_relays(
    ledger: Ledger,
) -> None:
    declined = _purchase("e-1", "m-8", "o-1", 100).replace(b'"USD"', b'"EUR"')
    ledger.app.apply_batch([_kafka(declined, 5, b"key-5"), _kafka(b"{not json", 6, b"key-6")])
    by_offset = {r.origin.offset: r for r in ledger.app.rejections()}
    old_declined, old_garbage = uuid4(), uuid4()
    _as_previous_release(ledger, by_offset[5], old_declined)
    _as_previous_release(ledger, by_offset[6], old_garbage)

    loaded = {r.id: r for r in ledger.app.rejections()}
    assert len(loaded) == 4
    # The previous release did not keep the key. Its rejections read as keyed by their
    # member id (none for unreadable input): what their dead letters were published with.
    assert (loaded[old_declined].key_b64, loaded[old_declined].reason) == (
        "bS04",
        "unsupported_currency",
    )
    assert loaded[old_garbage].key_b64 is None
    assert [(key, value) for key, value, _ in _dead_letters(ledger)] == [
        (b"key-5", declined),
        (b"key-6", b"{not json"),
        (b"m-8", declined),
        (None, b"{not json"),
    ]
