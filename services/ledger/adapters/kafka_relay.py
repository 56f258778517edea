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
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from eventsourcing.persistence import IntegrityError, Tracking

from schemas import TOPIC_BALANCES, TOPIC_DEADLETTER, TOPIC_LEDGER
from schemas.outbound import LedgerEntry, MemberBalance
from services.ledger.adapters import metrics
from services.ledger.adapters.kafka_clients import start_when_reachable
from services.ledger.adapters.relay_lease import lease_for
from services.ledger.application.projection import account_topics
from services.ledger.application.service import Ledger, balance_as_of
from services.ledger.domain.receipts import Rejection
from services.tiers.rebuild import TierProgressCache

log = logging.getLogger(__name__)

RELAY_KEY = "relay:kafka"
_REJECTION_TOPIC = f"{Rejection.Recorded.__module__}:{Rejection.Recorded.__qualname__}"

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
    ) -> None:
        self.ledger = ledger
        self.bootstrap = bootstrap
        self.batch = batch
        self._tiers = TierProgressCache(ledger.app)
        self.topics = [*account_topics(), _REJECTION_TOPIC]
        # Share the ingest's store thread when in one process: one writer to the views.
        self._own_executor = executor is None
        self._executor = executor or ThreadPoolExecutor(1, thread_name_prefix="relay")
        self._wake: asyncio.Event | None = None
        self.lease = lease_for(ledger.app.recorder)  # one publishing relay per store

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
        self.ledger.projection.run()  # the view must hold these entries
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
            if n.topic == _REJECTION_TOPIC:
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
        lots = view.lots_of(members)
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
        in hand); returns the messages published."""
        handled = 0
        while True:
            if handled and stop is not None and stop.is_set():
                return handled
            if handled and not await self._in_store(self.lease.acquire):
                return handled  # another relay leads now: leave the rest to it
            last, messages = await self._in_store(self._next_messages)
            if not last:
                return handled
            futures = [
                await producer.send(topic, value, key=key, headers=headers)
                for topic, key, value, headers in messages
            ]
            await asyncio.gather(*futures)  # every message acknowledged before we move on
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

    async def run(
        self, stop: asyncio.Event, interval: float = 0.2, standby_interval: float = 1.0
    ) -> None:
        producer = await start_when_reachable(
            lambda: AIOKafkaProducer(
                bootstrap_servers=self.bootstrap, enable_idempotence=True, acks="all"
            ),
            stop,
        )
        if producer is None:
            return
        self._wake = asyncio.Event()
        stop_waking = asyncio.create_task(self._wake_on(stop))
        try:
            delay = 0.5
            while not stop.is_set():
                try:
                    leading = await self._in_store(self.lease.acquire)
                    metrics.RELAY_LEADER.set(1 if leading else 0)
                    if not leading:  # another process's relay publishes; take over if it dies
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(stop.wait(), timeout=standby_interval)
                        continue
                    published = await self.publish_pending(producer, stop)
                except KafkaError as exc:
                    # The broker is away: nothing was recorded, so the same messages go
                    # again (same positions) once it is back.
                    log.warning("publishing failed (%s); retrying in %.1fs", exc, delay)
                    metrics.RELAY_RETRIES.labels("broker").inc()
                    await self._pause(stop, delay)
                    delay = min(delay * 2, 10.0)
                    continue
                except Exception:
                    # The store is away (or a transient conflict): the relay's position is
                    # only recorded after its messages were acknowledged, so the next round
                    # starts from the last recorded one. A process that exits here would
                    # need someone to restart it; waiting costs nothing.
                    log.exception("relaying failed; retrying in %.1fs", delay)
                    metrics.RELAY_RETRIES.labels("store").inc()
                    await self._pause(stop, delay)
                    delay = min(delay * 2, 10.0)
                    continue
                delay = 0.5
                if not published:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), timeout=interval)
                    self._wake.clear()
        finally:
            stop_waking.cancel()
            await producer.stop()
            await self._in_store(self.lease.release)
            metrics.RELAY_LEADER.set(0)

    @staticmethod
    async def _pause(stop: asyncio.Event, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=seconds)

    async def _wake_on(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self.wake()

    def close(self) -> None:
        if self._own_executor:
            self._executor.shutdown(wait=True)


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
