"""Kafka in and out on a real broker: `loyalty serve` as a real process, on both stores."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from typer.testing import CliRunner

from schemas import (
    TOPIC_ACTIVITIES,
    TOPIC_DEADLETTER,
    TOPIC_LEDGER,
    TOPIC_PURCHASES,
    TOPIC_REDEMPTIONS,
    TOPIC_REFERRALS,
)
from services.ledger.application.service import Ledger
from services.ledger.application.verify import verify
from services.ledger.bootstrap import EXAMPLES, Settings, build_ledger
from services.ledger.cli import app

pytestmark = [pytest.mark.kafka, pytest.mark.integration]
LOYALTY = Path(sys.executable).parent / "loyalty"
NOW = datetime.now(UTC).replace(microsecond=0)


def _at(days_ago: float = 0) -> str:
    return (NOW - timedelta(days=days_ago)).isoformat().replace("+00:00", "Z")


def _buy_at(days_ago: float) -> str:
    """A purchase time that is not a Tuesday in New York (the coffee program doubles those)."""
    at = NOW - timedelta(days=days_ago)
    if at.astimezone(ZoneInfo("America/New_York")).weekday() == 1:
        at -= timedelta(days=1)
    return at.isoformat().replace("+00:00", "Z")


class Pipeline:
    """A running `loyalty serve` over a fresh store, and a way to read what it did."""

    def __init__(self, bootstrap: str, env: dict[str, str], run_id: str, log: Path) -> None:
        self.bootstrap = bootstrap
        self.env = env
        self.run_id = run_id
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def member(self, name: str) -> str:
        return f"{name}-{self.run_id}"

    def start(self) -> None:
        with self.log.open("ab") as log:  # the child keeps its own copy of the handle
            self.process = subprocess.Popen(
                [str(LOYALTY), "serve", "--bootstrap", self.bootstrap, "--group-id", self.run_id],
                env={**os.environ, **self.env},
                stdout=subprocess.DEVNULL,
                stderr=log,
            )

    def stop(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=30)

    def ledger(self) -> Ledger:
        """The same store, opened by the test to read what the process did."""
        settings = Settings(program=EXAMPLES / "coffee.yaml", db=Path(self.env["LOYALTY_DB"]))
        store = {k: v for k, v in self.env.items() if k.startswith(("PERSISTENCE", "POSTGRES"))}
        if store.get("PERSISTENCE_MODULE") != "eventsourcing.postgres":
            store = {
                "PERSISTENCE_MODULE": "eventsourcing.sqlite",
                "SQLITE_DBNAME": self.env["LOYALTY_DB"],
            }
        return build_ledger(settings, env=store)


@pytest.fixture
def pipeline(kafka_bootstrap: str, store_env: dict[str, str], tmp_path: Path) -> Iterator[Pipeline]:
    runner = CliRunner()
    created = runner.invoke(app, ["topics", "create", "--bootstrap", kafka_bootstrap])
    assert created.exit_code == 0, created.output
    env = {
        **store_env,
        "LOYALTY_PROGRAM": str(EXAMPLES / "coffee.yaml"),
        "LOYALTY_DB": store_env.get("SQLITE_DBNAME", str(tmp_path / "ledger.sqlite")),
    }
    running = Pipeline(kafka_bootstrap, env, uuid.uuid4().hex[:8], tmp_path / "serve.log")
    running.start()
    yield running
    if running.process is not None and running.process.poll() is None:
        running.process.kill()
        running.process.wait(timeout=10)
    print(running.log.read_text(errors="replace")[-3000:])  # shown when a test fails


def _event(event_id: str, kind: str, member: str, at: str, **data: Any) -> bytes:
    return json.dumps(
        {"event_id": event_id, "type": kind, "occurred_at": at, "member_id": member, "data": data}
    ).encode()


async def _produce(bootstrap: str, messages: list[tuple[str, str, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True)
    await producer.start()
    try:
        for topic, key, value in messages:
            await producer.send_and_wait(topic, value, key=key.encode())
    finally:
        await producer.stop()


async def _read_all(bootstrap: str, topic: str) -> list[Any]:
    # Without a group, a subscribed consumer is assigned every partition of the topic.
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        for _ in range(100):
            if consumer.assignment():
                break
            await asyncio.sleep(0.1)
        partitions = sorted(consumer.assignment())
        assert partitions, f"no partitions for {topic}"
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        records: list[Any] = []

        async def behind() -> bool:
            for tp in partitions:
                if await consumer.position(tp) < ends[tp]:
                    return True
            return False

        while await behind():
            batch = await consumer.getmany(timeout_ms=500)
            for rows in batch.values():
                records.extend(rows)
        return records
    finally:
        await consumer.stop()


def _wait_for(check: Any, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.3)
    pytest.fail(f"timed out waiting for {what}")


def test_every_event_type_flows_from_topic_to_balance_to_published_entry(
    pipeline: Pipeline,
) -> None:
    ana, ben, cy = pipeline.member("ana"), pipeline.member("ben"), pipeline.member("cy")
    run = pipeline.run_id
    purchase = _event(
        f"{run}-buy-1",
        "purchase.completed",
        ana,
        _buy_at(5),
        order_id=f"{run}-o1",
        currency="USD",
        total_minor=4000,
    )
    messages = [
        (TOPIC_ACTIVITIES, ana, _event(f"{run}-enrol-ana", "member.enrolled", ana, _at(6))),
        (TOPIC_PURCHASES, ana, purchase),
        (TOPIC_PURCHASES, ana, purchase),  # re-sent by checkout: one credit
        (
            TOPIC_PURCHASES,
            ben,
            _event(
                f"{run}-buy-2",
                "purchase.completed",
                ben,
                _buy_at(4),
                order_id=f"{run}-o2",
                currency="USD",
                total_minor=2000,
            ),
        ),
        (
            TOPIC_PURCHASES,
            ben,
            _event(
                f"{run}-refund-2",
                "purchase.refunded",
                ben,
                _at(1),
                order_id=f"{run}-o2",
                refund_id="r1",
                amount_minor=1000,
            ),
        ),
        (
            TOPIC_REFERRALS,
            ana,
            _event(
                f"{run}-ref",
                "referral.qualified",
                ana,
                _at(3),
                referee_member_id=cy,
            ),
        ),
        (
            TOPIC_ACTIVITIES,
            ana,
            _event(
                f"{run}-review",
                "activity.completed",
                ana,
                _at(2),
                activity="review",
            ),
        ),
    ]
    # Each topic is ordered per member, but topics are not ordered with each other: the
    # redemption is sent once the points it spends are in, as a checkout would check first.
    redemptions = [
        (
            TOPIC_REDEMPTIONS,
            ana,
            _event(
                f"{run}-red",
                "redemption.requested",
                ana,
                _at(0),
                redemption_id="x1",
                reward_id="free-drink",
            ),
        ),
        (
            TOPIC_REDEMPTIONS,
            ana,
            _event(
                f"{run}-red-cancel",
                "redemption.cancelled",
                ana,
                _at(0),
                redemption_id="x1",
            ),
        ),
    ]
    asyncio.run(_produce(pipeline.bootstrap, messages))

    ledger = pipeline.ledger()
    try:

        def earned() -> bool:
            ledger.projection.run()
            found = ledger.balance(ana)
            return found is not None and found.available == 75

        _wait_for(earned, "ana's points to be applied")
        asyncio.run(_produce(pipeline.bootstrap, redemptions))

        def caught_up() -> bool:
            ledger.projection.run()
            latest = [r.entry_type for r in ledger.statement(ana, limit=1)]
            return latest == ["redemption_cancelled"]

        _wait_for(caught_up, "ana's cancellation to be applied")
        balance = ledger.balance(ana)
        assert balance is not None
        # signup 10 + purchase 40 (released: 2-day window passed) + referral 20 + review 5
        assert (balance.available, balance.pending) == (75, 0)
        ben_balance = ledger.balance(ben)
        cy_balance = ledger.balance(cy)
        assert ben_balance is not None
        assert cy_balance is not None
        assert ben_balance.available == 10  # 20 earned, half refunded
        assert cy_balance.available == 10
        assert verify(ledger.app, ledger.view).ok
        stored = {
            row.position for member in (ana, ben, cy) for row in ledger.statement(member, limit=100)
        }
    finally:
        ledger.close()

    def published() -> list[Any]:
        records = asyncio.run(_read_all(pipeline.bootstrap, TOPIC_LEDGER))
        return [r for r in records if r.key and r.key.decode() in {ana, ben, cy}]

    _wait_for(lambda: {_position(r) for r in published()} >= stored, "every entry published")
    entries = published()
    assert {_position(r) for r in entries} == stored
    bodies = [json.loads(r.value) for r in entries]
    assert {b["member_id"] for b in bodies} == {ana, ben, cy}
    for record, body in zip(entries, bodies, strict=True):
        assert body["position"] == _position(record)
        assert sum(p["amount"] for p in body["postings"]) == 0
    credits = [
        b
        for b in bodies
        if b["entry_type"] == "points_earned" and b["provenance"]["event_id"] == f"{run}-buy-1"
    ]
    assert len({b["position"] for b in credits}) == 1  # the re-sent purchase: one credit
    assert pipeline.stop() == 0


def _position(record: Any) -> int:
    return int(dict(record.headers)["ledger-position"].decode())


def test_bad_input_goes_to_the_dead_letter_topic_and_good_events_around_it_apply(
    pipeline: Pipeline,
) -> None:
    run = pipeline.run_id
    dan = pipeline.member("dan")

    def buy(n: int, total: int) -> bytes:
        return _event(
            f"{run}-b{n}",
            "purchase.completed",
            dan,
            _buy_at(10),
            order_id=f"{run}-o{n}",
            currency="USD",
            total_minor=total,
        )

    bad = {
        "not_json": b"{not json",
        "not_utf8": b"\xff\xfe\x00",
        "schema": buy(90, -5),
        "unknown_type": json.dumps({"event_id": f"{run}-u", "type": "points.magic"}).encode(),
        "oversized": b'{"pad": "' + b"x" * 70_000 + b'"}',
        "conflict": buy(1, 999),  # same event_id as the first purchase, other payload
        "unsupported_currency": buy(91, 100).replace(b'"USD"', b'"EUR"'),
    }
    messages = [(TOPIC_PURCHASES, dan, buy(1, 1000))]
    for raw in bad.values():
        messages.append((TOPIC_PURCHASES, dan, raw))
    messages.append((TOPIC_PURCHASES, dan, buy(2, 2000)))
    asyncio.run(_produce(pipeline.bootstrap, messages))

    def dead_letters() -> dict[str, dict[str, str]]:
        records = asyncio.run(_read_all(pipeline.bootstrap, TOPIC_DEADLETTER))
        found: dict[str, dict[str, str]] = {}
        for r in records:
            headers = {k: v.decode() for k, v in r.headers}
            if r.value in bad.values():
                found[headers["reason"]] = {**headers, "value": r.value.decode("latin-1")}
        return found

    _wait_for(lambda: set(dead_letters()) >= set(bad), "every bad message dead-lettered")
    letters = dead_letters()
    for reason, raw in bad.items():
        letter = letters[reason]
        assert letter["value"].encode("latin-1") == raw
        assert letter["source-topic"] == TOPIC_PURCHASES
        assert int(letter["source-offset"]) >= 0
        assert letter["detail"]
    ledger = pipeline.ledger()
    try:
        ledger.projection.run()
        balance = ledger.balance(dan)
        assert balance is not None
        assert balance.available == 30  # both good purchases, around the bad ones
    finally:
        ledger.close()
    assert pipeline.stop() == 0
