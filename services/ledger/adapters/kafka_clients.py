"""Starting Kafka clients when the broker may not be up yet."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from aiokafka.errors import KafkaError

log = logging.getLogger(__name__)

C = TypeVar("C", bound=Any)


async def start_when_reachable(make: Callable[[], C], stop: asyncio.Event) -> C | None:
    """Build a client with `make` and start it, retrying with backoff while the broker is
    unreachable; None when `stop` is set first."""
    delay = 0.5
    while True:
        client = make()
        try:
            await client.start()
        except KafkaError as exc:
            with contextlib.suppress(Exception):
                await client.stop()
            if stop.is_set():
                return None
            log.warning("cannot reach Kafka (%s); retrying in %.1fs", exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)
        else:
            return client
