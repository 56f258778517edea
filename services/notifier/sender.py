"""Delivers due rows of the sent-log: preferences, quiet hours and a last re-check first,
then mark in flight, send, mark sent; failures retry with exponential backoff and end in
the dead-letter state after the program's last try."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from datetime import datetime

from services.ledger.domain.program import Program
from services.notifier import metrics
from services.notifier.channels import Channel, DeliveryError
from services.notifier.contacts import MemberContacts
from services.notifier.notices import allowed, in_quiet_hours, recheck, send_after
from services.notifier.sent_log import Delivery, SentLog, backoff
from services.notifier.snapshots import Snapshots
from services.notifier.templates import render

log = logging.getLogger(__name__)


class Sender:
    def __init__(
        self,
        sent_log: SentLog,
        contacts: MemberContacts,
        snapshots: Snapshots,
        channels: Mapping[str, Channel],
        program: Program,
        clock: Callable[[], datetime],
    ) -> None:
        self.sent_log = sent_log
        self.contacts = contacts
        self.snapshots = snapshots
        self.channels = dict(channels)
        self.program = program
        self.clock = clock
        self.wake = asyncio.Event()

    def recover(self) -> int:
        found = self.sent_log.recover(self.clock())
        if found:
            metrics.IN_DOUBT.inc(found)
            log.warning("%s deliveries were in flight at a crash; retrying them", found)
        return found

    async def run_once(self, limit: int = 100) -> int:
        """Deliver what is due now; returns how many rows were handled."""
        now = self.clock()
        due = [d for d in self.sent_log.due(now, limit) if d.channel in self.channels]
        try:
            for delivery in due:
                try:
                    await self.deliver(delivery)
                except Exception as exc:  # a bug or a bad template must not stop every send
                    log.exception(
                        "delivering %s on %s failed", delivery.notice.key, delivery.channel
                    )
                    self._failed(delivery, f"{type(exc).__name__}: {exc}", self.clock())
        finally:
            for channel in self.channels.values():
                await channel.close()
        metrics.QUEUE_AGE.set(self.sent_log.oldest_due_age(self.clock()))
        return len(due)

    async def drain(self) -> int:
        """Deliver until nothing is due now (tests, the demo, `notify send`)."""
        total = 0
        while handled := await self.run_once():
            total += handled
        return total

    async def deliver(self, d: Delivery) -> None:
        now = self.clock()
        channel = self.channels[d.channel]
        kind, member = d.notice.kind, d.notice.member_id
        if in_quiet_hours(now, self.program):
            self.sent_log.defer(d, send_after(now, self.program), now)
            return
        reason = None
        contact = self.contacts.contact(member)
        notice = recheck(d.notice, self.snapshots.lots(member), now, self.program)
        if not self.program.notifications.enabled(kind):
            reason = "kind turned off in the program"
        elif not allowed(self.contacts.opt_outs(member), kind, d.channel):
            reason = "opted out"
        elif (unreachable := channel.unreachable(contact)) is not None:
            reason = unreachable
        elif notice is None:
            reason = "points no longer unspent"
        if reason is not None or notice is None:
            self.sent_log.suppress(d, reason or "suppressed", now)
            metrics.DELIVERIES.labels(kind, d.channel, "suppressed").inc()
            return
        rendered = render(notice, self.program.name, contact.name if contact else None)
        self.sent_log.begin(d, now)
        if d.attempts:
            metrics.DELIVERIES.labels(kind, d.channel, "retried").inc()
        try:
            await channel.send(notice, rendered, contact)
        except DeliveryError as exc:
            self._failed(d, str(exc), now)
            return
        self.sent_log.sent(d, self.clock(), notice)
        metrics.DELIVERIES.labels(kind, d.channel, "sent").inc()

    def _failed(self, d: Delivery, error: str, now: datetime) -> None:
        """One more failed try: retried after the backoff, or dead after the last try."""
        kind = d.notice.kind
        attempts = d.attempts + 1
        last = attempts >= self.program.notifications.attempts
        retry_at = None if last else now + backoff(attempts, self.program)
        self.sent_log.failed(d, error, self.clock(), retry_at, attempts)
        metrics.DELIVERIES.labels(kind, d.channel, "failed").inc()
        if last:
            metrics.DELIVERIES.labels(kind, d.channel, "dead").inc()
            log.error(
                "notice %s on %s is dead after %s tries: %s",
                d.notice.key,
                d.channel,
                attempts,
                error,
            )

    async def run(self, stop: asyncio.Event, interval: float = 1.0) -> None:
        self.recover()
        while not stop.is_set():
            handled = await self.run_once()
            if not handled:
                self.wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake_or_stop(stop), timeout=interval)

    async def _wake_or_stop(self, stop: asyncio.Event) -> None:
        waits = [asyncio.create_task(self.wake.wait()), asyncio.create_task(stop.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waits:
                task.cancel()
