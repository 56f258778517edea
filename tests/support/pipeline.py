"""A running `loyalty serve` process and the Kafka helpers the pipeline tests share."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from schemas import LEDGER_INPUT_TOPICS
from services.ledger.adapters.kafka_ingest import tracking_key
from services.ledger.application.service import Ledger
from services.ledger.bootstrap import EXAMPLES, Settings, build_ledger

LOYALTY = Path(sys.executable).parent / "loyalty"
NOW = datetime.now(UTC).replace(microsecond=0)


def at_days_ago(days_ago: float = 0) -> str:
    return (NOW - timedelta(days=days_ago)).isoformat().replace("+00:00", "Z")


def buy_at(days_ago: float) -> str:
    """A purchase time that is not a Tuesday in New York (the coffee program doubles those)."""
    at = NOW - timedelta(days=days_ago)
    if at.astimezone(ZoneInfo("America/New_York")).weekday() == 1:
        at -= timedelta(days=1)
    return at.isoformat().replace("+00:00", "Z")


class Pipeline:
    """A running `loyalty serve` over a fresh store, and a way to read what it did."""

    def __init__(
        self,
        bootstrap: str,
        env: dict[str, str],
        run_id: str,
        log: Path,
        options: Sequence[str] = (),
    ) -> None:
        self.bootstrap = bootstrap
        self.env = env
        self.run_id = run_id
        self.log = log
        self.options = list(options)  # more `serve` options, e.g. --no-relay
        self.process: subprocess.Popen[bytes] | None = None

    def member(self, name: str) -> str:
        return f"{name}-{self.run_id}"

    def start(self) -> None:
        with self.log.open("ab") as log:  # the child keeps its own copy of the handle
            self.process = subprocess.Popen(
                [
                    str(LOYALTY),
                    "serve",
                    "--bootstrap",
                    self.bootstrap,
                    "--group-id",
                    self.run_id,
                    *self.options,
                ],
                env={**os.environ, "LOYALTY_METRICS_PORT": "0", **self.env},
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> dict[str, float]:
    """Prometheus samples of a /metrics page: 'name{labels}' -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def event(event_id: str, kind: str, member: str, at: str, **data: Any) -> bytes:
    return json.dumps(
        {"event_id": event_id, "type": kind, "occurred_at": at, "member_id": member, "data": data}
    ).encode()


async def produce(bootstrap: str, messages: list[tuple[str, str, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True)
    await producer.start()
    try:
        for topic, key, value in messages:
            await producer.send_and_wait(topic, value, key=key.encode())
    finally:
        await producer.stop()


async def assigned(consumer: AIOKafkaConsumer) -> list[Any]:
    """The partitions a group-less subscribed consumer was given (it takes a moment)."""
    for _ in range(100):
        if consumer.assignment():
            break
        await asyncio.sleep(0.1)
    return sorted(consumer.assignment())


async def read_all(bootstrap: str, topic: str) -> list[Any]:
    # Without a group, a subscribed consumer is assigned every partition of the topic.
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        partitions = await assigned(consumer)
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


def wait_for(check: Any, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.3)
    pytest.fail(f"timed out waiting for {what}")


def position(record: Any) -> int:
    return int(dict(record.headers)["ledger-position"].decode())


async def end_offsets(bootstrap: str) -> dict[tuple[str, int], int]:
    """The end offset of every partition of the ledger's inbound topics."""
    consumer = AIOKafkaConsumer(*sorted(LEDGER_INPUT_TOPICS), bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        ends = await consumer.end_offsets(await assigned(consumer))
        return {(tp.topic, tp.partition): offset for tp, offset in ends.items()}
    finally:
        await consumer.stop()


def wait_applied(
    pipeline: Pipeline, ledger: Ledger, ends: dict[tuple[str, int], int], timeout: float = 600
) -> None:
    """Until the store's tracked positions reach `ends` (failing if `serve` exits first)."""
    recorder = ledger.app.process_recorder

    def all_applied() -> bool:
        process = pipeline.process
        if process is not None and process.poll() is not None:
            pytest.fail(f"serve exited ({process.returncode}) before applying everything")
        return all(
            (recorder.max_tracking_id(tracking_key(t, p)) or -1) >= end - 1
            for (t, p), end in ends.items()
            if end > 0
        )

    wait_for(all_applied, "every produced message to be applied", timeout=timeout)
