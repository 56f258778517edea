"""Tiers as the ledger records them: compared with the projection's live table, checked
against the tier policy, and shown on balances.

The ledger decides tiers inline (MemberAccount) and records each change as a tier_assigned
entry, so its accounts hold the tier: nothing here decides one again to compare. The check
`tier_differences` re-decides each of the ledger's automatic decisions from the ledger's own
tier state just before it (not a recomputation from zero: a late event is applied to the
account as it stands, which a replay in position order would not reproduce).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from eventsourcing.application import AggregateNotFoundError

from schemas.outbound import LedgerEntry, TierProgressOut
from services.ledger.application.ledger import LedgerApplication
from services.ledger.domain.account import (
    QUALIFYING_HORIZON,
    MemberAccount,
    SnapshotTooOld,
    account_id,
)
from services.ledger.domain.program import Program
from services.ledger.domain.tier_policy import (
    Progress,
    TierState,
    advance,
    progress,
    prune,
    upgrade,
)
from services.tiers.facts import follow, tier_entry
from services.tiers.history import ledger_entries

# ------------------------------------------------------------------ the ledger's tiers


@dataclass(frozen=True)
class LedgerTier:
    """A member's tier as the ledger records it (the account)."""

    member_id: str
    tier: str | None
    held_until: datetime | None
    locked: bool


def ledger_tiers(app: LedgerApplication, members: Iterable[str]) -> dict[str, LedgerTier]:
    found: dict[str, LedgerTier] = {}
    for member in members:
        account = app.find_account(member)
        if account is not None:
            found[member] = LedgerTier(
                member, account.tier, account.tier_held_until, account.tier_locked
            )
    return found


def live_difference(recorded: LedgerTier, live: TierState | None) -> str | None:
    """How the projection's live table differs from the ledger for one member (None: not)."""
    if live is None:
        return "live table has nothing"
    if live.tier != recorded.tier:
        return f"live table has {live.tier or '-'}"
    if live.held_until != recorded.held_until:
        until = live.held_until.isoformat() if live.held_until else "-"
        return f"live table holds it until {until}"
    return None


# ------------------------------------------------------------------------- the check


@dataclass
class _Walk:
    """One member's tier state as the ledger's entries record it, walked in order."""

    state: TierState
    checked: bool | None = None  # decided inline from the start (the entry tier came first)
    upgrade_due: tuple[int, str] | None = None  # (earn seq, tier) the policy upgrades to
    late: bool = False  # an entry dated before one recorded earlier: checks end there


def _when(at: datetime | None) -> str:
    return at.isoformat() if at is not None else "-"


def _decided(program: Program, state: TierState, cause: str, at: datetime) -> TierState | None:
    """What the policy gives for an automatic decision from the state before it."""
    if cause == "entry":
        entry = program.entry_tier
        return replace(state, tier=entry.id if entry else None)
    if cause == "upgrade":
        after, decisions = upgrade(program, state, at, None)
        return after if decisions else state
    if cause in ("downgrade", "kept", "override_ended"):
        return advance(program, state, at)[0]
    return None  # an ops override (or 0.1's tiers service): nothing to decide again


def _check(program: Program, walk: _Walk, entry: LedgerEntry) -> list[str]:
    problems: list[str] = []
    recorded = tier_entry(entry)
    if walk.upgrade_due is not None:
        seq, tier = walk.upgrade_due
        if recorded is None or recorded.cause != "upgrade":
            problems.append(f"entry {seq}'s earn reaches {tier}, but no upgrade follows it")
        walk.upgrade_due = None
    if recorded is None:
        return problems
    if walk.checked is None:
        walk.checked = recorded.cause == "entry"
    state = walk.state
    if recorded.previous != state.tier:
        problems.append(
            f"entry {entry.seq} changes the tier from {recorded.previous or '-'}, "
            f"but it was {state.tier or '-'}"
        )
    if entry.provenance.program_version not in (None, program.version):
        return problems  # decided under another program version
    decided = _decided(program, state, recorded.cause, entry.effective_at)
    if decided is None:
        return problems
    if (decided.tier, decided.held_until) != (recorded.tier, recorded.held_until):
        problems.append(
            f"entry {entry.seq} ({recorded.cause}) records {recorded.tier or '-'} held until "
            f"{_when(recorded.held_until)}; from the ledger's tier state before it the "
            f"policy gives {decided.tier or '-'} held until {_when(decided.held_until)}"
        )
    return problems


def tier_differences(app: LedgerApplication) -> list[str]:
    """Each member's tier entries against the tier policy: every automatic decision (entry
    tier, upgrade, period-end review, override end) is what the policy gives from the
    ledger's own tier state just before it, each change starts from the tier held, and every
    earn that reaches a higher tier is followed by its upgrade (for members whose tiers the
    ledger decided from their first entry). A member's checks end at the first entry dated
    before one recorded earlier (a late event): the ledger then decides from the account as
    it stands, with what the late event changed. Returns one line per problem."""
    program = app.program
    if not program.tiers:
        return []
    walks: dict[str, _Walk] = {}
    found: list[str] = []
    for entry in ledger_entries(app):
        member = entry.member_id
        walk = walks.setdefault(member, _Walk(TierState(member)))
        if walk.state.stream_time is not None and entry.effective_at < walk.state.stream_time:
            # Applied out of time order (a late event, or what it made due): the ledger
            # decided from the account as it stood, which this walk does not rebuild.
            walk.late, walk.upgrade_due = True, None
        if not walk.late:
            found += [f"{member}: {p}" for p in _check(program, walk, entry)]
        state = follow(program, walk.state, entry, keep_all=True)
        horizon = entry.effective_at - QUALIFYING_HORIZON  # as the account keeps it
        if state.contributions and state.contributions[0].at < horizon:
            state = replace(
                state, contributions=tuple(c for c in state.contributions if c.at >= horizon)
            )
        walk.state = state
        if (
            entry.entry_type == "points_earned"
            and walk.checked
            and not walk.late
            and entry.provenance.program_version in (None, program.version)
        ):
            after, decisions = upgrade(program, state, entry.effective_at, None)
            if decisions:
                walk.upgrade_due = (entry.seq, str(after.tier))
    for member, walk in walks.items():
        if walk.upgrade_due is not None:
            seq, tier = walk.upgrade_due
            found.append(f"{member}: entry {seq}'s earn reaches {tier}, but no upgrade follows it")
    return found


# ---------------------------------------------------------------------- balances


def _account_at(app: LedgerApplication, member_id: str, version: int) -> MemberAccount | None:
    """The member's account as it stood after its entry `version`."""
    aggregate = account_id(member_id)
    account: Any
    try:
        account = app.repository.get(aggregate, version=version)
    except AggregateNotFoundError:
        return None
    except SnapshotTooOld:  # written by 0.1: fold the events instead
        account = None
        events: Iterable[Any] = app.repository.event_store.get(aggregate, lte=version)
        for event in events:
            account = event.mutate(account)
    assert isinstance(account, MemberAccount)
    return account


def account_tier_state(
    app: LedgerApplication, member_id: str, through: int | None = None
) -> TierState | None:
    """The ledger's tier state of a member (as of its entry `through`, else now)."""
    account = (
        app.find_account(member_id) if through is None else _account_at(app, member_id, through)
    )
    if account is None:
        return None
    state = account.tier_state(app.program)
    refunded = tuple(
        sorted((o.order_id, o.refunded_minor) for o in account.orders.values() if o.refunded_minor)
    )
    return replace(state, refunded=refunded, last_position=account.version)


def tier_progress(
    app: LedgerApplication, member_id: str, now: datetime, through: int | None = None
) -> Progress | None:
    """Where a member stands toward the next tier (None: no tiers); with `through`, from
    the account as of that entry (seq): a balance as of a past instant (0: before the
    member's first entry, None)."""
    if not app.program.tiers or through == 0:
        return None
    state = account_tier_state(app, member_id, through)
    return progress(app.program, state, now) if state is not None else None


def balance_tier_fields(
    app: LedgerApplication, member_id: str, now: datetime, through: int | None = None
) -> tuple[datetime | None, TierProgressOut | None]:
    """(held until, progress) for balance responses; (None, None) without tiers. The tier
    and how long it is held are the account's; the qualifying value is counted at `now`."""
    return _fields(app, tier_progress(app, member_id, now, through))


class TierProgressCache:
    """Each member's tier state, kept up to date from the entries a reader goes through
    (the relay), so a balance does not re-read the member's account every time. States are
    numbered by the member's entry number (seq)."""

    def __init__(self, app: LedgerApplication) -> None:
        self.app = app
        self.states: dict[str, TierState] = {}

    def observe(self, entry: LedgerEntry) -> None:
        program = self.app.program
        if not program.tiers:
            return
        member = entry.member_id
        state = self.states.get(member)
        if state is None and entry.seq > 1:  # first sight: the account as of this entry
            seeded = account_tier_state(self.app, member, entry.seq)
            if seeded is not None:
                self.states[member] = seeded
            return
        if state is None:  # a new member: nothing to read
            state = TierState(member)
        self.states[member] = follow(
            program, state, entry.model_copy(update={"position": entry.seq})
        )

    def fields(
        self, member_id: str, now: datetime
    ) -> tuple[datetime | None, TierProgressOut | None]:
        state = self.states.get(member_id)
        if state is None or not self.app.program.tiers:
            return balance_tier_fields(self.app, member_id, now)
        return _fields(self.app, progress(self.app.program, state, now))


class TierStateCache:
    """Each member's tier state as of its last projected entry, for balance reads (the
    API): kept up to date by the projection (`follow`, called with each entry it projects,
    in order), seeded from the member's account on the first read of a member (a snapshot
    and at most an interval of events), so a balance never replays the member's history.
    A state is used only when it is numbered with the entry (seq) the balance row counts;
    a gap (entries this process did not project) drops the member, to be seeded again."""

    MAX_MEMBERS = 100_000  # more: start afresh (each is seeded again on its next read)

    def __init__(self, app: LedgerApplication) -> None:
        self.app = app
        self.states: dict[str, TierState] = {}

    def follow(self, entry: LedgerEntry) -> None:
        """Follow one projected entry (entries of a member come in seq order)."""
        state = self.states.get(entry.member_id)
        if state is None:
            return  # never read here: nothing to keep up to date
        if state.last_position != entry.seq - 1:
            self.states.pop(entry.member_id, None)  # a gap: seed again when read
            return
        self.states[entry.member_id] = follow(
            self.app.program, state, entry.model_copy(update={"position": entry.seq})
        )

    def fields(
        self, member_id: str, now: datetime, seq: int
    ) -> tuple[datetime | None, TierProgressOut | None]:
        """(held until, progress) of a balance that counts the member's entries up to `seq`;
        the same as `balance_tier_fields(app, member_id, now, seq)`."""
        if not self.app.program.tiers or seq == 0:
            return None, None
        state = self.states.get(member_id)
        if state is None or state.last_position != seq:
            state = account_tier_state(self.app, member_id, seq)
            if state is None:
                return None, None
            if state.contributions:  # as `follow` keeps them: what a window can still count
                latest = max(c.at for c in state.contributions)
                state = replace(state, contributions=prune(self.app.program, state, latest))
            if len(self.states) >= self.MAX_MEMBERS:
                self.states.clear()
            current = self.states.get(member_id)
            if current is None or current.last_position < seq:
                self.states[member_id] = state
        return _fields(self.app, progress(self.app.program, state, now))


def _fields(
    app: LedgerApplication, shown: Progress | None
) -> tuple[datetime | None, TierProgressOut | None]:
    if shown is None:
        return None, None
    return shown.held_until, TierProgressOut(
        basis=app.program.tier_qualification.basis,
        qualifying_value=shown.qualifying_value,
        next_tier=shown.next_tier,
        next_threshold=shown.next_threshold,
        period_end=shown.period_end,
    )
