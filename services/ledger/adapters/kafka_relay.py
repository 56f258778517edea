"""The outbox relay: publishes the ledger's notification log to Kafka, at least once.

Entries go to loyalty.ledger.v1 (key member_id, the ledger position in a header), each
touched member's balance to loyalty.balances.v1 (compacted), and rejections to
loyalty.deadletter.v1 with the original key and bytes and the reason in headers. The relay
records how far it has published in the ledger's own store after the broker acknowledged,
so a crash repeats messages (with the same position) but never skips one.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError
from eventsourcing.persistence import IntegrityError, Tracking

from schemas import TOPIC_BALANCES, TOPIC_DEADLETTER, TOPIC_LEDGER
from schemas.outbound import LedgerEntry, MemberBalance
from services.ledger.adapters import metrics
from services.ledger.adapters.kafka_clients import (
    CLOSE_TIMEOUT_S,
    FIRST_RETRY_S,
    next_delay,
    pause,
    start_when_reachable,
    stop_within,
)
from services.ledger.adapters.relay_lease import lease_for
from services.ledger.application.compact import stored_topics
from services.ledger.application.projection import account_topics
from services.ledger.application.service import Ledger, balance_as_of
from services.ledger.domain.receipts import Rejection
from services.tiers.rebuild import TierProgressCache

log = logging.getLogger(__name__)

RELAY_KEY = "relay:kafka"
# Rows of a rejection: under the class's own topic (written before) or its short one.
_REJECTION_TOPICS = stored_topics(Rejection.Recorded)

# How long a batch may wait for the broker's acknowledgements. Longer means the broker is
# away: the producer is closed (its own retries do not wait between attempts) and a new
# one started once the broker answers.
ACK_TIMEOUT_S = 5.0
# While acknowledgements are awaited, how often to check that a broker can be reached.
PROBE_S = 1.0

Message = tuple[str, bytes | None, bytes, list[tuple[str, bytes]]]


def _h(value: object) -> bytes:
    return str(value).encode()


class OutboxRelay:
    def __init__(
        self,
        ledger: Ledger,
        bootstrap: str,
        *,
        batch: int = 500,
        executor: ThreadPoolExecutor | None = None,
        ack_timeout: float = ACK_TIMEOUT_S,
    ) -> None:
        self.ledger = ledger
        self.bootstrap = bootstrap
        self.batch = batch
        self._tiers = TierProgressCache(ledger.app)
        self.topics = [*account_topics(), *_REJECTION_TOPICS]
        # Share the ingest's store thread when in one process: one writer to the views.
        self._own_executor = executor is None
        self._executor = executor or ThreadPoolExecutor(1, thread_name_prefix="relay")
        self._wake: asyncio.Event | None = None
        self.lease = lease_for(ledger.app.recorder)  # one publishing relay per store
        self.ack_timeout = ack_timeout
        self._broker_delay = FIRST_RETRY_S

    def wake(self) -> None:
        """New entries were written in this process: publish now rather than at the next poll."""
        if self._wake is not None:
            self._wake.set()

    async def _in_store(self, func: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, func, *args)

    @property
    def position(self) -> int:
        return self.ledger.app.process_recorder.max_tracking_id(RELAY_KEY) or 0

    def _next_messages(self) -> tuple[int, list[Message]]:
        """The messages for the next notifications after the relay's position.

        Entries are published as the projection wrote them (one query for the batch) rather
        than decoded again, and the touched members' balances are read in two queries."""
        app = self.ledger.app
        notifications = app.process_recorder.select_notifications(
            start=self.position + 1, limit=self.batch, topics=self.topics
        )
        if not notifications:
            return 0, []
        self.ledger.catch_up(notifications[-1].id)  # the view must hold these entries
        view = self.ledger.view
        written = {
            position: (member, entry_type, body)
            for position, member, entry_type, body in view.published_entries(
                notifications[0].id, notifications[-1].id
            )
        }
        messages: list[Message] = []
        members: set[str] = set()
        tiers = bool(app.program.tiers)  # balances then show the progress toward the next
        for n in notifications:
            if n.topic in _REJECTION_TOPICS:
                event = app.mapper.to_domain_event(n)
                assert isinstance(event, Rejection.Recorded)
                messages.append(_dead_letter(event, n.id))
                continue
            member, entry_type, body = written[n.id]
            members.add(member)
            if tiers:
                self._tiers.observe(LedgerEntry.model_validate_json(body))
            messages.append(
                (
                    TOPIC_LEDGER,
                    member.encode(),
                    body.encode(),
                    [("ledger-position", _h(n.id)), ("entry-type", _h(entry_type))],
                )
            )
        messages.extend(self._balance_messages(sorted(members)))
        return notifications[-1].id, messages

    def _balance_messages(self, members: list[str]) -> list[Message]:
        view = self.ledger.view
        rows = view.balances(members)
        # A spent or expired lot changes nothing in a balance (balance_as_of): only the
        # open ones are read, however long the members' histories.
        lots = view.lots_of(members, open_only=True)
        now = self.ledger.app.clock.now()
        messages: list[Message] = []
        for member in members:
            row = rows.get(member)
            if row is None:
                continue
            balance = balance_as_of(row, lots.get(member, []), now)
            held_until, progress = self._tiers.fields(member, now)
            body = MemberBalance(
                member_id=member,
                available=balance.available,
                pending=balance.pending,
                held=balance.held,
                lifetime_earned=balance.lifetime_earned,
                tier=balance.tier,
                expiring={f"{k}d": v for k, v in balance.expiring.items()},
                as_of_position=balance.as_of_position,
                as_of=now,
                tier_held_until=held_until,
                tier_progress=progress,
            )
            messages.append(
                (
                    TOPIC_BALANCES,
                    member.encode(),
                    body.model_dump_json().encode(),
                    [("ledger-position", _h(balance.as_of_position))],
                )
            )
        return messages

    async def publish_pending(
        self, producer: AIOKafkaProducer, stop: asyncio.Event | None = None
    ) -> int:
        """Publish everything after the relay's position (or until `stop`, after the batch
        in hand); returns the messages published.

        A batch not acknowledged within `ack_timeout` raises KafkaTimeoutError: its position
        is not recorded, so it goes again, with the same positions, when the broker is back
        (or a relay next runs). `stop` thus waits at most that long for the batch in hand."""
        handled = 0
        while True:
            if handled and stop is not None and stop.is_set():
                return handled
            if handled and not await self._in_store(self.lease.acquire):
                return handled  # another relay leads now: leave the rest to it
            last, messages = await self._in_store(self._next_messages)
            if not last:
                return handled
            await self._send_all(producer, messages)
            try:
                await self._in_store(
                    self.ledger.app.process_recorder.insert_tracking, Tracking(RELAY_KEY, last)
                )
            except IntegrityError:
                # Another relay (a second `serve`) recorded this position or a later one
                # first; what we published repeats messages with the same positions.
                log.info("relay position %s already recorded by another relay", last)
            for topic, *_ in messages:
                metrics.RELAY_MESSAGES.labels(topic).inc()
            newest = await self._in_store(self.ledger.app.process_recorder.max_notification_id)
            metrics.RELAY_LAG.set(max(0, (newest or 0) - last))
            handled += len(messages)
            self._broker_delay = FIRST_RETRY_S  # the broker answers

    async def _send_all(self, producer: AIOKafkaProducer, messages: list[Message]) -> None:
        """Every message sent and acknowledged; KafkaConnectionError as soon as no broker
        can be reached (checked every PROBE_S while the acknowledgements are awaited:
        aiokafka's sender meanwhile retries without pause), KafkaTimeoutError after
        ack_timeout."""

        async def send() -> None:
            futures = [
                await producer.send(topic, value, key=key, headers=headers)
                for topic, key, value, headers in messages
            ]
            await asyncio.gather(*futures)  # every message acknowledged before we move on

        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.ack_timeout
        sending = asyncio.ensure_future(send())
        try:
            while True:
                left = deadline - loop.time()
                if left <= 0:
                    raise KafkaTimeoutError(
                        f"{len(messages)} messages not acknowledged within {self.ack_timeout:.0f}s"
                    )
                done, _ = await asyncio.wait({sending}, timeout=min(PROBE_S, left))
                if done:
                    sending.result()
                    return
                if not await _reachable(producer):
                    raise KafkaConnectionError("no broker can be reached")
        finally:
            if not sending.done():
                sending.cancel()
                with contextlib.suppress(asyncio.CancelledError, KafkaError):
                    await sending

    def _make_producer(self) -> AIOKafkaProducer:
        return AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            enable_idempotence=True,
            acks="all",
            request_timeout_ms=int(self.ack_timeout * 1000),
        )

    async def run(
        self, stop: asyncio.Event, interval: float = 0.2, standby_interval: float = 1.0
    ) -> None:
        """Publish until `stop`. When the broker goes away, the producer is closed and a new
        one started once the broker answers again, with waits doubling up to a bound and
        one log line per attempt; the batch in hand goes again with the same positions."""
        self._wake = asyncio.Event()
        stop_waking = asyncio.create_task(self._wake_on(stop))
        try:
            while not stop.is_set():
                producer = await start_when_reachable(self._make_producer, stop)
                if producer is None:
                    return
                try:
                    await self._publish_until_stopped(producer, stop, interval, standby_interval)
                except KafkaError as exc:
                    # Nothing of the batch in hand was recorded: it goes again (same
                    # positions) once the broker is back.
                    log.warning(
                        "publishing failed (%s); reconnecting in %.1fs", exc, self._broker_delay
                    )
                    metrics.RELAY_RETRIES.labels("broker").inc()
                finally:
                    await _close(producer)
                await pause(stop, self._broker_delay)
                self._broker_delay = next_delay(self._broker_delay)
        finally:
            stop_waking.cancel()
            await self._in_store(self.lease.release)
            metrics.RELAY_LEADER.set(0)

    async def _publish_until_stopped(
        self,
        producer: AIOKafkaProducer,
        stop: asyncio.Event,
        interval: float,
        standby_interval: float,
    ) -> None:
        """Publish until `stop`; a broker failure (KafkaError) is left to the caller."""
        assert self._wake is not None
        delay = FIRST_RETRY_S
        while not stop.is_set():
            try:
                leading = await self._in_store(self.lease.acquire)
                metrics.RELAY_LEADER.set(1 if leading else 0)
                if not leading:  # another process's relay publishes; take over if it dies
                    await pause(stop, standby_interval)
                    continue
                published = await self.publish_pending(producer, stop)
            except KafkaError:
                raise
            except Exception:
                # The store is away (or a transient conflict): the relay's position is
                # only recorded after its messages were acknowledged, so the next round
                # starts from the last recorded one. A process that exits here would
                # need someone to restart it; waiting costs nothing.
                log.exception("relaying failed; retrying in %.1fs", delay)
                metrics.RELAY_RETRIES.labels("store").inc()
                await pause(stop, delay)
                delay = next_delay(delay)
                continue
            delay = FIRST_RETRY_S
            if not published:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=interval)
                self._wake.clear()

    async def _wake_on(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self.wake()

    def close(self) -> None:
        if self._own_executor:
            self._executor.shutdown(wait=True)


async def _reachable(producer: AIOKafkaProducer) -> bool:
    """Whether the producer has, or can open, a connection to a broker it knows."""
    client = producer.client
    for broker in client.cluster.brokers():
        if await client.ready(broker.nodeId):
            return True
    return False


async def _close(producer: AIOKafkaProducer) -> None:
    """Close a producer without waiting for batches the broker did not take: stop() would
    wait for each to be delivered, and aiokafka's sender retries them without pause while
    the broker is away. Nothing is lost: the relay sends a batch again (same positions)
    until one is acknowledged. The relay only closes with no batch in hand otherwise."""
    began = time.monotonic()
    sender = getattr(getattr(producer, "_sender", None), "sender_task", None)  # aiokafka 0.14
    if isinstance(sender, asyncio.Task):
        sender.cancel()
    try:
        await stop_within(producer, CLOSE_TIMEOUT_S)
    except Exception as exc:  # a broken producer is being dropped anyway
        log.warning("closing the producer: %r", exc)
    log.debug("producer closed in %.1fs", time.monotonic() - began)


def _dead_letter(event: Rejection.Recorded, position: int) -> Message:
    origin = event.origin
    headers = [
        ("reason", _h(event.reason)),
        ("detail", event.detail.encode()[:4096]),
        ("channel", _h(origin.channel)),
        ("ledger-position", _h(position)),
    ]
    for name, value in (
        ("source-topic", origin.topic),
        ("source-partition", origin.partition),
        ("source-offset", origin.offset),
        ("source-file", origin.file),
        ("source-line", origin.line),
        ("event-id", event.event_id),
    ):
        if value is not None:
            headers.append((name, _h(value)))
    return (TOPIC_DEADLETTER, _dead_letter_key(event), base64.b64decode(event.raw_b64), headers)


def _dead_letter_key(event: Rejection.Recorded) -> bytes | None:
    """A message from Kafka keeps its own key, a null one included; input from elsewhere
    (a file, HTTP) had none and is keyed by its member id when that is known."""
    if event.origin.channel == "kafka":
        return None if event.key_b64 is None else base64.b64decode(event.key_b64)
    return event.member_id.encode() if event.member_id else None
