"""The projection gives the same views however it is batched, and its cheaper per-entry
work (the body from the entry's fields, not from the built message; the relay's balances
from the open lots only) gives what the slower way gave.

Two genuinely different paths are compared on the same store: the views the ledger keeps
as it goes (projected after each write, as the history came) and views of their own
(another table prefix, another tracking key) projected at the end one entry at a time, in
batches of 7 (a member's entries split across batches) and in batches of 500. Rows are
compared as stored (the entry bodies byte for byte)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from bench.pipeline import Mix
from schemas.outbound import BalanceOut, LedgerEntry, LotOut, OriginOut
from services.ledger.adapters.program_file import load_program
from services.ledger.adapters.sql_views import (
    _COLUMNS,
    PostgresLedgerView,
    SqlLedgerView,
    construct_view,
)
from services.ledger.application.entries import entry_fields, entry_json, entry_message
from services.ledger.application.ledger import Inbound
from services.ledger.application.projection import LedgerProjection, account_topics
from services.ledger.application.service import Ledger, balance_as_of
from services.ledger.domain.account import Balances
from services.ledger.domain.lots import Lot
from services.ledger.domain.provenance import Origin
from tests.unit.conftest import Open
from tests.unit.test_entry_bodies import EXAMPLES, KINDS, T0, _feed

TABLES = (
    "balances",
    "lots",
    "entries",
    "holds",
    "tier_reviews",
    "summary_days",
    "summary_tiers",
    "summary_activity",
    "summary_state",
)


def _rows(view: SqlLedgerView) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every view table, as stored."""
    found: dict[str, list[tuple[Any, ...]]] = {}
    with view._tx(commit=False) as c:
        for table in TABLES:
            view._run(c, f"SELECT * FROM {view.prefix}{table}")
            found[table] = sorted((tuple(r) for r in c.fetchall()), key=repr)
    # A tier a member passed through within one batch only is never written by that batch
    # (it sees the balance before and after the batch); one entry at a time leaves its row
    # at no members and no points. The summary reads the two alike (from_summary).
    found["summary_tiers"] = [r for r in found["summary_tiers"] if r[1:] != (0, 0)]
    return found


def _project_anew(
    ledger: Ledger, prefix: str, batch_size: int
) -> tuple[LedgerProjection, SqlLedgerView]:
    view = construct_view(ledger.app.factory, prefix)
    projection = LedgerProjection(ledger.app.process_recorder, ledger.app.mapper, view)
    projection.run(batch_size=batch_size)
    assert projection.run(batch_size=batch_size) == 0  # exactly once: nothing left
    assert isinstance(view, SqlLedgerView)
    return projection, view


def _same_views_however_batched(ledger: Ledger) -> int:
    ledger.catch_up()
    kept = ledger.view
    assert isinstance(kept, SqlLedgerView)
    expected = _rows(kept)
    assert expected["entries"]
    last = ledger.projection.position
    for prefix, size in (("one_", 1), ("seven_", 7), ("many_", 500)):
        projection, view = _project_anew(ledger, prefix, size)
        assert projection.position == last
        assert view.tracking_key == f"{prefix}ledger"
        got = _rows(view)
        for table in TABLES:
            assert got[table] == expected[table], f"{table} differs in batches of {size}"
    return len(expected["entries"])


@pytest.fixture
def varied(open_fresh: Open) -> Ledger:
    """Every kind of entry: late arrivals, refunds, referrals, holds, adjustments, tiers,
    releases and expiries (test_entry_bodies' history)."""
    ledger, clock = open_fresh(load_program(EXAMPLES / "coffee.yaml"), T0)
    _feed(ledger, clock)
    return ledger


@pytest.fixture
def bench_mix(open_fresh: Open) -> Ledger:
    """1,500 events of the bench mix over 60 members, applied in batches of 500 and
    projected once at the end (the shape `loyalty ingest` and the bench have)."""
    ledger, _ = open_fresh(load_program(EXAMPLES / "coffee.yaml"), datetime.now(UTC))
    mix = Mix(60, "t")
    items = [Inbound(mix.next()[2], Origin("file", file="mix", line=i + 1)) for i in range(1_500)]
    for i in range(0, len(items), 500):
        ledger.app.apply_batch(items[i : i + 500])
    return ledger


def test_views_are_the_same_however_batched_on_a_varied_history(varied: Ledger) -> None:
    kinds = {e.entry_type for e in varied.view.all_entries()}
    assert kinds >= KINDS - {"enrolment_completed"}  # (completed only with a referral)
    _same_views_however_batched(varied)


def test_views_are_the_same_however_batched_on_the_bench_mix(bench_mix: Ledger) -> None:
    assert _same_views_however_batched(bench_mix) > 1_500


def _events(ledger: Ledger) -> list[tuple[int, Any]]:
    app = ledger.app
    found = app.process_recorder.select_notifications(
        start=1, limit=100_000, topics=account_topics()
    )
    return [(n.id, app.mapper.to_domain_event(n)) for n in found]


@pytest.mark.parametrize("history", ["varied", "bench_mix"])
def test_an_entrys_body_is_what_its_message_dumps_to(
    history: str, request: pytest.FixtureRequest
) -> None:
    """entry_json (the projection's body) against the validated models' own JSON dump."""
    ledger: Ledger = request.getfixturevalue(history)
    events = _events(ledger)
    assert events
    for position, event in events:
        fields = entry_fields(event, position)
        body = entry_json(fields)
        message = entry_message(event, position)
        assert body == message.model_dump(mode="json")
        assert list(body) == list(message.model_dump(mode="json"))
        assert LedgerEntry.model_validate(body) == message


def test_the_fields_name_every_field_of_the_models() -> None:
    """entry_json leaves nothing to a model's default: each nested dict is a dataclass's
    fields, which must be exactly the model's."""
    for cls, model in ((Lot, LotOut), (Origin, OriginOut), (Balances, BalanceOut)):
        assert [f.name for f in dataclasses.fields(cls)] == list(model.model_fields)


def test_observers_get_the_messages_of_the_entries_written(open_fresh: Open) -> None:
    ledger, clock = open_fresh(load_program(EXAMPLES / "coffee.yaml"), T0)
    seen: list[LedgerEntry] = []
    ledger.observers.append(seen.append)
    _feed(ledger, clock)
    assert [(m.position, m) for m in seen] == [
        (position, entry_message(event, position)) for position, event in _events(ledger)
    ]


def test_balances_from_the_open_lots_are_the_balances_from_every_lot(varied: Ledger) -> None:
    """The relay reads only the open lots (lots_of(open_only=True)) of the members whose
    balances it publishes: a spent or expired lot changes nothing in a balance."""
    view = varied.view
    rows = {row.member_id: row for row in view.all_balances()}
    members = sorted(rows)
    every = view.lots_of(members)
    opened = view.lots_of(members, open_only=True)
    assert sum(map(len, opened.values())) < sum(map(len, every.values()))
    instants = [T0 + timedelta(days=d) for d in (0, 1, 3, 5, 40, 200, 400, 900)]
    for member in members:
        for now in instants:
            assert balance_as_of(rows[member], opened[member], now) == balance_as_of(
                rows[member], every[member], now
            )


def test_the_column_names_are_the_tables(varied: Ledger) -> None:
    """PostgreSQL writes a batch's rows of a table as one JSON array of objects keyed by the
    column names read from the CREATE TABLE statements: here, as the tables have them."""
    view = varied.view
    assert isinstance(view, SqlLedgerView)
    with view._tx(commit=False) as c:
        for table, names in _COLUMNS.items():
            view._run(c, f"PRAGMA table_info({view.prefix}{table})")
            assert [r["name"] for r in c.fetchall()] == names, table
    assert set(_COLUMNS) == set(TABLES)


class _Cursor:
    def __init__(self) -> None:
        self.executed: list[tuple[str, tuple[Any, ...]]] = []

    def execute(self, query: Any, params: tuple[Any, ...]) -> None:
        self.executed.append((query.as_string(None), params))


def test_postgresql_writes_a_batchs_rows_of_a_table_in_one_statement() -> None:
    view = object.__new__(PostgresLedgerView)  # no server: the statement it sends
    cursor = _Cursor()
    view._insert_many(
        cursor,
        "INSERT INTO view_tier_reviews VALUES (?, ?) "
        "ON CONFLICT (member_id) DO UPDATE SET due_at = excluded.due_at",
        [("m-a", "2026-01-01"), ('m-\u00e9"', None), ("m-c", "2026-02-01")],
    )
    view._insert_many(cursor, "INSERT INTO view_tier_reviews VALUES (?, ?)", [])
    assert cursor.executed == [
        (
            "INSERT INTO view_tier_reviews SELECT * FROM "
            "json_populate_recordset(NULL::view_tier_reviews, %s::json) "
            "ON CONFLICT (member_id) DO UPDATE SET due_at = excluded.due_at",
            (
                '[{"member_id":"m-a","due_at":"2026-01-01"},'
                '{"member_id":"m-\u00e9\\"","due_at":null},'
                '{"member_id":"m-c","due_at":"2026-02-01"}]',
            ),
        )
    ]
