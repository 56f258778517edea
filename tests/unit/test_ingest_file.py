"""`loyalty ingest`'s path (`Ledger.ingest_lines`): however a file is cut into batches it
gives the same ledger, a file ingested twice applies nothing twice, and the entries it just
stored are projected as they were stored (not decoded again) into the views decoding the
stored rows gives."""

from __future__ import annotations

import gc
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from bench.pipeline import Mix
from services.ledger.adapters.program_file import load_program
from services.ledger.adapters.sql_views import SqlLedgerView, construct_view
from services.ledger.application.projection import LedgerProjection, account_topics
from services.ledger.application.service import IngestReport, Ledger
from tests.unit.conftest import Open
from tests.unit.test_entry_bodies import EXAMPLES
from tests.unit.test_projection_batches import TABLES, _rows, _same_views_however_batched


def _write_mix(path: Path, events: int, members: int) -> Path:
    mix = Mix(members, "f")
    with path.open("wb") as out:
        for _ in range(events):
            out.write(mix.next()[2] + b"\n")
        out.write(b"\n{not json\n")  # a blank line is skipped, a broken one rejected
    return path


@pytest.fixture
def history(tmp_path: Path) -> Path:
    return _write_mix(tmp_path / "mix.jsonl", 600, 40)


NOW = datetime.now(UTC)  # every ledger's wall clock, a little after the mix's events


def _open(open_fresh: Open) -> Ledger:
    ledger, _ = open_fresh(load_program(EXAMPLES / "coffee.yaml"), NOW)
    return ledger


def _summary(report: IngestReport) -> tuple[Any, ...]:
    return (
        report.applied,
        report.duplicates,
        [(line, o.status, o.reason, o.event_id) for line, o in report.rejected],
        [(line, o.status, o.reason, o.event_id) for line, o in report.parked],
    )


def _stored(ledger: Ledger) -> list[tuple[str, int, str]]:
    """Every stored event: (topic, version, state), receipts and rejections included."""
    found = ledger.app.process_recorder.select_notifications(start=1, limit=1_000_000)
    return sorted((n.topic, n.originator_version, n.state.decode()) for n in found)


def _views(ledger: Ledger) -> dict[str, list[tuple[Any, ...]]]:
    ledger.catch_up()
    assert isinstance(ledger.view, SqlLedgerView)
    rows = _rows(ledger.view)
    # A balance row's position in the notification log (how receipts and entries
    # interleave) and the instant it was written are the store's own: left out.
    rows["balances"] = [r[:7] for r in rows["balances"]]
    return {t: rows[t] for t in TABLES if t not in ("entries", "summary_state")}


def test_a_file_in_batches_of_any_size_gives_the_same_ledger(
    open_fresh: Open, history: Path
) -> None:
    results = []
    for size in (1, 7, 500, 10_000):
        ledger = _open(open_fresh)
        report = ledger.ingest_lines(history, batch_size=size)
        statements = {m: ledger.statement(m, limit=10_000) for m in _members(ledger)}
        bodies = {
            m: [(e.seq, e.entry_type, e.effective_at) for e in rows]
            for m, rows in statements.items()
        }
        results.append((size, _summary(report), _views(ledger), bodies))
    first = results[0]
    assert first[1][0] > 500
    assert first[1][2]
    assert first[1][2][-1][2] == "not_json"
    for size, summary, views, bodies in results[1:]:
        assert summary == first[1], f"report differs in batches of {size}"
        assert views == first[2], f"views differ in batches of {size}"
        assert bodies == first[3], f"statements differ in batches of {size}"


def _members(ledger: Ledger) -> list[str]:
    return sorted(row.member_id for row in ledger.view.all_balances())


def test_a_file_ingested_twice_applies_nothing_twice(open_fresh: Open, history: Path) -> None:
    ledger = _open(open_fresh)
    first = ledger.ingest_lines(history)
    stored, views = _stored(ledger), _views(ledger)
    again = ledger.ingest_lines(history, batch_size=64)
    assert again.applied == 0
    lines = first.applied + first.duplicates + len(first.rejected) + len(first.parked)
    # Every line with an event id is a duplicate now (a declined one has its receipt too).
    assert again.duplicates + len(again.rejected) == lines == 601
    assert [(line, o.reason) for line, o in again.rejected] == [(602, "not_json")]
    assert again.parked == []
    assert _stored(ledger) == stored  # not one event more: the same rejection is one
    assert _views(ledger) == views


def test_the_entries_a_file_stored_are_projected_as_stored(
    open_fresh: Open, history: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each batch's entries reach the views from the events the batch stored (none is
    decoded again), and those views are the views projected anew from the decoded rows,
    one entry at a time and in batches (test_projection_batches)."""
    ledger = _open(open_fresh)
    mapper = ledger.app.mapper
    decode = mapper.to_domain_event
    topics = set(account_topics())
    decoded: list[str] = []

    def counting(stored: Any) -> Any:
        if stored.topic in topics:
            decoded.append(stored.topic)
        return decode(stored)

    monkeypatch.setattr(mapper, "to_domain_event", counting)
    report = ledger.ingest_lines(history, batch_size=100)
    monkeypatch.undo()
    assert report.applied > 500
    assert decoded == []
    assert _same_views_however_batched(ledger) > 600


def test_a_projection_behind_decodes_what_was_not_stored_last(
    open_fresh: Open, history: Path
) -> None:
    """A projection that starts behind (as after a restart, or in another process) decodes
    every row but the last batch's, and gives the same views."""
    ledger = _open(open_fresh)
    ledger.ingest_lines(history, batch_size=128)
    recent = ledger.app.recent()
    assert 100 < len(recent) < 500  # the last batch's events only (lines 513 to 602)
    view = construct_view(ledger.app.factory, "behind_")
    projection = LedgerProjection(
        ledger.app.process_recorder, ledger.app.mapper, view, recent=ledger.app.recent
    )
    assert projection.run() > 600
    assert isinstance(view, SqlLedgerView)
    assert isinstance(ledger.view, SqlLedgerView)
    assert _rows(view) == _rows(ledger.view)


def test_the_collector_is_set_back_after_an_ingest(
    open_fresh: Open, history: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ingest collects garbage less often while it runs, and gives the setting back
    (also when a batch fails)."""
    ledger = _open(open_fresh)
    threshold = gc.get_threshold()
    seen: list[tuple[int, ...]] = []
    apply = ledger.app.apply_batch

    def spying(items: Any, tracking: Any = None) -> Any:
        seen.append(gc.get_threshold())
        return apply(items, tracking)

    monkeypatch.setattr(ledger.app, "apply_batch", spying)
    ledger.ingest_lines(history)
    assert seen
    assert {t[0] for t in seen} == {max(20_000, threshold[0])}
    assert gc.get_threshold() == threshold

    def failing(items: Any, tracking: Any = None) -> Any:
        raise RuntimeError("the store went away")

    monkeypatch.setattr(ledger.app, "apply_batch", failing)
    with pytest.raises(RuntimeError):
        ledger.ingest_lines(history)
    assert gc.get_threshold() == threshold
