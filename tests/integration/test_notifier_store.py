"""The notifier's database on SQLite and PostgreSQL: notices recorded once by key, the
delivery states, crash recovery in doubt, snapshots and positions, contacts and erasure."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import pytest

from schemas import TOPIC_LEDGER, TOPIC_TIERS
from schemas.outbound import LedgerEntry
from services.notifier.bootstrap import Notifier, build_notifier, sqlite_url
from services.notifier.consumer import Record
from services.notifier.contacts import PreferenceError
from services.notifier.sent_log import DEAD, FAILED, PENDING, SENT
from tests.support.notices import entry, lot, program, tier_changed
from tests.support.postgres import PostgresServer

pytestmark = pytest.mark.integration

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
    ]
)
def notifier(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Notifier]:
    if request.param == "sqlite":
        url = sqlite_url(tmp_path / "notifier.sqlite")
    else:
        server: PostgresServer = request.getfixturevalue("postgres_server")
        env = server.new_database_env()
        url = (
            f"postgresql://{quote(server.user)}:{quote(server.password)}"
            f"@{server.host}:{server.port}/{env['POSTGRES_DBNAME']}"
        )
    built = build_notifier(program(), url, [], lambda: T0)
    built.recorder.channels = ("email",)  # deliveries are recorded per channel
    try:
        yield built
    finally:
        built.close()


def _record(e: LedgerEntry, offset: int) -> Record:
    return Record(TOPIC_LEDGER, 1, offset, e.model_dump_json().encode())


def test_notices_are_recorded_once_per_key_with_the_consumer_position(notifier: Notifier) -> None:
    crossing = entry("m-a", 2, "points_earned", T0, available_delta=60, available_after=60)
    assert notifier.recorder.apply([_record(crossing, 7)]) == 1
    assert notifier.recorder.apply([_record(crossing, 7), _record(crossing, 8)]) == 0
    assert notifier.snapshots.positions() == {(TOPIC_LEDGER, 1): 9}
    change = tier_changed("m-a", "base", "silver", "upgrade", T0, T0 + 300 * DAY)
    tiers = Record(TOPIC_TIERS, 0, 3, change.model_dump_json().encode())
    assert notifier.recorder.apply([tiers, tiers]) == 1
    assert notifier.snapshots.positions()[(TOPIC_TIERS, 0)] == 4
    tier = notifier.snapshots.tier("m-a")
    assert tier is not None
    assert tier.tier == "silver"
    rows = notifier.sent_log.deliveries("m-a")
    assert [(d.notice.kind, d.state) for d in rows] == [
        ("reward_unlocked", PENDING),
        ("tier_reached", PENDING),
    ]
    bad = Record(TOPIC_LEDGER, 1, 9, b"not json")
    assert notifier.recorder.apply([bad]) == 0
    assert notifier.snapshots.positions()[(TOPIC_LEDGER, 1)] == 10


def test_delivery_states_and_crash_recovery(notifier: Notifier) -> None:
    log = notifier.sent_log
    notifier.recorder.apply(
        [_record(entry("m-a", 2, "points_earned", T0, available_delta=60, available_after=60), 0)]
    )
    (d,) = log.due(T0)
    log.begin(d, T0)
    assert log.due(T0) == []  # in flight: not handed out again
    assert log.recover(T0) == 1  # the process died while sending
    (again,) = log.due(T0)
    assert (again.in_doubt, again.attempts, again.state) == (True, 1, FAILED)
    log.begin(again, T0)
    log.failed(again, "HTTP 500", T0, T0 + DAY, 2)
    assert log.due(T0) == []
    (later,) = log.due(T0 + DAY)
    log.begin(later, T0 + DAY)
    log.failed(later, "HTTP 500", T0 + DAY, None, 3)
    assert [x.state for x in log.deliveries("m-a")] == [DEAD]
    assert log.oldest_due_age(T0 + 2 * DAY) == 0.0
    assert log.redrive(T0 + 2 * DAY) == 1
    (last,) = log.due(T0 + 2 * DAY)
    log.begin(last, T0 + 2 * DAY)
    log.sent(last, T0 + 2 * DAY)
    assert log.counts() == {SENT: 1}


def test_lots_snapshot_keeps_each_lot_from_the_newest_entry_that_touched_it(
    notifier: Notifier,
) -> None:
    a = lot("L1", 40, 40, T0, T0 + 30 * DAY)
    b = lot("L2", 10, 10, T0, T0 + 60 * DAY)
    spent = lot("L1", 40, 5, T0, T0 + 30 * DAY)
    notifier.recorder.apply(
        [
            _record(entry("m-a", 2, "points_earned", T0, lots=(a,)), 0),
            _record(entry("m-a", 3, "points_earned", T0, lots=(b,)), 1),
            _record(entry("m-a", 4, "points_redeemed", T0, lots=(spent,)), 2),
            _record(entry("m-a", 2, "points_earned", T0, lots=(a,)), 0),  # a repeat
        ]
    )
    assert {x.lot_id: x.remaining for x in notifier.snapshots.lots("m-a")} == {"L1": 5, "L2": 10}
    assert [e.seq for e in notifier.snapshots.entries("m-a")] == [2, 3, 4]


def test_contacts_preferences_and_erasure(notifier: Notifier) -> None:
    contacts = notifier.contacts
    contacts.set_contact("m-a", "ana@example.com", "Ana")
    contacts.set_contact("m-a", "ana@example.org", "Ana")
    found = contacts.contact("m-a")
    assert found is not None
    assert found.email == "ana@example.org"
    contacts.opt_out("m-a", "email", "tier_reached")
    contacts.opt_out("m-a", "email", "tier_reached")
    contacts.opt_out("m-a", "*", "monthly_statement")
    assert contacts.opt_outs("m-a") == [("*", "monthly_statement"), ("email", "tier_reached")]
    assert contacts.opt_in("m-a", "email", "tier_reached") == 1
    with pytest.raises(PreferenceError):
        contacts.opt_out("m-a", "fax", "*")
    with pytest.raises(PreferenceError):
        contacts.set_contact("m-a", "not-an-address")
    notifier.recorder.apply(
        [_record(entry("m-a", 2, "points_earned", T0, available_delta=60, available_after=60), 0)]
    )
    contacts.erase("m-a")
    assert contacts.contact("m-a") is None
    assert contacts.opt_outs("m-a") == []
    assert notifier.snapshots.members() == []
    (d,) = notifier.sent_log.deliveries("m-a")
    assert (d.state, d.last_error, d.notice.data) == ("suppressed", "member erased", {})
