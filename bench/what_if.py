"""Measures what-if for one member against the size of the store: the stored events it reads
and the time it takes, after ingesting N purchases, `--per-member` of them per member (so
the member's own history is the same size in every store) into a SQLite file.

Run: uv run python -m bench.what_if [--events N ...] [--per-member K] [--all]
`--all` also times the all-members run at each size (slow: it replays the whole ledger).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench.ingest import _events
from services.ledger.adapters.program_file import load_program
from services.ledger.application.what_if import what_if
from services.ledger.bootstrap import EXAMPLES, Settings, build_ledger, store_env
from services.ledger.domain.clock import FixedClock


def _measure(count: int, per_member: int, folder: Path, everyone: bool) -> None:
    members = max(1, count // per_member)
    db = folder / f"ledger-{count}.sqlite"
    ledger = build_ledger(
        Settings(program=EXAMPLES / "coffee.yaml", db=db),
        # After the last purchase (one a second from 2026-01-05 12:00): none is in the future.
        clock=FixedClock(datetime(2026, 1, 5, 12, tzinfo=UTC) + timedelta(seconds=count + 60)),
        env=store_env(Settings(db=db)),
    )
    other = load_program(EXAMPLES / "coffee-v2.yaml")
    try:
        items = _events(count, members, "w")
        for i in range(0, count, 500):
            outcomes = ledger.app.apply_batch(items[i : i + 500])
            assert all(o.status == "applied" for o in outcomes), outcomes[:3]
        ledger.projection.run()
        began = time.perf_counter()
        one = what_if(ledger, other, member="m-7")
        took = time.perf_counter() - began
        print(
            f"{count} events, {members} members: one member read {one.read_events} stored "
            f"events, replayed {one.replayed_events}, in {took:.3f} s"
        )
        if everyone:
            began = time.perf_counter()
            full = what_if(ledger, other)
            took = time.perf_counter() - began
            print(f"  all members read {full.read_events} stored events in {took:.1f} s")
    finally:
        ledger.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--per-member", type=int, default=10)
    parser.add_argument("--all", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for count in args.events:
            _measure(count, args.per_member, Path(tmp), args.all)


if __name__ == "__main__":
    main()
