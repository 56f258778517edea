"""Crash test: SIGKILL `loyalty serve` at random moments while events stream in.

At the end every produced event is applied exactly once, `verify` holds, and the published
ledger topic holds every entry (repeats only with the same position and the same body).
LOYALTY_CRASH_EVENTS and LOYALTY_CRASH_KILLS size it (defaults: 8,000 events and 4 kills,
which keeps the suite short; set 20,000 or more for a long run).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from typer.testing import CliRunner

from schemas import TOPIC_ACTIVITIES, TOPIC_LEDGER, TOPIC_PURCHASES
from services.ledger.adapters.kafka_ingest import tracking_key
from services.ledger.application.verify import verify
from services.ledger.bootstrap import EXAMPLES
from services.ledger.cli import app
from tests.support.kafka import KAFKA_SH, kafka_broker_for_tests
from tests.support.pipeline import (
    Pipeline,
    at_days_ago,
    end_offsets,
    event,
    free_port,
    position,
    read_all,
    scrape,
    wait_applied,
    wait_for,
)
from tests.support.postgres import PostgresServer, restartable_server

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.integration]


@pytest.fixture
def crash_broker() -> Iterator[str]:
    """A broker of its own per test: each leaves thousands of messages behind, which a
    fresh store would otherwise re-ingest from the beginning."""
    with kafka_broker_for_tests(private=True) as bootstrap:
        yield bootstrap


EVENTS = int(os.environ.get("LOYALTY_CRASH_EVENTS", "8000"))
KILLS = int(os.environ.get("LOYALTY_CRASH_KILLS", "4"))
MEMBERS = 200


def _stream(
    run: str, rng: random.Random, count: int = EVENTS
) -> tuple[list[tuple[str, str, bytes]], set[str]]:
    """Purchases and reviews for many members, with 2% of them re-sent verbatim."""
    messages: list[tuple[str, str, bytes]] = []
    ids: set[str] = set()
    for n in range(count):
        member = f"c{rng.randrange(MEMBERS)}-{run}"
        event_id = f"{run}-{n}"
        at = at_days_ago(rng.uniform(0, 20))
        if rng.random() < 0.9:
            raw = event(
                event_id,
                "purchase.completed",
                member,
                at,
                order_id=f"o-{n}",
                currency="USD",
                total_minor=rng.randrange(100, 3000),
            )
            topic = TOPIC_PURCHASES
        else:
            raw = event(
                event_id, "activity.completed", member, at, activity="review", reference=f"r{n}"
            )
            topic = TOPIC_ACTIVITIES
        ids.add(event_id)
        messages.append((topic, member, raw))
        if rng.random() < 0.02:
            messages.append((topic, member, raw))  # an upstream retry
    return messages, ids


async def _produce_steadily(bootstrap: str, messages: list[tuple[str, str, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, linger_ms=5)
    await producer.start()
    try:
        for start in range(0, len(messages), 500):
            futures = [
                await producer.send(topic, raw, key=key.encode())
                for topic, key, raw in messages[start : start + 500]
            ]
            await asyncio.gather(*futures)
            await asyncio.sleep(0.05)  # a stream, not one burst
    finally:
        await producer.stop()


def _assert_applied_once_and_published(
    kafka_bootstrap: str, pipeline: Pipeline, run: str, ids: set[str], messages: int, kills: int
) -> None:
    """Every produced event applied exactly once, verify holds, every entry published."""
    ends = asyncio.run(end_offsets(kafka_bootstrap))
    ledger = pipeline.ledger()
    try:
        wait_applied(pipeline, ledger, ends)
        ledger.projection.run()
        credited: Counter[str] = Counter()
        stored: dict[int, dict[str, Any]] = {}
        for n in range(MEMBERS):
            for row in ledger.statement(f"c{n}-{run}", limit=100_000):
                stored[row.position] = row.body
                if row.entry_type == "points_earned":
                    credited[row.body["provenance"]["event_id"]] += 1
        lost = ids - set(credited)
        twice = {k: v for k, v in credited.items() if v > 1}
        report = verify(ledger.app, ledger.view)
    finally:
        ledger.close()
    print(
        f"{len(ids)} events ({messages} messages with re-sends), "
        f"{kills} kills, lost {len(lost)}, applied twice {len(twice)}, "
        f"{len(stored)} entries"
    )
    assert not lost, f"{len(lost)} events never applied, e.g. {sorted(lost)[:5]}"
    assert not twice, f"{len(twice)} events applied twice, e.g. {list(twice.items())[:5]}"
    assert report.ok, report.violations[:10]

    def published() -> dict[int, list[bytes]]:
        found: dict[int, list[bytes]] = {}
        for record in asyncio.run(read_all(kafka_bootstrap, TOPIC_LEDGER)):
            if record.key and record.key.decode().endswith(f"-{run}"):
                found.setdefault(position(record), []).append(record.value)
        return found

    wait_for(lambda: set(published()) >= set(stored), "every entry published", timeout=300)
    for pos, values in published().items():
        bodies = [json.loads(v) for v in values]
        assert all(b == bodies[0] for b in bodies), f"position {pos} published differently"
        assert bodies[0]["seq"] == stored[pos]["seq"]


def test_sigkill_at_random_moments_loses_nothing_and_duplicates_nothing(
    crash_broker: str, postgres_server: PostgresServer, tmp_path: Path
) -> None:
    created = CliRunner().invoke(app, ["topics", "create", "--bootstrap", crash_broker])
    assert created.exit_code == 0, created.output
    run = uuid.uuid4().hex[:8]
    rng = random.Random(run)
    messages, ids = _stream(run, rng)
    env = {
        **postgres_server.new_database_env(),
        "LOYALTY_PROGRAM": str(EXAMPLES / "coffee.yaml"),
        "LOYALTY_DB": str(tmp_path / "unused.sqlite"),
    }
    pipeline = Pipeline(crash_broker, env, run, tmp_path / "serve.log")
    producer = threading.Thread(
        target=lambda: asyncio.run(_produce_steadily(crash_broker, messages)), daemon=True
    )
    producer.start()
    pipeline.start()
    kills = 0
    try:
        for _ in range(KILLS):
            time.sleep(rng.uniform(1.0, 4.0))
            assert pipeline.process is not None
            pipeline.process.send_signal(signal.SIGKILL)
            pipeline.process.wait(timeout=30)
            kills += 1
            pipeline.start()
        producer.join(timeout=300)
        assert not producer.is_alive()
        _assert_applied_once_and_published(crash_broker, pipeline, run, ids, len(messages), kills)
        assert pipeline.stop() == 0
    finally:
        if pipeline.process is not None and pipeline.process.poll() is None:
            pipeline.process.kill()
            pipeline.process.wait(timeout=10)
        print(pipeline.log.read_text(errors="replace")[-2000:])


def test_two_instances_share_the_partitions_and_one_is_killed_mid_stream(
    crash_broker: str, postgres_server: PostgresServer, tmp_path: Path
) -> None:
    """A rebalance: the survivor takes over the dead one's partitions from the stored
    positions; nothing is lost and nothing is applied twice."""
    created = CliRunner().invoke(app, ["topics", "create", "--bootstrap", crash_broker])
    assert created.exit_code == 0, created.output
    run = uuid.uuid4().hex[:8]
    rng = random.Random(run)
    messages, ids = _stream(run, rng, count=6000)
    env = {
        **postgres_server.new_database_env(),
        "LOYALTY_PROGRAM": str(EXAMPLES / "coffee.yaml"),
        "LOYALTY_DB": str(tmp_path / "unused.sqlite"),
    }
    first = Pipeline(crash_broker, env, run, tmp_path / "first.log")
    second = Pipeline(crash_broker, env, run, tmp_path / "second.log")
    producer = threading.Thread(
        target=lambda: asyncio.run(_produce_steadily(crash_broker, messages)), daemon=True
    )
    first.start()
    second.start()
    producer.start()
    try:
        time.sleep(rng.uniform(2.0, 4.0))
        assert first.process is not None
        first.process.send_signal(signal.SIGKILL)
        first.process.wait(timeout=30)
        producer.join(timeout=300)
        assert not producer.is_alive()
        _assert_applied_once_and_published(crash_broker, second, run, ids, len(messages), 1)
        assert second.stop() == 0
    finally:
        for pipeline in (first, second):
            if pipeline.process is not None and pipeline.process.poll() is None:
                pipeline.process.kill()
                pipeline.process.wait(timeout=10)


def test_two_relays_publish_each_entry_once_and_the_survivor_takes_over(
    crash_broker: str, postgres_server: PostgresServer, tmp_path: Path
) -> None:
    """Two `serve` processes on one store: only the relay holding the store's lease
    publishes, so every entry appears once; when the leader is killed, the other takes
    the lease and publishes what follows."""
    created = CliRunner().invoke(app, ["topics", "create", "--bootstrap", crash_broker])
    assert created.exit_code == 0, created.output
    run = uuid.uuid4().hex[:8]
    rng = random.Random(run)
    messages, ids = _stream(run, rng, count=2000)
    before, after = messages[:1500], messages[1500:]
    store = postgres_server.new_database_env()
    ports = [free_port(), free_port()]
    pipelines = [
        Pipeline(
            crash_broker,
            {
                **store,
                "LOYALTY_PROGRAM": str(EXAMPLES / "coffee.yaml"),
                "LOYALTY_DB": str(tmp_path / "unused.sqlite"),
                "LOYALTY_METRICS_PORT": str(port),
            },
            run,
            tmp_path / f"serve-{port}.log",
        )
        for port in ports
    ]
    for pipeline in pipelines:
        pipeline.start()
    try:
        asyncio.run(_produce_steadily(crash_broker, before))
        ledger = pipelines[0].ledger()
        try:
            ends = asyncio.run(end_offsets(crash_broker))
            recorder = ledger.app.process_recorder

            def published_all() -> bool:
                for (topic, partition), end_offset in ends.items():
                    if (recorder.max_tracking_id(tracking_key(topic, partition)) or -1) < (
                        end_offset - 1
                    ):
                        return False
                relay_at = recorder.max_tracking_id("relay:kafka") or 0
                return not recorder.select_notifications(
                    start=relay_at + 1, limit=1, topics=ledger.projection.topics
                )

            wait_for(published_all, "the relay to catch up", timeout=120)
        finally:
            ledger.close()
        counts = Counter(
            position(r)
            for r in asyncio.run(read_all(crash_broker, TOPIC_LEDGER))
            if r.key and r.key.decode().endswith(f"-{run}")
        )
        assert counts, "nothing published"
        repeated = {p: n for p, n in counts.items() if n > 1}
        assert not repeated, f"{len(repeated)} positions published more than once"
        leaders = [scrape(port).get("loyalty_relay_leader", 0.0) for port in ports]
        assert sorted(leaders) == [0.0, 1.0], leaders
        leader = pipelines[leaders.index(1.0)]
        survivor = pipelines[leaders.index(0.0)]
        assert leader.process is not None
        leader.process.send_signal(signal.SIGKILL)
        leader.process.wait(timeout=30)
        asyncio.run(_produce_steadily(crash_broker, after))
        _assert_applied_once_and_published(crash_broker, survivor, run, ids, len(messages), 1)
        assert scrape(ports[pipelines.index(survivor)]).get("loyalty_relay_leader") == 1.0
        assert survivor.stop() == 0
    finally:
        for pipeline in pipelines:
            if pipeline.process is not None and pipeline.process.poll() is None:
                pipeline.process.kill()
                pipeline.process.wait(timeout=10)


def test_ingest_resumes_by_itself_after_a_broker_restart(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    data = Path(tempfile.mkdtemp(prefix="loyalty-kafka-restart-"))

    def broker(command: str) -> str:
        done = subprocess.run(
            ["bash", str(KAFKA_SH), command, str(data)],
            check=True,
            capture_output=True,
            text=True,
            timeout=600,
        )
        return done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""

    bootstrap = broker("start").removeprefix("export KAFKA_BOOTSTRAP_SERVERS=")
    pipeline: Pipeline | None = None
    try:
        created = CliRunner().invoke(app, ["topics", "create", "--bootstrap", bootstrap])
        assert created.exit_code == 0, created.output
        run = uuid.uuid4().hex[:8]
        rng = random.Random(run)
        messages, ids = _stream(run, rng, count=3000)
        env = {
            **postgres_server.new_database_env(),
            "LOYALTY_PROGRAM": str(EXAMPLES / "coffee.yaml"),
            "LOYALTY_DB": str(tmp_path / "unused.sqlite"),
        }
        pipeline = Pipeline(bootstrap, env, run, tmp_path / "serve.log")
        pipeline.start()
        half = len(messages) // 2
        asyncio.run(_produce_steadily(bootstrap, messages[:half]))
        ledger = pipeline.ledger()
        try:
            recorder = ledger.app.process_recorder

            def some_applied() -> bool:
                return any(
                    recorder.max_tracking_id(tracking_key(TOPIC_PURCHASES, p)) is not None
                    for p in range(3)
                )

            wait_for(some_applied, "ingest to start")
        finally:
            ledger.close()
        broker("stop")
        time.sleep(3)  # the process keeps running without a broker
        assert pipeline.process is not None
        assert pipeline.process.poll() is None
        broker("start")
        asyncio.run(_produce_steadily(bootstrap, messages[half:]))
        _assert_applied_once_and_published(bootstrap, pipeline, run, ids, len(messages), 0)
        assert pipeline.stop() == 0
    finally:
        if pipeline is not None and pipeline.process is not None:
            if pipeline.process.poll() is None:
                pipeline.process.kill()
                pipeline.process.wait(timeout=10)
            print(pipeline.log.read_text(errors="replace")[-2000:])
        broker("stop")
        shutil.rmtree(data, ignore_errors=True)


def test_ingest_and_relay_ride_out_a_database_restart(crash_broker: str, tmp_path: Path) -> None:
    """PostgreSQL stops mid-stream and comes back: `serve` keeps running, retries, and in
    the end every event is applied once and every entry published."""
    with restartable_server() as database:
        created = CliRunner().invoke(app, ["topics", "create", "--bootstrap", crash_broker])
        assert created.exit_code == 0, created.output
        run = uuid.uuid4().hex[:8]
        messages, ids = _stream(run, random.Random(run), count=3000)
        env = {
            **database.server.new_database_env(),
            "LOYALTY_PROGRAM": str(EXAMPLES / "coffee.yaml"),
            "LOYALTY_DB": str(tmp_path / "unused.sqlite"),
        }
        pipeline = Pipeline(crash_broker, env, run, tmp_path / "serve.log")
        pipeline.start()
        try:
            third = len(messages) // 3
            asyncio.run(_produce_steadily(crash_broker, messages[:third]))
            ledger = pipeline.ledger()
            try:
                recorder = ledger.app.process_recorder
                wait_for(
                    lambda: any(
                        recorder.max_tracking_id(tracking_key(TOPIC_PURCHASES, p)) is not None
                        for p in range(3)
                    ),
                    "ingest to start",
                )
            finally:
                ledger.close()
            database.stop()
            asyncio.run(_produce_steadily(crash_broker, messages[third : 2 * third]))
            time.sleep(5)  # ingest and relay fail against the stopped database, and retry
            assert pipeline.process is not None
            assert pipeline.process.poll() is None, "serve exited while the database was down"
            database.start()
            asyncio.run(_produce_steadily(crash_broker, messages[2 * third :]))
            _assert_applied_once_and_published(crash_broker, pipeline, run, ids, len(messages), 0)
            assert pipeline.stop() == 0
        finally:
            if pipeline.process is not None and pipeline.process.poll() is None:
                pipeline.process.kill()
                pipeline.process.wait(timeout=10)
            print(pipeline.log.read_text(errors="replace")[-3000:])


def test_ingest_and_relay_in_two_processes_each_killed_once(
    crash_broker: str, postgres_server: PostgresServer, tmp_path: Path
) -> None:
    """`serve --no-relay --no-project` and `serve --no-ingest` share the work (one core
    each); killing either mid-stream loses and repeats nothing."""
    created = CliRunner().invoke(app, ["topics", "create", "--bootstrap", crash_broker])
    assert created.exit_code == 0, created.output
    run = uuid.uuid4().hex[:8]
    messages, ids = _stream(run, random.Random(run), count=4000)
    env = {
        **postgres_server.new_database_env(),
        "LOYALTY_PROGRAM": str(EXAMPLES / "coffee.yaml"),
        "LOYALTY_DB": str(tmp_path / "unused.sqlite"),
    }
    ingest = Pipeline(
        crash_broker, env, run, tmp_path / "ingest.log", ("--no-relay", "--no-project")
    )
    relay = Pipeline(crash_broker, env, run, tmp_path / "relay.log", ("--no-ingest",))
    producer = threading.Thread(
        target=lambda: asyncio.run(_produce_steadily(crash_broker, messages)), daemon=True
    )
    producer.start()
    ingest.start()
    relay.start()
    try:
        for victim in (ingest, relay):
            time.sleep(2.0)
            assert victim.process is not None
            victim.process.send_signal(signal.SIGKILL)
            victim.process.wait(timeout=30)
            victim.start()
        producer.join(timeout=300)
        assert not producer.is_alive()
        _assert_applied_once_and_published(crash_broker, ingest, run, ids, len(messages), 2)
        assert relay.process is not None
        assert relay.process.poll() is None
        assert ingest.stop() == 0
        assert relay.stop() == 0
    finally:
        for pipeline in (ingest, relay):
            if pipeline.process is not None and pipeline.process.poll() is None:
                pipeline.process.kill()
                pipeline.process.wait(timeout=10)
            print(pipeline.log.read_text(errors="replace")[-1500:])
