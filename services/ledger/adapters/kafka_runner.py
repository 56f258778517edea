"""Runs Kafka ingest and the outbox relay in one process until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from services.ledger.adapters.kafka_ingest import GROUP_ID, KafkaIngest
from services.ledger.adapters.kafka_relay import OutboxRelay
from services.ledger.application.service import Ledger

RELAY_ONLY_POLL_SECONDS = 0.05
# After SIGTERM, how long ingest and the relay may take to finish the batch in hand (the
# relay waits at most ACK_TIMEOUT_S for acknowledgements) before they are cancelled.
STOP_GRACE_S = 10.0

log = logging.getLogger(__name__)


async def serve(
    ledger: Ledger,
    bootstrap: str,
    *,
    ingest: bool = True,
    relay: bool = True,
    group_id: str = GROUP_ID,
    max_batch: int = 2000,
    stop: asyncio.Event | None = None,
    project: bool | None = None,
    stop_grace: float = STOP_GRACE_S,
) -> None:
    """Graceful stop: the batch in hand is applied and published, then the process exits.
    A hard kill at any instant loses nothing: positions live in the ledger's store.

    `project` (default: only when this process has no relay) makes ingest bring the views
    up to date after each batch; a relay always does before it publishes. An ingest-only
    process next to a relay-only one leaves it to the relay, so each does its own half on
    its own core."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    # Two store threads: ingest writes the ledger while the relay brings the views up to
    # date and publishes, so one's database round trips overlap the other's work. Without
    # a relay in this process, ingest keeps the views up to date itself.
    executor = ThreadPoolExecutor(1, thread_name_prefix="ingest")
    relay_executor = ThreadPoolExecutor(1, thread_name_prefix="relay")
    outbox = OutboxRelay(ledger, bootstrap, executor=relay_executor)
    consumer = KafkaIngest(
        ledger,
        bootstrap,
        group_id=group_id,
        max_batch=max_batch,
        executor=executor,
        project=(not relay) if project is None else project,
        on_applied=outbox.wake if relay else None,
    )
    if relay or consumer.project:
        # The process's one projection runner: it follows the notification log, woken by
        # ingest's and the relay's catch_up, which wait for it to pass their positions.
        ledger.runner.start()
    tasks = []
    if ingest:
        tasks.append(asyncio.create_task(consumer.run(stop), name="ingest"))
    if relay:
        # Ingest in this process wakes the relay after each batch; a relay on its own polls,
        # often enough that polling adds little to the latency (three small queries a poll).
        interval = 0.2 if ingest else RELAY_ONLY_POLL_SECONDS
        tasks.append(asyncio.create_task(outbox.run(stop, interval=interval), name="relay"))
    stopping = asyncio.create_task(stop.wait())
    try:
        # Until a signal, or a task ends (a failed one stops the process with its error).
        done, _ = await asyncio.wait([*tasks, stopping], return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()
    finally:
        stopping.cancel()
        stop.set()
        await _finish(tasks, stop_grace)
        executor.shutdown(wait=True)
        relay_executor.shutdown(wait=True)
        ledger.runner.stop()


async def _finish(tasks: list[asyncio.Task[None]], grace: float) -> None:
    """Let the tasks finish the batch in hand; cancel what still runs after `grace` seconds
    (a Kafka client that waits for a broker that is away). Cancelling loses nothing: a
    batch is applied and its position recorded in one transaction, and the relay records
    its position only after the broker acknowledged."""
    if not tasks:
        return
    _, pending = await asyncio.wait(tasks, timeout=grace)
    for task in pending:
        log.warning(
            "%s did not stop within %.0fs of the signal; cancelling it in %s",
            task.get_name(),
            grace,
            _awaiting(task),
        )
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _awaiting(task: asyncio.Task[None]) -> str:
    """Where a task waits: the innermost coroutine of its await chain."""
    where = "?"
    coro: Any = task.get_coro()
    while coro is not None and getattr(coro, "cr_frame", None) is not None:
        code = coro.cr_frame.f_code
        where = f"{code.co_qualname} ({code.co_filename}:{coro.cr_frame.f_lineno})"
        coro = getattr(coro, "cr_await", None)
    return where
