"""Histories the arrival-order property found failing (issue 10), kept so that every run
checks them, whatever Hypothesis draws: each is read in the Kafka interleaving that broke
it and in time order, and the two ledgers must agree (balances, holding lots, tiers), as
in `test_the_arrival_order_across_topics_does_not_change_the_ledger`."""

from __future__ import annotations

import ast
import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.property import test_determinism as determinism
from tests.property.test_determinism import Case, Rules, check_arrival_order
from tests.support.histories import Event

HISTORIES = Path(__file__).parent / "histories" / "arrival_order.txt"


def _rules(text: str) -> Rules:
    """`name=literal, ...` as written by the Rules dataclass's repr."""
    call = ast.parse(f"f({text})", mode="eval").body
    assert isinstance(call, ast.Call)
    fields: dict[str, Any] = {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords if kw.arg}
    return Rules(**fields)


def _event(line: str) -> Event:
    event_id, occurred_at, kind, member, data = line.split(" ", 4)
    when = datetime.fromisoformat(occurred_at.replace("Z", "+00:00"))
    return Event(event_id, kind, when, member, json.loads(data))


def load(path: Path) -> list[tuple[str, Case, int, list[int]]]:
    """The blocks of `path`: (title, case, partitions per topic, interleaving)."""
    cases = []
    text = "\n".join(ln for ln in path.read_text().splitlines() if not ln.startswith("#"))
    for block in text.split("=== ")[1:]:
        head, rules, members, *events = [ln for ln in block.strip().splitlines() if ln]
        title, partitions, interleaving = (part.strip() for part in head.split(";"))
        history = [_event(ln) for ln in events]
        case = Case(_rules(rules.removeprefix("rules ")), int(members.split()[1]), history)
        cases.append(
            (
                title,
                case,
                int(partitions.removeprefix("partitions ")),
                json.loads(interleaving.removeprefix("interleaving ")),
            )
        )
    return cases


CASES = load(HISTORIES)


def test_the_file_holds_the_histories() -> None:
    assert len(CASES) >= 4
    assert all(case.history for _, case, _, _ in CASES)


@pytest.mark.parametrize(
    ("case", "partitions", "choices"),
    [pytest.param(case, p, c, id=title) for title, case, p, c in CASES],
)
def test_a_history_the_property_found_keeps_its_ledger(
    case: Case, partitions: int, choices: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Hypothesis's note() is for a run it drives: outside one, the history is the test id.
    monkeypatch.setattr(determinism, "note", lambda _text: None)
    check_arrival_order(case, partitions, choices)
