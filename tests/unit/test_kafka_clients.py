"""Kafka client helpers: repeated log lines limited, stops bounded, broker ports chosen
outside the ephemeral range."""

from __future__ import annotations

import asyncio
import logging
import subprocess

from services.ledger.adapters.kafka_clients import RepeatedLines, stop_within
from tests.support.kafka import KAFKA_SH, broker_port, ephemeral_ports


def _record(msg: str, *args: object, name: str = "aiokafka") -> logging.LogRecord:
    return logging.LogRecord(name, logging.ERROR, __file__, 1, msg, args, None)


def test_a_repeated_line_passes_once_per_window_and_then_counts_the_rest() -> None:
    now = [0.0]
    lines = RepeatedLines(window=10.0, clock=lambda: now[0])
    template = "Unable connect to node with id %s: %s"
    passed = []
    for n in range(1000):
        now[0] = n * 0.001  # 1,000 lines in one second, as aiokafka's producer writes them
        record = _record(template, 1, "refused")
        if lines.filter(record):
            passed.append(record.getMessage())
    assert passed == ["Unable connect to node with id 1: refused"]
    assert lines.filter(_record("Unable to update metadata from %s", [1]))  # another line
    now[0] = 10.5
    record = _record(template, 1, "refused")
    assert lines.filter(record)
    assert record.getMessage() == (
        "Unable connect to node with id 1: refused (999 more like this in 10s)"
    )
    assert lines.filter(_record(template, 1, "refused", name="other"))  # another logger


def test_stop_within_gives_up_on_a_client_that_does_not_stop() -> None:
    class Stuck:
        stopped = False

        async def stop(self) -> None:
            try:
                await asyncio.sleep(3600)
            finally:
                # aiokafka's consumer, in a group, keeps waiting for its coordinator
                await asyncio.shield(asyncio.sleep(3600))

    async def main() -> float:
        loop = asyncio.get_running_loop()
        began = loop.time()
        await stop_within(Stuck(), 0.2)
        return loop.time() - began

    assert asyncio.run(asyncio.wait_for(main(), timeout=5)) < 2


def test_broker_ports_lie_below_the_ephemeral_range() -> None:
    ephemeral = ephemeral_ports()
    for _ in range(50):
        port = broker_port()
        assert 1024 < port < ephemeral.start


def test_kafka_sh_picks_default_ports_below_the_ephemeral_range() -> None:
    """The script's picker, run on its own (a broker is started by the Kafka tests)."""
    script = KAFKA_SH.read_text()
    picker = script[
        script.index("free_port() {") : script.index("\n}\n", script.index("free_port() {")) + 3
    ]
    picked = subprocess.run(
        ["bash", "-c", picker + "\nfor _ in $(seq 20); do free_port; done"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.split()
    assert len(picked) == 20
    assert all(int(port) not in ephemeral_ports() for port in picked), picked
