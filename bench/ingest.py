"""Measures ledger ingest throughput: batches of events in one transaction vs one per event.

Run: uv run python -m bench.ingest [--events N] [--members M] [--batch B]
With PERSISTENCE_MODULE=eventsourcing.postgres and POSTGRES_* set, it measures PostgreSQL;
otherwise a SQLite file in a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from services.ledger.application.ledger import Inbound
from services.ledger.bootstrap import EXAMPLES, Settings, build_ledger, store_env
from services.ledger.domain.clock import FixedClock
from services.ledger.domain.provenance import Origin


def _events(count: int, members: int, run: str) -> list[Inbound]:
    start = datetime(2026, 1, 5, 12, tzinfo=UTC)
    items = []
    for i in range(count):
        at = start + timedelta(seconds=i)
        raw = json.dumps(
            {
                "event_id": f"{run}-{i}",
                "type": "purchase.completed",
                "occurred_at": at.isoformat().replace("+00:00", "Z"),
                "member_id": f"m-{i % members}",
                "data": {"order_id": f"{run}-o-{i}", "currency": "USD", "total_minor": 1999},
            }
        ).encode()
        items.append(Inbound(raw, Origin("file", file="bench", line=i)))
    return items


def _measure(batch: int, count: int, members: int, db: Path, run: str) -> float:
    env = None
    if os.environ.get("PERSISTENCE_MODULE", "") != "eventsourcing.postgres":
        env = store_env(Settings(db=db))
    ledger = build_ledger(
        Settings(program=EXAMPLES / "coffee.yaml", db=db),
        clock=FixedClock(datetime(2026, 1, 6, tzinfo=UTC)),
        env=env,
    )
    items = _events(count, members, run)
    try:
        began = time.perf_counter()
        for i in range(0, count, batch):
            outcomes = ledger.app.apply_batch(items[i : i + batch])
            assert all(o.status == "applied" for o in outcomes), outcomes[:3]
        elapsed = time.perf_counter() - began
    finally:
        ledger.close()
    return count / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--members", type=int, default=200)
    parser.add_argument("--batch", type=int, default=500)
    args = parser.parse_args()
    backend = os.environ.get("PERSISTENCE_MODULE", "eventsourcing.sqlite")
    with tempfile.TemporaryDirectory() as tmp:
        stamp = str(time.time_ns())
        batched = _measure(
            args.batch, args.events, args.members, Path(tmp) / "a.sqlite", f"b{stamp}"
        )
        single = _measure(1, args.events // 4, args.members, Path(tmp) / "b.sqlite", f"s{stamp}")
    print(f"backend {backend}, {args.events} purchases over {args.members} members")
    print(f"batches of {args.batch}: {batched:,.0f} events/s")
    print(f"one transaction per event: {single:,.0f} events/s ({batched / single:.1f}x slower)")


if __name__ == "__main__":
    main()
