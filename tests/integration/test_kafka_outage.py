"""The broker stops while `loyalty serve`'s relay publishes a backlog.

Before: aiokafka's producer retried the batch in hand without waiting (about 14,000 log
lines a second), SIGTERM was ignored for more than a minute, and the retries, dialling a
broker port inside Linux's ephemeral range, could connect to themselves and keep the broker
from restarting on its port. Now: a bounded wait for the batch, the producer closed and
restarted with backoff, repeated lines limited, and broker ports below the ephemeral range.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.ledger.adapters.kafka_relay import OutboxRelay
from services.ledger.bootstrap import EXAMPLES
from tests.support.kafka import KAFKA_SH, ephemeral_ports
from tests.support.pipeline import LOYALTY, Pipeline, at_days_ago, event, wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.integration]

BACKLOG = 2000  # events: about 4,000 messages, several relay batches
QUIET_LINES_PER_S = 10  # was about 14,000
SIGTERM_WITHIN_S = 12.0  # the batch in hand waits at most ACK_TIMEOUT_S (5 s)


class Broker:
    """deploy/kafka.sh on a data directory of its own, started and stopped at will."""

    def __init__(self, data: Path) -> None:
        self.data = data

    def run(self, command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", str(KAFKA_SH), command, str(self.data)],
            check=False,
            capture_output=True,
            text=True,
            timeout=600,
        )

    def start(self) -> str:
        started = self.run("start")
        assert started.returncode == 0, started.stderr[-2000:]
        return (
            started.stdout.strip().splitlines()[-1].removeprefix("export KAFKA_BOOTSTRAP_SERVERS=")
        )


@pytest.fixture
def broker() -> Iterator[Broker]:
    data = Path(tempfile.mkdtemp(prefix="loyalty-kafka-outage-"))
    try:
        yield Broker(data)
    finally:
        Broker(data).run("stop")
        shutil.rmtree(data, ignore_errors=True)


def _lines(log: Path) -> int:
    return len(log.read_bytes().splitlines())


def test_a_broker_outage_mid_backlog_is_quiet_stops_on_sigterm_and_frees_the_port(
    broker: Broker, tmp_path: Path
) -> None:
    bootstrap = broker.start()

    env = {
        "LOYALTY_PROGRAM": str(EXAMPLES / "coffee.yaml"),
        "LOYALTY_DB": str(tmp_path / "ledger.sqlite"),
        "LOYALTY_METRICS_PORT": "0",
    }
    created = subprocess.run(
        [str(LOYALTY), "topics", "create", "--bootstrap", bootstrap],
        env={**os.environ, **env},
        check=False,
        capture_output=True,
        text=True,
    )
    assert created.returncode == 0, created.stderr
    run = uuid.uuid4().hex[:8]
    rng = random.Random(run)
    events = tmp_path / "backlog.jsonl"
    events.write_bytes(
        b"\n".join(
            event(
                f"{run}-{n}",
                "purchase.completed",
                f"m{n % 300}-{run}",
                at_days_ago(rng.uniform(0, 20)),
                order_id=f"o-{n}",
                currency="USD",
                total_minor=rng.randrange(100, 3000),
            )
            for n in range(BACKLOG)
        )
        + b"\n"
    )
    ingested = subprocess.run(
        [str(LOYALTY), "ingest", str(events)],
        env={**os.environ, **env},
        check=False,
        capture_output=True,
        text=True,
    )
    assert ingested.returncode == 0, ingested.stderr

    pipeline = Pipeline(bootstrap, env, run, tmp_path / "serve.log")
    ledger = pipeline.ledger()
    try:
        recorder = ledger.app.process_recorder
        topics = OutboxRelay(ledger, "unused:9092").topics

        def relay_at() -> int:
            return recorder.max_tracking_id("relay:kafka") or 0

        def unpublished() -> bool:
            return bool(recorder.select_notifications(relay_at() + 1, 1, topics=topics))

        pipeline.start()
        assert pipeline.process is not None
        deadline = time.monotonic() + 60
        while relay_at() == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert broker.run("stop").returncode == 0
        assert relay_at() > 0, "the relay had not started"
        assert unpublished(), "the broker stopped after the backlog was published"

        time.sleep(1.0)  # the relay notices
        before = _lines(pipeline.log)
        time.sleep(4.0)
        written = _lines(pipeline.log) - before
        assert pipeline.process.poll() is None, "serve exited during the outage"
        assert written <= 4 * QUIET_LINES_PER_S, (
            f"{written} log lines in 4 s of outage:\n"
            + pipeline.log.read_text(errors="replace")[-3000:]
        )

        asked = time.monotonic()
        pipeline.process.send_signal(signal.SIGTERM)
        try:
            returncode = pipeline.process.wait(timeout=SIGTERM_WITHIN_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"serve ignored SIGTERM for {SIGTERM_WITHIN_S} s during the outage")
        print(
            f"{written} lines in 4 s of outage; exit {time.monotonic() - asked:.1f}s after SIGTERM"
        )
        assert returncode == 0, returncode

        # The broker comes back on the same port, and a new relay publishes the rest.
        assert broker.start() == bootstrap
        ports = {int(bootstrap.rsplit(":", 1)[1]), int((broker.data / "cport").read_text())}
        assert not ports & set(ephemeral_ports()), f"broker ports {ports} in the ephemeral range"
        pipeline.options = ["--no-ingest"]
        pipeline.start()
        wait_for(lambda: not unpublished(), "the rest of the backlog to be published", 60)
        assert pipeline.stop() == 0
    finally:
        ledger.close()
        print(pipeline.log.read_text(errors="replace")[-3000:])
        if pipeline.process is not None and pipeline.process.poll() is None:
            pipeline.process.kill()
            pipeline.process.wait(timeout=10)
