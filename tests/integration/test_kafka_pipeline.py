"""Kafka in and out on a real broker: `loyalty serve` as a real process, on both stores."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from typer.testing import CliRunner

from schemas import (
    TOPIC_ACTIVITIES,
    TOPIC_DEADLETTER,
    TOPIC_LEDGER,
    TOPIC_PURCHASES,
    TOPIC_REDEMPTIONS,
    TOPIC_REFERRALS,
)
from services.ledger.adapters.kafka_replay import replay
from services.ledger.application.verify import verify
from services.ledger.bootstrap import EXAMPLES, Settings, build_ledger
from services.ledger.cli import app
from tests.support.pipeline import (
    Pipeline,
    at_days_ago,
    buy_at,
    event,
    free_port,
    position,
    produce,
    read_all,
    scrape,
    wait_for,
)

pytestmark = [pytest.mark.kafka, pytest.mark.integration]


@pytest.fixture
def pipeline(kafka_bootstrap: str, store_env: dict[str, str], tmp_path: Path) -> Iterator[Pipeline]:
    runner = CliRunner()
    created = runner.invoke(app, ["topics", "create", "--bootstrap", kafka_bootstrap])
    assert created.exit_code == 0, created.output
    env = {
        **store_env,
        "LOYALTY_PROGRAM": str(EXAMPLES / "coffee.yaml"),
        "LOYALTY_DB": store_env.get("SQLITE_DBNAME", str(tmp_path / "ledger.sqlite")),
        "LOYALTY_METRICS_PORT": str(free_port()),
    }
    running = Pipeline(kafka_bootstrap, env, uuid.uuid4().hex[:8], tmp_path / "serve.log")
    running.start()
    yield running
    if running.process is not None and running.process.poll() is None:
        running.process.kill()
        running.process.wait(timeout=10)
    print(running.log.read_text(errors="replace")[-3000:])  # shown when a test fails


def test_every_event_type_flows_from_topic_to_balance_to_published_entry(
    pipeline: Pipeline,
) -> None:
    ana, ben, cy = pipeline.member("ana"), pipeline.member("ben"), pipeline.member("cy")
    run = pipeline.run_id
    purchase = event(
        f"{run}-buy-1",
        "purchase.completed",
        ana,
        buy_at(5),
        order_id=f"{run}-o1",
        currency="USD",
        total_minor=4000,
    )
    messages = [
        (TOPIC_ACTIVITIES, ana, event(f"{run}-enrol-ana", "member.enrolled", ana, at_days_ago(6))),
        (TOPIC_PURCHASES, ana, purchase),
        (TOPIC_PURCHASES, ana, purchase),  # re-sent by checkout: one credit
        (
            TOPIC_PURCHASES,
            ben,
            event(
                f"{run}-buy-2",
                "purchase.completed",
                ben,
                buy_at(4),
                order_id=f"{run}-o2",
                currency="USD",
                total_minor=2000,
            ),
        ),
        (
            TOPIC_PURCHASES,
            ben,
            event(
                f"{run}-refund-2",
                "purchase.refunded",
                ben,
                at_days_ago(1),
                order_id=f"{run}-o2",
                refund_id="r1",
                amount_minor=1000,
            ),
        ),
        (
            TOPIC_REFERRALS,
            ana,
            event(
                f"{run}-ref",
                "referral.qualified",
                ana,
                at_days_ago(3),
                referee_member_id=cy,
            ),
        ),
        (
            TOPIC_ACTIVITIES,
            ana,
            event(
                f"{run}-review",
                "activity.completed",
                ana,
                at_days_ago(2),
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
            event(
                f"{run}-red",
                "redemption.requested",
                ana,
                at_days_ago(0),
                redemption_id="x1",
                reward_id="free-drink",
            ),
        ),
        (
            TOPIC_REDEMPTIONS,
            ana,
            event(
                f"{run}-red-cancel",
                "redemption.cancelled",
                ana,
                at_days_ago(0),
                redemption_id="x1",
            ),
        ),
    ]
    asyncio.run(produce(pipeline.bootstrap, messages))

    ledger = pipeline.ledger()
    try:

        def earned() -> bool:
            ledger.projection.run()
            found = ledger.balance(ana)
            return found is not None and found.available == 75

        wait_for(earned, "ana's points to be applied")
        asyncio.run(produce(pipeline.bootstrap, redemptions))

        def caught_up() -> bool:
            ledger.projection.run()
            latest = [r.entry_type for r in ledger.statement(ana, limit=1)]
            return latest == ["redemption_cancelled"]

        wait_for(caught_up, "ana's cancellation to be applied")
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
        records = asyncio.run(read_all(pipeline.bootstrap, TOPIC_LEDGER))
        return [r for r in records if r.key and r.key.decode() in {ana, ben, cy}]

    wait_for(lambda: {position(r) for r in published()} >= stored, "every entry published")
    entries = published()
    assert {position(r) for r in entries} == stored
    bodies = [json.loads(r.value) for r in entries]
    assert {b["member_id"] for b in bodies} == {ana, ben, cy}
    for record, body in zip(entries, bodies, strict=True):
        assert body["position"] == position(record)
        assert sum(p["amount"] for p in body["postings"]) == 0
    credits = [
        b
        for b in bodies
        if b["entry_type"] == "points_earned" and b["provenance"]["event_id"] == f"{run}-buy-1"
    ]
    assert len({b["position"] for b in credits}) == 1  # the re-sent purchase: one credit
    assert pipeline.stop() == 0


def test_bad_input_goes_to_the_dead_letter_topic_and_good_events_around_it_apply(
    pipeline: Pipeline,
) -> None:
    run = pipeline.run_id
    dan = pipeline.member("dan")

    def buy(n: int, total: int) -> bytes:
        return event(
            f"{run}-b{n}",
            "purchase.completed",
            dan,
            buy_at(10),
            order_id=f"{run}-o{n}",
            currency="USD",
            total_minor=total,
        )

    tag = run.encode()  # each run's own bytes: the dead-letter topic is shared by the runs
    bad = {
        "not_json": b"{not json " + tag,
        "not_utf8": b"\xff\xfe\x00" + tag,
        "schema": buy(90, -5),
        "unknown_type": json.dumps({"event_id": f"{run}-u", "type": "points.magic"}).encode(),
        "oversized": b'{"pad": "' + tag + b"x" * 70_000 + b'"}',
        "conflict": buy(1, 999),  # same event_id as the first purchase, other payload
        "unsupported_currency": buy(91, 100).replace(b'"USD"', b'"EUR"'),
    }
    messages = [(TOPIC_PURCHASES, dan, buy(1, 1000))]
    for raw in bad.values():
        messages.append((TOPIC_PURCHASES, dan, raw))
    messages.append((TOPIC_PURCHASES, dan, buy(2, 2000)))
    asyncio.run(produce(pipeline.bootstrap, messages))

    def dead_letters() -> dict[str, dict[str, str]]:
        records = asyncio.run(read_all(pipeline.bootstrap, TOPIC_DEADLETTER))
        found: dict[str, dict[str, str]] = {}
        for r in records:
            headers = {k: v.decode() for k, v in r.headers}
            if r.value in bad.values():
                found[headers["reason"]] = {
                    **headers,
                    "value": r.value.decode("latin-1"),
                    "key": r.key.decode() if r.key is not None else "<null>",
                }
        return found

    wait_for(lambda: set(dead_letters()) >= set(bad), "every bad message dead-lettered")
    letters = dead_letters()
    for reason, raw in bad.items():
        letter = letters[reason]
        assert letter["value"].encode("latin-1") == raw
        assert letter["key"] == dan  # as produced, even where the bytes name no member
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
    samples = scrape(int(pipeline.env["LOYALTY_METRICS_PORT"]))
    for reason in bad:
        name = (
            f'loyalty_ingest_messages_total{{outcome="rejected",reason="{reason}",'
            f'topic="{TOPIC_PURCHASES}"}}'
        )
        assert samples.get(name, 0) >= 1, name
    applied = (
        f'loyalty_ingest_messages_total{{outcome="applied",reason="",topic="{TOPIC_PURCHASES}"}}'
    )
    assert samples[applied] >= 2
    assert samples["loyalty_ingest_apply_seconds_count"] >= 1
    assert any(k.startswith("loyalty_relay_messages_total") for k in samples)
    assert pipeline.stop() == 0


def test_a_dead_letter_keeps_the_original_key_and_a_replay_keeps_it_too(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    run = pipeline.run_id
    garbage = f"{{not json {run}".encode()
    unkeyed = f"{{not json either {run}".encode()

    async def send() -> list[tuple[int, int]]:
        producer = AIOKafkaProducer(bootstrap_servers=pipeline.bootstrap)
        await producer.start()
        try:
            sent = []
            for key, value in ((b"m-7", garbage), (None, unkeyed)):
                meta = await producer.send_and_wait(TOPIC_PURCHASES, value, key=key)
                sent.append((meta.partition, meta.offset))
            return sent
        finally:
            await producer.stop()

    sent = asyncio.run(send())

    def letters() -> dict[bytes, Any]:
        records = asyncio.run(read_all(pipeline.bootstrap, TOPIC_DEADLETTER))
        return {r.value: r for r in records if r.value in (garbage, unkeyed)}

    wait_for(lambda: len(letters()) == 2, "both messages dead-lettered")
    found = letters()
    assert found[garbage].key == b"m-7"
    assert found[unkeyed].key is None  # a null key stays null
    for value, (partition, offset) in zip((garbage, unkeyed), sent, strict=True):
        headers = {k: v.decode() for k, v in found[value].headers}
        assert headers["reason"] == "not_json"
        assert (headers["source-partition"], headers["source-offset"]) == (
            str(partition),
            str(offset),
        )
    assert pipeline.stop() == 0

    # `loyalty replay` reads records through the same path: the key is kept there too.
    partition, offset = sent[0]
    replayed = str(tmp_path / "replayed.sqlite")
    fresh = build_ledger(
        Settings(program=EXAMPLES / "coffee.yaml"),
        env={"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": replayed},
    )
    try:
        report = asyncio.run(
            replay(
                fresh, pipeline.bootstrap, TOPIC_PURCHASES, offset, offset, partitions=[partition]
            )
        )
        assert report.dead_lettered == 1
        [rejection] = fresh.app.rejections()
        assert (rejection.key_b64, rejection.origin.offset) == (
            base64.b64encode(b"m-7").decode(),
            offset,
        )
    finally:
        fresh.close()
