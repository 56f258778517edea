"""The ledger as its entrypoints see it: ingest, time-driven work, reads, verify, rebuild."""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path

from schemas.outbound import LedgerEntry
from services.ledger.application import commands
from services.ledger.application.commands import Done
from services.ledger.application.entries import lifetime_change
from services.ledger.application.ledger import Inbound, LedgerApplication, Outcome
from services.ledger.application.projection import LedgerProjection, ProjectionRunner
from services.ledger.application.view_switch import active_prefix, other_prefix, record_switch
from services.ledger.application.views import (
    BalanceRow,
    BalanceSources,
    EntryRow,
    HoldRow,
    LedgerView,
)
from services.ledger.domain.errors import Declined
from services.ledger.domain.holds import HoldRecord
from services.ledger.domain.lots import PENDING, Lot, created_by, next_due
from services.ledger.domain.provenance import Origin

PARKED_CHECK = timedelta(minutes=1)  # how often the scheduler looks at parked deadlines

EXPIRING_WINDOWS = (30, 60, 90)


@dataclass(frozen=True, slots=True)
class MemberBalanceView:
    """A member's balance as of `as_of`, counting time-driven work that is already due."""

    member_id: str
    available: int
    pending: int
    held: int
    lifetime_earned: int
    tier: str | None
    expiring: dict[int, int]
    as_of: datetime
    as_of_position: int
    entries: int = 0  # the member's entries it counts: the last one's seq (0: none yet)


def balance_as_of(row: BalanceRow, lots: Iterable[Lot], now: datetime) -> MemberBalanceView:
    """What the ledger will say at `now`: due releases and expiries are applied in the order
    and with the debt settlement the scheduler uses, so expired points are never shown as
    available even before the scheduler has run."""
    available, pending = row.available, row.pending
    current = {lot.lot_id: lot for lot in lots}
    while (due := next_due(current.values(), now)) is not None:
        _, kind, lot_id = due
        lot = current[lot_id]
        if kind == 0:
            settled = min(max(0, -available), lot.remaining)
            pending -= lot.remaining
            available += lot.remaining
            current[lot_id] = replace(lot.released(), remaining=lot.remaining - settled)
        else:
            available -= lot.remaining
            current[lot_id] = replace(lot, remaining=0)
    expiring = dict.fromkeys(EXPIRING_WINDOWS, 0)
    for lot in current.values():
        if lot.remaining and lot.expires_at is not None:
            for days in EXPIRING_WINDOWS:
                if now < lot.expires_at <= now + timedelta(days=days):
                    expiring[days] += lot.remaining
    return MemberBalanceView(
        member_id=row.member_id,
        available=available,
        pending=pending,
        held=row.held,
        lifetime_earned=row.lifetime_earned,
        tier=row.tier,
        expiring=expiring,
        as_of=now,
        as_of_position=row.position,
        entries=row.entries,
    )


# Instants a balance can be asked for: far enough from datetime's limits that converting
# to UTC and looking 90 days ahead (or a qualification period back) cannot overflow.
AS_OF_YEARS = (1900, 8999)


def check_as_of(at: datetime) -> None:
    """Refuse an instant a balance cannot be worked out for (no time zone, out of range)."""
    if at.tzinfo is None or at.utcoffset() is None:
        raise Declined("invalid_input", "as_of needs a time zone, e.g. 2026-11-20T10:00:00Z")
    first, last = AS_OF_YEARS
    if not first <= at.year <= last:
        raise Declined("invalid_input", f"as_of must be in the years {first} to {last}")


def balance_then(sources: BalanceSources, at: datetime) -> MemberBalanceView:
    """The member's balance as the ledger stood at `at`.

    Entries are taken in the order they were recorded (seq), up to the first one effective
    after `at`: the balance is the balance-after of the entry before it. That is a state the
    ledger was in, and it never counts anything effective after `at`; it does count every
    release and expiry due by then, as each command first records what is due. (The newest
    entry effective by `at` is not the rule: an entry recorded late with an earlier
    effective time has a balance-after that counts entries effective later than itself.)
    An entry back-dated to before `at` but recorded after something effective later is not
    counted: the ledger had no state with it and without the later one. Lifetime and lots
    are those after the same entry (today's, less what was recorded after it); the tier is
    the one set by the newest-recorded tier change effective by `at`. With no entry
    effective after `at` it is today's balance, with what is due by `at` (`balance_as_of`).
    """
    row, since = sources.balance, sources.since
    if not since:
        return balance_as_of(row, sources.lots, at)
    if since[0].effective_at > at:  # the member's first entry: nothing yet
        return balance_as_of(_nothing(row.member_id, at), (), at)
    counted, later = since[0], since[1:]
    after = counted.body["balance_after"]
    lifetime = row.lifetime_earned - sum(
        lifetime_change(e.entry_type, e.body["details"]) for e in later
    )
    then = BalanceRow(
        member_id=row.member_id,
        available=after["available"],
        pending=after["pending"],
        held=after["held"],
        lifetime_earned=lifetime,
        tier=sources.tier_set.body["details"]["tier"] if sources.tier_set else None,
        entries=counted.seq,
        position=counted.position,
        updated_at=counted.effective_at,
    )
    return balance_as_of(then, lots_before(sources.lots, later), at)


def _nothing(member_id: str, at: datetime) -> BalanceRow:
    return BalanceRow(member_id, 0, 0, 0, 0, None, entries=0, position=0, updated_at=at)


def lots_before(lots: Iterable[Lot], later: Sequence[EntryRow]) -> list[Lot]:
    """The lots as they were before the `later` entries (in recorded order), from the lots
    as they are now: lots those entries created are left out, and a lot they touched is as
    the first of them found it (its state after that entry, less that entry's moves on it,
    pending again if that entry released it)."""
    if not later:
        return list(lots)
    first_later = later[0].seq
    before: dict[str, tuple[int, str]] = {}
    for entry in later:
        body = entry.body
        moved: dict[str, int] = {}
        for move in body["moves"]:
            moved[move["lot_id"]] = moved.get(move["lot_id"], 0) + move["amount"]
        released = body["details"].get("lot_id") if entry.entry_type == "pending_released" else None
        for lot in body["lots_after"]:
            lot_id = lot["lot_id"]
            if lot_id not in before:
                status = PENDING if lot_id == released else lot["status"]
                before[lot_id] = (lot["remaining"] - moved.get(lot_id, 0), status)
    found = []
    for lot in lots:
        made = created_by(lot.lot_id)
        if made is not None and made >= first_later:
            continue
        if lot.lot_id in before:
            remaining, status = before[lot.lot_id]
            found.append(replace(lot, remaining=remaining, status=status))
        else:
            found.append(lot)
    return found


@dataclass(frozen=True, slots=True)
class IngestReport:
    applied: int
    duplicates: int
    rejected: list[tuple[int, Outcome]]  # (line number, outcome)
    parked: list[tuple[int, Outcome]] = field(default_factory=list)  # still waiting


class Ledger:
    def __init__(
        self,
        app: LedgerApplication,
        view: LedgerView,
        view_factory: Callable[[str], LedgerView] | None = None,
    ) -> None:
        self.app = app
        self.view = view
        #: Told each entry the process's projection writes, in order (caches of reads).
        self.observers: list[Callable[[LedgerEntry], None]] = []
        self.projection = LedgerProjection(
            app.process_recorder, app.mapper, view, observers=self.observers, recent=app.recent
        )
        self.view_factory = view_factory
        self._parked_checked: datetime | None = None
        #: The process's one projection runner: `loyalty api` and `serve` start its thread.
        self.runner = ProjectionRunner(lambda: self.projection, app.process_recorder)

    def catch_up(self, target: int | None = None) -> None:
        """Return once the views hold every entry recorded before this call (or up to the
        notification id `target`): a writer's read-your-writes."""
        self.runner.catch_up(target)

    def fresh(self) -> None:
        """Before a read: wait (briefly, bounded) until the runner has projected what was
        recorded up to now, by any process; one cheap query when it has. A read never
        projects while the runner's thread runs (without it: one-shot use, it does)."""
        self.runner.catch_up(read=True)

    # ------------------------------------------------------------ projections

    def use_active_view(self) -> bool:
        """Serve from the table set the last rebuild switched to; True when it changed."""
        if self.view_factory is None:
            return False
        prefix = active_prefix(self.app)
        if self.view.tracking_key == f"{prefix}ledger":
            return False
        view = self.view_factory(prefix)

        def change() -> None:
            self.view = view
            self.projection = LedgerProjection(
                self.app.process_recorder,
                self.app.mapper,
                view,
                observers=self.observers,
                recent=self.app.recent,
            )

        self.runner.switch(change)
        return True

    def rebuild(self) -> tuple[str, int]:
        """Project the ledger from zero into the other table set while the active one keeps
        serving, then switch to it; returns the new prefix and the entries projected."""
        assert self.view_factory is not None, "rebuild needs a view factory"
        self.use_active_view()
        target = other_prefix(active_prefix(self.app))
        fresh = self.view_factory(target)
        fresh.reset()
        count = LedgerProjection(self.app.process_recorder, self.app.mapper, fresh).run()
        record_switch(self.app, target)
        self.use_active_view()
        return target, count

    def close(self) -> None:
        self.runner.stop()
        self.app.close()

    # ----------------------------------------------------------------- ingest

    def ingest_lines(self, path: Path, *, batch_size: int = 500) -> IngestReport:
        """Feed a JSON-lines file through the same validation and rules as Kafka ingest."""
        applied = duplicates = 0
        rejected: list[tuple[int, Outcome]] = []
        parked: list[tuple[int, Outcome]] = []
        with _fewer_collections():
            for batch in _batches(_read_lines(path), batch_size):
                outcomes = self.app.apply_batch([item for _, item in batch])
                for (line, _), outcome in zip(batch, outcomes, strict=True):
                    if outcome.status == "applied":
                        applied += 1
                    elif outcome.status == "duplicate":
                        duplicates += 1
                    elif outcome.status == "parked":
                        parked.append((line, outcome))
                    else:
                        rejected.append((line, outcome))
                self.catch_up()
        # What a later line made possible was applied then: only the ones still waiting.
        waiting = {item.event_id for _, item in self.app.parked()} if parked else set()
        still = [(line, o) for line, o in parked if o.event_id in waiting]
        applied += len(parked) - len(still)  # applied once a later line made it possible
        parked = still
        return IngestReport(applied, duplicates, rejected, parked)

    # -------------------------------------------------------------- time work

    def tick(self, now: datetime | None = None) -> int:
        """Do the time-driven work due at `now` (release, expiry, hold TTL, tier reviews)
        and decline parked events past their deadline; idempotent for an instant."""
        at = now or self.app.clock.now()
        self.catch_up()
        made = self.app.advance_members(self.view.members_due(at), at)
        # Parked events wait hours: their deadlines are checked at most once a minute.
        if self._parked_checked is None or not at - PARKED_CHECK < self._parked_checked <= at:
            made += self.app.expire_parked(at)
            self._parked_checked = at
        self.catch_up()
        return made

    # ------------------------------------------------------------------ reads

    def balance(self, member_id: str, now: datetime | None = None) -> MemberBalanceView | None:
        """The balance now, or as the ledger stood at `now` (`balance_then`; a later instant
        counts what will be due by then). None for a member with no entries at all."""
        if now is None:
            row = self.view.balance(member_id)
            if row is None:
                return None
            # Spent and expired lots change nothing due: only the open ones are read.
            return balance_as_of(row, self.view.open_lots(member_id), self.app.clock.now())
        check_as_of(now)
        sources = self.view.balance_sources(member_id, now)
        return None if sources is None else balance_then(sources, now)

    def statement(
        self, member_id: str, *, before_seq: int | None = None, limit: int = 50
    ) -> list[EntryRow]:
        return self.view.entries(member_id, before_seq=before_seq, limit=limit)

    def lots(self, member_id: str, *, spent: bool = True) -> list[Lot]:
        """Every lot of the member; without `spent`, the open ones (points left, or
        pending: what GET lots shows)."""
        return self.view.lots(member_id) if spent else self.view.open_lots(member_id)

    def holds(self, member_id: str) -> list[HoldRow]:
        return self.view.holds(member_id)

    # ------------------------------------------------------------------ holds

    def place_hold(
        self,
        member_id: str,
        *,
        reference: str,
        points: int,
        ttl: timedelta,
        actor: str,
        request_id: str | None = None,
    ) -> Done[HoldRecord]:
        done = commands.place_hold(
            self.app,
            member_id,
            reference=reference,
            points=points,
            ttl=ttl,
            actor=actor,
            request_id=request_id,
        )
        self.catch_up()
        return done

    def capture_hold(
        self, hold: str, *, points: int | None, actor: str, request_id: str | None = None
    ) -> Done[HoldRecord]:
        done = commands.capture_hold(
            self.app, hold, points=points, actor=actor, request_id=request_id
        )
        self.catch_up()
        return done

    def void_hold(
        self, hold: str, *, reason: str | None, actor: str, request_id: str | None = None
    ) -> Done[HoldRecord]:
        done = commands.void_hold(self.app, hold, reason=reason, actor=actor, request_id=request_id)
        self.catch_up()
        return done

    def hold(self, hold: str) -> tuple[str, HoldRecord] | None:
        return commands.find_hold(self.app, hold)

    def adjust(
        self,
        member_id: str,
        points: int,
        *,
        reason: str,
        actor: str,
        allow_negative: bool = False,
        request_id: str | None = None,
    ) -> Done[None]:
        done = commands.adjust(
            self.app,
            member_id,
            points,
            reason=reason,
            actor=actor,
            allow_negative=allow_negative,
            request_id=request_id,
        )
        self.catch_up()
        return done


@contextmanager
def _fewer_collections(first: int = 20_000) -> Iterator[None]:
    """The garbage collector's youngest generation collected every `first` allocations
    (not every 700) while a file is ingested: each collection of the older generations
    walks the cached accounts, about a tenth of the ingest's CPU at the default. Only
    garbage in reference cycles waits longer to be freed; the setting is restored after."""
    threshold = gc.get_threshold()
    gc.set_threshold(max(first, threshold[0]), *threshold[1:])
    try:
        yield
    finally:
        gc.set_threshold(*threshold)


def _read_lines(path: Path) -> Iterator[tuple[int, Inbound]]:
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            line = raw.rstrip(b"\r\n")
            if not line.strip():
                continue
            yield number, Inbound(line, Origin(channel="file", file=path.name, line=number))


def _batches(
    items: Iterator[tuple[int, Inbound]], size: int
) -> Iterator[list[tuple[int, Inbound]]]:
    batch: list[tuple[int, Inbound]] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch
