"""Fixtures shared by the unit tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import pytest

from services.ledger.application.service import Ledger
from services.ledger.domain.clock import FixedClock
from services.ledger.domain.program import Program
from tests.support.histories import open_ledger

Open = Callable[[Program, datetime], tuple[Ledger, FixedClock]]


@pytest.fixture
def open_fresh(tmp_path: Path) -> Iterator[Open]:
    """Opens a ledger on a fresh SQLite file with a fixed wall clock; closes it afterwards."""
    opened: list[Ledger] = []

    def make(program: Program, now: datetime) -> tuple[Ledger, FixedClock]:
        clock = FixedClock(now)
        ledger = open_ledger(tmp_path / f"store-{len(opened)}", program, clock)
        opened.append(ledger)
        return ledger, clock

    yield make
    for ledger in opened:
        ledger.close()
