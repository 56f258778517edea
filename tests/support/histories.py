"""Inbound histories for the determinism tests ("one history, one ledger").

An `Event` is plain data; it becomes the bytes of an inbound message with the origin of the
path it is fed through (a file line or a Kafka topic/partition/offset). After a history is
fed, `ledger_state` reads what the ledger holds per member by content only (never by lot id
or position, which depend on the order entries were made), so ledgers fed in different ways
can be compared with `==`.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from eventsourcing.persistence import Tracking

from schemas import EVENT_TYPES_BY_TOPIC
from services.ledger.adapters.kafka_ingest import tracking_key
from services.ledger.application.ledger import Inbound, Outcome
from services.ledger.application.service import Ledger
from services.ledger.bootstrap import Settings, build_ledger
from services.ledger.domain.account import Balances
from services.ledger.domain.clock import FixedClock
from services.ledger.domain.lots import Lot
from services.ledger.domain.program import Program
from services.ledger.domain.provenance import Origin

PARKED = "parked"  # the outcome of an event whose prerequisite has not arrived yet


def at(text: str) -> datetime:
    """An RFC 3339 instant as an aware UTC datetime (figures worked by hand name instants so)."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def ts(at: datetime) -> str:
    """RFC 3339 in UTC with seconds, as the inbound contract wants it."""
    return at.isoformat().replace("+00:00", "Z")


def topic_of(event_type: str) -> str:
    for topic, types in EVENT_TYPES_BY_TOPIC.items():
        if event_type in types:
            return topic
    raise ValueError(f"no topic carries {event_type}")


@dataclass(frozen=True, slots=True)
class Event:
    event_id: str
    type: str
    occurred_at: datetime
    member_id: str
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def topic(self) -> str:
        return topic_of(self.type)

    @property
    def raw(self) -> bytes:
        payload = {
            "event_id": self.event_id,
            "type": self.type,
            "occurred_at": ts(self.occurred_at),
            "member_id": self.member_id,
            "data": self.data,
        }
        return json.dumps(payload, sort_keys=True).encode()


# ------------------------------------------------------------------------ event builders


def purchase(
    event_id: str,
    member: str,
    at: datetime,
    *,
    order_id: str,
    total_minor: int,
    lines: Sequence[tuple[str, int, int]] = (),
) -> Event:
    """`lines` are (sku, quantity, unit price in minor units)."""
    data: dict[str, Any] = {"order_id": order_id, "currency": "USD", "total_minor": total_minor}
    if lines:
        data["lines"] = [
            {"sku": sku, "quantity": qty, "unit_price_minor": price} for sku, qty, price in lines
        ]
    return Event(event_id, "purchase.completed", at, member, data)


def refund(
    event_id: str,
    member: str,
    at: datetime,
    *,
    order_id: str,
    refund_id: str,
    amount_minor: int | None = None,
    lines: Sequence[tuple[str, int]] = (),
) -> Event:
    data: dict[str, Any] = {"order_id": order_id, "refund_id": refund_id}
    if lines:
        data["lines"] = [{"sku": sku, "quantity": qty} for sku, qty in lines]
    else:
        data["amount_minor"] = amount_minor
    return Event(event_id, "purchase.refunded", at, member, data)


def redemption(
    event_id: str,
    member: str,
    at: datetime,
    *,
    redemption_id: str,
    points: int | None = None,
    reward_id: str | None = None,
) -> Event:
    data: dict[str, Any] = {"redemption_id": redemption_id}
    if reward_id is not None:
        data["reward_id"] = reward_id
    else:
        data["points"] = points
    return Event(event_id, "redemption.requested", at, member, data)


def cancellation(event_id: str, member: str, at: datetime, *, redemption_id: str) -> Event:
    return Event(event_id, "redemption.cancelled", at, member, {"redemption_id": redemption_id})


def activity(
    event_id: str, member: str, at: datetime, *, name: str, reference: str | None = None
) -> Event:
    data: dict[str, Any] = {"activity": name}
    if reference is not None:
        data["reference"] = reference
    return Event(event_id, "activity.completed", at, member, data)


def enrolment(event_id: str, member: str, at: datetime) -> Event:
    return Event(event_id, "member.enrolled", at, member, {})


def referral(event_id: str, referrer: str, at: datetime, *, referee: str) -> Event:
    return Event(event_id, "referral.qualified", at, referrer, {"referee_member_id": referee})


# --------------------------------------------------------------------------- feeding


def open_ledger(directory: Path, program: Program, clock: FixedClock) -> Ledger:
    """A ledger on a fresh SQLite file in `directory`."""
    return build_ledger(
        Settings(db=directory / "ledger.sqlite", PERSISTENCE_MODULE="eventsourcing.sqlite"),
        program=program,
        clock=clock,
    )


def file_item(event: Event, line: int, file: str = "history.jsonl") -> Inbound:
    return Inbound(event.raw, Origin("file", file=file, line=line))


def kafka_item(event: Event, partition: int, offset: int) -> Inbound:
    return Inbound(
        event.raw, Origin("kafka", topic=event.topic, partition=partition, offset=offset)
    )


def apply_at(
    ledger: Ledger, clock: FixedClock, now: datetime, items: Sequence[Inbound]
) -> list[Outcome]:
    """One batch, with the wall clock at `now`."""
    clock.set(now)
    return ledger.app.apply_batch(items)


def apply_from_kafka(
    ledger: Ledger, clock: FixedClock, now: datetime, event: Event, partition: int, offset: int
) -> Outcome:
    """One Kafka record in its own batch, with its consumer position, as the ingest does."""
    clock.set(now)
    [outcome] = ledger.app.apply_batch(
        [kafka_item(event, partition, offset)],
        Tracking(tracking_key(event.topic, partition), offset),
    )
    return outcome


def feed_file(
    ledger: Ledger, clock: FixedClock, batches: Iterable[Sequence[Event]]
) -> list[Outcome]:
    """Each batch in one transaction, the wall clock at its last event's time (no batch
    holds an event from the future); lines are numbered across the batches."""
    outcomes: list[Outcome] = []
    line = 0
    for batch in batches:
        items = []
        for event in batch:
            line += 1
            items.append(file_item(event, line))
        outcomes += apply_at(ledger, clock, max(e.occurred_at for e in batch), items)
    return outcomes


# ------------------------------------------------------------------- reading by content

LotContent = tuple[int, int, str, datetime, datetime | None, datetime | None, str]


def lot_content(lot: Lot) -> LotContent:
    return (
        lot.amount,
        lot.remaining,
        lot.status,
        lot.earned_at,
        lot.release_at,
        lot.expires_at,
        lot.source,
    )


@dataclass(frozen=True, slots=True)
class MemberState:
    balance: Balances
    tier: str | None
    lots: tuple[LotContent, ...]  # sorted


def ledger_state(
    ledger: Ledger, members: Iterable[str], *, holding_points_only: bool = False
) -> dict[str, MemberState | None]:
    """Balances, tier and lots (by content) of each member; None for a non-member.

    `holding_points_only` leaves out lots with nothing left in them: a compensated event
    (a referral that lost to an earlier one) leaves its emptied lot behind, which the
    ledger fed in event-time order never made."""
    found: dict[str, MemberState | None] = {}
    for member in members:
        account = ledger.app.find_account(member)
        if account is None or not account.is_member:  # never enrolled, or enrolment undone
            found[member] = None
            continue
        lots = [lot for lot in account.lots.values() if lot.remaining or not holding_points_only]
        found[member] = MemberState(
            account.balance, account.tier, tuple(sorted(lot_content(lot) for lot in lots))
        )
    return found


EntryContent = tuple[Any, ...]


def entry_contents(ledger: Ledger, member: str) -> list[EntryContent]:
    """The member's statement, oldest first, by content: entry type, effective time, points,
    postings, tier named on the entry, and its lot moves by the lot's content (the lot's
    source, earn time and size) rather than by lot id. Needs the projection to be run."""
    account = ledger.app.find_account(member)
    if account is None:
        return []
    named = {
        lot.lot_id: (lot.source, lot.earned_at.isoformat(), lot.amount)
        for lot in account.lots.values()
    }
    rows = sorted(ledger.statement(member, limit=1_000_000), key=lambda row: row.seq)
    return [
        (
            row.entry_type,
            row.effective_at,
            row.body["points"],
            tuple(sorted((p["account"], p["amount"]) for p in row.body["postings"])),
            row.body["provenance"]["tier"],
            tuple(sorted((named[m["lot_id"]], m["amount"]) for m in row.body["moves"])),
        )
        for row in rows
    ]


# ----------------------------------------------------------------- readable differences


def _lot_text(lot: LotContent) -> str:
    amount, remaining, status, earned_at, release_at, expires_at, source = lot
    release = f" release {ts(release_at)}" if release_at else ""
    expires = f" expires {ts(expires_at)}" if expires_at else ""
    return f"[{source}: {remaining}/{amount} {status}, earned {ts(earned_at)}{release}{expires}]"


def state_differences(
    want: dict[str, MemberState | None], got: dict[str, MemberState | None]
) -> str:
    """What differs, member by member, in words (for assertion messages)."""
    lines: list[str] = []
    for member, w in want.items():
        g = got.get(member)
        if w == g:
            continue
        if w is None or g is None:
            lines.append(f"{member}: {'not a member' if g is None else g} (want {w})")
            continue
        if w.balance != g.balance:
            lines.append(f"{member}: balance {g.balance}, want {w.balance}")
        if w.tier != g.tier:
            lines.append(f"{member}: tier {g.tier}, want {w.tier}")
        missing = Counter(w.lots) - Counter(g.lots)
        extra = Counter(g.lots) - Counter(w.lots)
        if missing or extra:
            lines.append(
                f"{member}: lots missing {[_lot_text(x) for x in sorted(missing.elements())]}; "
                f"lots not wanted {[_lot_text(x) for x in sorted(extra.elements())]}"
            )
    return "\n".join(lines)


def entry_differences(
    want: dict[str, list[EntryContent]], got: dict[str, list[EntryContent]]
) -> str:
    """The first differing entry of each member whose statement differs."""
    lines: list[str] = []
    for member, w in want.items():
        g = got.get(member, [])
        if w == g:
            continue
        at = next((i for i, (x, y) in enumerate(zip(w, g, strict=False)) if x != y), None)
        if at is None:
            at = min(len(w), len(g))
        lines.append(
            f"{member}: {len(g)} entries, want {len(w)}; first difference at #{at + 1}: "
            f"{g[at] if at < len(g) else None}, want {w[at] if at < len(w) else None}"
        )
    return "\n".join(lines)


def history_text(history: Iterable[Event]) -> str:
    return "\n".join(
        f"{e.event_id} {ts(e.occurred_at)} {e.type} {e.member_id} "
        f"{json.dumps(e.data, sort_keys=True)}"
        for e in history
    )
