"""Measures the read side: balance, statement and lots of a member with a short history and
of one with a long one, member search and program metrics.

Run: uv run python -m bench.reads [--entries 5000] [--members 1000] [--calls 300] [--http]

It builds a SQLite store (a member with about 5 entries, one with about `--entries`, and
`--members` small members), then times the calls in-process through the FastAPI app
(TestClient) and, with --http, over real HTTP against `loyalty api` on a free port.
Prints p50/p99 per call in milliseconds.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from services.ledger.application.ledger import Inbound
from services.ledger.bootstrap import EXAMPLES, Settings, build_ledger, store_env
from services.ledger.domain.clock import FixedClock
from services.ledger.domain.provenance import Origin

START = datetime(2025, 1, 6, 12, tzinfo=UTC)
KEY = "bench-key"


def _purchase(n: int, member: str, at: datetime, cents: int = 1999) -> Inbound:
    raw = json.dumps(
        {
            "event_id": f"e-{member}-{n}",
            "type": "purchase.completed",
            "occurred_at": at.isoformat().replace("+00:00", "Z"),
            "member_id": member,
            "data": {"order_id": f"o-{member}-{n}", "currency": "USD", "total_minor": cents},
        }
    ).encode()
    return Inbound(raw, Origin("file", file="bench", line=n))


def _redeem(n: int, member: str, at: datetime, points: int) -> Inbound:
    raw = json.dumps(
        {
            "event_id": f"r-{member}-{n}",
            "type": "redemption.requested",
            "occurred_at": at.isoformat().replace("+00:00", "Z"),
            "member_id": member,
            "data": {"redemption_id": f"red-{member}-{n}", "points": points},
        }
    ).encode()
    return Inbound(raw, Origin("file", file="bench", line=n))


def _history(member: str, entries: int) -> Iterator[Inbound]:
    """A purchase every 12 hours and a redemption of 150 points after every 4th one, so
    lots are spent (and the rest expire) as in a real history: about `entries` entries (a
    purchase, the release of its points, a redemption now and then, expiries)."""
    at = START
    n = 0
    made = 0
    while made < entries:
        yield _purchase(n, member, at)
        made += 2  # the purchase, and the release of its points two days later
        if n % 4 == 3:
            yield _redeem(n, member, at + timedelta(minutes=1), 150)
            made += 1
        n += 1
        at += timedelta(hours=12)


def build(db: Path, entries: int, members: int) -> datetime:
    """The store; returns the instant the reads are made at."""
    env = store_env(Settings(db=db))
    end = START + timedelta(hours=12 * entries // 2 + 1)
    ledger = build_ledger(
        Settings(program=EXAMPLES / "coffee.yaml", db=db), clock=FixedClock(end), env=env
    )
    try:
        items = list(_history("big", entries))
        items += list(_history("small", 3))
        items += [_purchase(0, f"m-{i:05d}", START + timedelta(minutes=i)) for i in range(members)]
        for i in range(0, len(items), 500):
            ledger.app.apply_batch(items[i : i + 500])
        ledger.tick(end)
        ledger.projection.run()
        big = ledger.view.balance("big")
        small = ledger.view.balance("small")
        assert big is not None
        assert small is not None
        print(f"store: big {big.entries} entries, small {small.entries}, {members} members")
    finally:
        ledger.close()
    return end


def _percentiles(samples: list[float]) -> str:
    ordered = sorted(samples)
    p90 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.90))]
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return (
        f"p50 {statistics.median(ordered) * 1000:8.2f} ms  p90 {p90 * 1000:8.2f} ms  "
        f"p99 {p99 * 1000:8.2f} ms"
    )


def _time(call: Callable[[], int], calls: int) -> list[float]:
    call()  # warm
    samples = []
    for _ in range(calls):
        began = time.perf_counter()
        status = call()
        samples.append(time.perf_counter() - began)
        assert status == 200, status
    return samples


PATHS = [
    ("balance", "/v1/members/{m}/balance"),
    ("statement?limit=50", "/v1/members/{m}/statement?limit=50"),
    ("lots", "/v1/members/{m}/lots"),
]


def _run_all(get: Callable[[str], int], calls: int, label: str) -> None:
    for name, path in PATHS:
        for member in ("small", "big"):
            samples = _time(functools.partial(get, path.format(m=member)), calls)
            print(f"{label:9} {name:20} {member:6} {_percentiles(samples)}")
    samples = _time(lambda: get("/v1/members?prefix=m-0012&limit=20"), calls)
    print(f"{label:9} {'members?prefix=':20} {'':6} {_percentiles(samples)}")
    samples = _time(lambda: get("/v1/program/metrics"), max(5, calls // 20))
    print(f"{label:9} {'program/metrics':20} {'':6} {_percentiles(samples)}")


def in_process(db: Path, now: datetime, calls: int) -> None:
    from fastapi.testclient import TestClient

    from services.ledger.api.app import create_app
    from services.ledger.api.auth import KeyStore, digest

    keys = KeyStore.from_json(
        json.dumps([{"name": "bench", "scopes": ["members:read"], "sha256": digest(KEY)}])
    )
    ledger = build_ledger(
        Settings(program=EXAMPLES / "coffee.yaml", db=db),
        clock=FixedClock(now),
        env=store_env(Settings(db=db)),
    )
    try:
        with TestClient(create_app(ledger, keys)) as client:
            headers = {"X-API-Key": KEY}
            _run_all(lambda url: client.get(url, headers=headers).status_code, calls, "in-proc")
    finally:
        ledger.close()


def over_http(db: Path, now: datetime, calls: int) -> None:
    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    keys = json.dumps([{"name": "bench", "scopes": ["members:read"], "sha256": _digest(KEY)}])
    env = {
        **os.environ,
        "LOYALTY_API_KEYS": keys,
        "LOYALTY_DB": str(db),
        "LOYALTY_NOW": now.isoformat(),
        "LOYALTY_TICK_SECONDS": "0",
        "LOYALTY_NOTIFIER_DB": str(db.parent / "notifier.sqlite"),
        "LOYALTY_API_RATE_LIMIT": "0",
    }
    server = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from services.ledger.cli import main; main()",
            "api",
            "--port",
            str(port),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"X-API-Key": KEY}) as c:
            for _ in range(200):
                try:
                    c.get("/healthz")
                    break
                except httpx.HTTPError:
                    time.sleep(0.1)
            _run_all(lambda url: c.get(url).status_code, calls, "http")
    finally:
        server.terminate()
        server.wait(timeout=30)


def _digest(key: str) -> str:
    from services.ledger.api.auth import digest

    return digest(key)


def summary_at_scale(folder: Path, member_days: int) -> None:
    """Program metrics from the summary of a store the size of `member_days` activity rows
    (at most one per event: a 1,000,000-event store has at most 1,000,000), written
    directly: 3,000 days, 100 members active a day on average, 4 tiers."""
    from typing import Any

    db = folder / "summary.sqlite"
    ledger = build_ledger(
        Settings(program=EXAMPLES / "coffee.yaml", db=db), env=store_env(Settings(db=db))
    )
    view: Any = ledger.view
    days = 3000
    first = datetime(2018, 1, 1, tzinfo=UTC)
    per_day = max(1, member_days // days)
    with view._tx(commit=True) as c:
        p = view.prefix
        c.executemany(
            f"INSERT INTO {p}summary_days VALUES (?, 5000, 2000, 300)",
            [((first + timedelta(days=d)).date().isoformat(),) for d in range(days)],
        )
        c.executemany(
            f"INSERT INTO {p}summary_tiers VALUES (?, 2500, 1000000)",
            [(t,) for t in ("none", "green", "gold", "platinum")],
        )
        rows = []
        for d in range(days):
            day = first + timedelta(days=d)
            at = day.isoformat(timespec="microseconds")
            for m in range(per_day):
                rows.append(
                    (f"m-{(d * 37 + m * 101) % 10_000:05d}", day.date().isoformat(), at, at)
                )
        c.executemany(f"INSERT OR IGNORE INTO {p}summary_activity VALUES (?, ?, ?, ?)", rows)
    now = first + timedelta(days=days)
    for period in (30, 366):
        samples = []
        for _ in range(20):
            began = time.perf_counter()
            view.summary(now, period)
            samples.append(time.perf_counter() - began)
        print(
            f"summary of {len(rows):,} member-days, {days:,} days, period {period} days: "
            f"{_percentiles(samples)}"
        )
    ledger.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--entries", type=int, default=5000)
    parser.add_argument("--members", type=int, default=1000)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--http", action="store_true", help="also over HTTP (loyalty api)")
    parser.add_argument("--db", type=Path, help="keep the store here (built if missing)")
    parser.add_argument(
        "--summary-rows",
        type=int,
        default=0,
        help="also time the program summary's read over this many member-day rows",
    )
    args = parser.parse_args()
    os.environ["LOYALTY_API_RATE_LIMIT"] = "0"  # a load test, not a caller to limit
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as tmp:
        db = args.db or Path(tmp) / "reads.sqlite"
        began = time.perf_counter()
        now = START + timedelta(hours=12 * args.entries // 2 + 1)
        if not db.exists():
            now = build(db, args.entries, args.members)
            print(f"built in {time.perf_counter() - began:.1f} s")
        if args.summary_rows:
            summary_at_scale(Path(tmp), args.summary_rows)
        in_process(db, now, args.calls)
        if args.http:
            over_http(db, now, args.calls)


if __name__ == "__main__":
    main()
