"""Starting Kafka clients when the broker may not be up yet, and keeping their logs short
while it is away."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from aiokafka.errors import KafkaError

log = logging.getLogger(__name__)

C = TypeVar("C", bound=Any)

# Waits between attempts to reach the broker: doubling from the first to the last.
FIRST_RETRY_S = 0.5
LAST_RETRY_S = 10.0
# A repeated log line (same logger, level and message template) is let through at most
# once in this many seconds; the next one says how many were left out meanwhile.
REPEAT_WINDOW_S = 10.0
# How long closing a client may take. aiokafka's consumer, in a group, waits for its
# coordination task, which keeps looking for a broker that is away.
CLOSE_TIMEOUT_S = 5.0


def next_delay(delay: float) -> float:
    return min(delay * 2, LAST_RETRY_S)


async def pause(stop: asyncio.Event, seconds: float) -> None:
    """Sleep `seconds`, or less when `stop` is set meanwhile."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)


async def start_when_reachable(make: Callable[[], C], stop: asyncio.Event) -> C | None:
    """Build a client with `make` and start it, retrying with backoff while the broker is
    unreachable (one log line per attempt); None when `stop` is set first."""
    delay = FIRST_RETRY_S
    while not stop.is_set():
        client = make()
        try:
            await client.start()
        except KafkaError as exc:
            with contextlib.suppress(Exception):
                await client.stop()
            if stop.is_set():
                return None
            log.warning("cannot reach Kafka (%s); retrying in %.1fs", exc, delay)
            await pause(stop, delay)
            delay = next_delay(delay)
        else:
            return client
    return None


async def stop_within(client: Any, seconds: float) -> None:
    """Stop a client, giving up (with one log line) after `seconds`: the process is
    leaving, and a broker that is away would keep it waiting. (asyncio.wait_for would wait
    for the cancelled stop() to end, and aiokafka's may not.)"""
    stopping = asyncio.ensure_future(client.stop())
    done, _ = await asyncio.wait({stopping}, timeout=seconds)
    if not done:
        stopping.cancel()
        log.warning("%s did not close within %.0fs; leaving it", type(client).__name__, seconds)
        return
    stopping.result()


class RepeatedLines(logging.Filter):
    """Lets a log line through at most once per `window` seconds per (logger, level,
    message template); the next one let through counts those left out.

    aiokafka logs every failed connection attempt, and its producer retries a batch whose
    broker is gone without waiting: about 14,000 lines a second were seen."""

    def __init__(
        self, window: float = REPEAT_WINDOW_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self.window = window
        self.clock = clock
        self._last: dict[tuple[str, int, str], float] = {}
        self._dropped: dict[tuple[str, int, str], int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.levelno, str(record.msg))
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last < self.window:
            self._dropped[key] = self._dropped.get(key, 0) + 1
            return False
        self._last[key] = now
        dropped = self._dropped.pop(key, 0)
        if dropped and last is not None:
            record.msg = f"{record.msg} ({dropped} more like this in {now - last:.0f}s)"
        return True


def limit_repeats(logger: logging.Logger) -> None:
    """Repeated lines (a broker outage) limited on each of the logger's handlers."""
    for handler in logger.handlers:
        if not any(isinstance(f, RepeatedLines) for f in handler.filters):
            handler.addFilter(RepeatedLines())


def configure_logging(level: int = logging.INFO) -> None:
    """The services' log format on stderr, with repeated lines (a broker outage) limited."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    limit_repeats(logging.getLogger())
