"""The ledger's read models in SQL, on SQLite or PostgreSQL, tracked in the same transaction."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import orjson
from eventsourcing.persistence import InfrastructureFactory, Tracking
from eventsourcing.postgres import PostgresFactory, PostgresTrackingRecorder
from eventsourcing.sqlite import SQLiteFactory, SQLiteTrackingRecorder
from psycopg.sql import SQL, Identifier

from services.ledger.adapters import entry_body
from services.ledger.application.program_metrics import Summary, SummaryChanges, day_of
from services.ledger.application.tables import created_concurrently
from services.ledger.application.views import (
    BalanceRow,
    BalanceSources,
    EntryRow,
    HoldRow,
    LedgerView,
    ViewChanges,
)
from services.ledger.domain.lots import Lot


def _ts(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat(timespec="microseconds")


def _dt(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def _table_statements(p: str) -> list[str]:
    return [
        f"CREATE TABLE IF NOT EXISTS {p}balances ("
        "member_id TEXT PRIMARY KEY, available BIGINT NOT NULL, pending BIGINT NOT NULL, "
        "held BIGINT NOT NULL, lifetime_earned BIGINT NOT NULL, tier TEXT, "
        "entries BIGINT NOT NULL, position BIGINT NOT NULL, updated_at TEXT NOT NULL)",
        f"CREATE TABLE IF NOT EXISTS {p}lots ("
        "member_id TEXT NOT NULL, lot_id TEXT NOT NULL, amount BIGINT NOT NULL, "
        "remaining BIGINT NOT NULL, status TEXT NOT NULL, earned_at TEXT NOT NULL, "
        "release_at TEXT, expires_at TEXT, source TEXT NOT NULL, program_version TEXT, "
        "PRIMARY KEY (member_id, lot_id))",
        f"CREATE INDEX IF NOT EXISTS {p}lots_due_release ON {p}lots (release_at) "
        "WHERE status = 'pending'",
        f"CREATE INDEX IF NOT EXISTS {p}lots_due_expiry ON {p}lots (expires_at) "
        "WHERE remaining > 0",
        # A member's open lots (open_lots): what a balance and GET lots read, however many
        # lots the member's history spent or expired.
        f"CREATE INDEX IF NOT EXISTS {p}lots_open ON {p}lots (member_id, lot_id) "
        "WHERE remaining > 0 OR status = 'pending'",
        f"CREATE TABLE IF NOT EXISTS {p}entries ("
        "position BIGINT PRIMARY KEY, member_id TEXT NOT NULL, seq BIGINT NOT NULL, "
        "entry_type TEXT NOT NULL, effective_at TEXT NOT NULL, body TEXT NOT NULL)",
        f"CREATE UNIQUE INDEX IF NOT EXISTS {p}entries_member ON {p}entries (member_id, seq)",
        # Balances as of an instant: a member's entries by effective time, and tier changes.
        f"CREATE INDEX IF NOT EXISTS {p}entries_effective "
        f"ON {p}entries (member_id, effective_at, seq)",
        f"CREATE INDEX IF NOT EXISTS {p}entries_tier_set ON {p}entries (member_id, seq) "
        "WHERE entry_type = 'tier_assigned'",
        f"CREATE TABLE IF NOT EXISTS {p}holds ("
        "hold_id TEXT PRIMARY KEY, member_id TEXT NOT NULL, reference TEXT NOT NULL, "
        "points BIGINT NOT NULL, status TEXT NOT NULL, captured BIGINT NOT NULL, "
        "placed_at TEXT NOT NULL, expires_at TEXT NOT NULL, resolved_at TEXT)",
        f"CREATE INDEX IF NOT EXISTS {p}holds_member ON {p}holds (member_id)",
        f"CREATE INDEX IF NOT EXISTS {p}holds_due ON {p}holds (expires_at) WHERE status = 'held'",
        # When each member's tier is next reviewed (period end + grace, or an override's end),
        # so the scheduler finds the downgrades due without reading every account.
        f"CREATE TABLE IF NOT EXISTS {p}tier_reviews ("
        "member_id TEXT PRIMARY KEY, due_at TEXT NOT NULL)",
        f"CREATE INDEX IF NOT EXISTS {p}tier_reviews_due ON {p}tier_reviews (due_at)",
        # The program summary GET /v1/program/metrics reads (program_metrics.Summary), kept
        # up to date with each batch: figures per day, members and outstanding per tier, and
        # each member's first and last activity per day. `summary_state` says it is filled
        # (a store of an earlier release is backfilled once from its entries).
        f"CREATE TABLE IF NOT EXISTS {p}summary_days (day TEXT PRIMARY KEY, "
        "issued BIGINT NOT NULL, redeemed BIGINT NOT NULL, expired BIGINT NOT NULL)",
        f"CREATE TABLE IF NOT EXISTS {p}summary_tiers (tier TEXT PRIMARY KEY, "
        "members BIGINT NOT NULL, outstanding BIGINT NOT NULL)",
        f"CREATE TABLE IF NOT EXISTS {p}summary_activity (member_id TEXT NOT NULL, "
        "day TEXT NOT NULL, first_at TEXT NOT NULL, last_at TEXT NOT NULL, "
        "PRIMARY KEY (member_id, day))",
        f"CREATE INDEX IF NOT EXISTS {p}summary_activity_day "
        f"ON {p}summary_activity (day, member_id, first_at, last_at)",
        f"CREATE TABLE IF NOT EXISTS {p}summary_state (name TEXT PRIMARY KEY)",
    ]


def _table_columns() -> dict[str, list[str]]:
    """Each view table's column names in order (from its CREATE TABLE)."""
    found: dict[str, list[str]] = {}
    for statement in _table_statements(""):
        if not statement.startswith("CREATE TABLE"):
            continue
        name, _, columns = statement.removeprefix("CREATE TABLE IF NOT EXISTS ").partition(" (")
        columns = columns.partition(", PRIMARY KEY")[0].removesuffix(")")
        found[name] = [column.split()[0] for column in columns.split(", ")]
    return found


_COLUMNS = _table_columns()


class SqlLedgerView:
    """SQL shared by both databases; subclasses give the transaction and placeholder style."""

    prefix: ClassVar[str] = "view_"

    @property
    def tracking_key(self) -> str:
        return f"{self.prefix}ledger"

    def _tx(self, *, commit: bool) -> AbstractContextManager[Any]:
        raise NotImplementedError

    def _q(self, sql: str) -> Any:
        return sql

    def _track(self, cursor: Any, tracking: Tracking) -> None:
        raise NotImplementedError

    def _run(self, cursor: Any, sql: str, params: Sequence[Any] = ()) -> Any:
        return cursor.execute(self._q(sql), tuple(params))

    def _run_many(self, cursor: Any, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            cursor.executemany(self._q(sql), [tuple(row) for row in rows])

    def _insert_many(self, cursor: Any, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """`sql` an `INSERT INTO <table> VALUES (?, ...) ...` of one row: every row written,
        in order (the order rows are written and locked in). SQLite: the statement once a
        row (executemany: one prepared statement)."""
        self._run_many(cursor, sql, rows)

    def apply_changes(self, changes: ViewChanges, tracking: Tracking) -> None:
        """Write the rows and the position in one transaction.

        Two projectors of the same store (two `serve` processes, or `loyalty verify` while
        one serves) may apply the same notifications at once. The position is written first,
        so the second waits there and then fails with IntegrityError without touching a row;
        rows are written in key order, so overlapping batches never deadlock either."""
        p = self.prefix
        with self._tx(commit=True) as c:
            self._track(c, tracking)
            self._insert_many(
                c,
                f"INSERT INTO {p}balances VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (member_id) DO UPDATE SET available = excluded.available, "
                "pending = excluded.pending, held = excluded.held, "
                "lifetime_earned = excluded.lifetime_earned, tier = excluded.tier, "
                "entries = excluded.entries, position = excluded.position, "
                "updated_at = excluded.updated_at",
                [
                    (
                        row.member_id,
                        row.available,
                        row.pending,
                        row.held,
                        row.lifetime_earned,
                        row.tier,
                        row.entries,
                        row.position,
                        _ts(row.updated_at),
                    )
                    for _, row in sorted(changes.balances.items())
                ],
            )
            self._insert_many(
                c,
                f"INSERT INTO {p}lots VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (member_id, lot_id) DO UPDATE SET amount = excluded.amount, "
                "remaining = excluded.remaining, status = excluded.status",
                [
                    (
                        member_id,
                        lot.lot_id,
                        lot.amount,
                        lot.remaining,
                        lot.status,
                        _ts(lot.earned_at),
                        _ts(lot.release_at),
                        _ts(lot.expires_at),
                        lot.source,
                        lot.program_version,
                    )
                    for (member_id, _), lot in sorted(changes.lots.items())
                ],
            )
            self._insert_many(
                c,
                f"INSERT INTO {p}entries VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (
                        entry.position,
                        entry.member_id,
                        entry.seq,
                        entry.entry_type,
                        effective,
                        entry_body.encode(
                            entry.body,
                            position=entry.position,
                            member_id=entry.member_id,
                            seq=entry.seq,
                            entry_type=entry.entry_type,
                            effective_at=effective,
                        ),
                    )
                    for entry in sorted(changes.entries, key=lambda e: e.position)
                    for effective in (_ts(entry.effective_at) or "",)
                ],
            )
            self._insert_many(
                c,
                f"INSERT INTO {p}holds VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (hold_id) DO UPDATE SET status = excluded.status, "
                "captured = excluded.captured, resolved_at = excluded.resolved_at",
                [
                    (
                        hold.hold_id,
                        hold.member_id,
                        hold.reference,
                        hold.points,
                        hold.status,
                        hold.captured,
                        _ts(hold.placed_at),
                        _ts(hold.expires_at),
                        _ts(hold.resolved_at),
                    )
                    for _, hold in sorted(changes.holds.items())
                ],
            )
            # A member whose enrolment was undone (and not entered again since): no rows.
            for table in ("balances", "tier_reviews"):
                self._run_many(
                    c,
                    f"DELETE FROM {p}{table} WHERE member_id = ?",
                    [(member,) for member in sorted(changes.removed)],
                )
            reviews = sorted(changes.tier_reviews.items())
            self._insert_many(
                c,
                f"INSERT INTO {p}tier_reviews VALUES (?, ?) "
                "ON CONFLICT (member_id) DO UPDATE SET due_at = excluded.due_at",
                [(member, _ts(due)) for member, due in reviews if due is not None],
            )
            self._run_many(
                c,
                f"DELETE FROM {p}tier_reviews WHERE member_id = ?",
                [(member,) for member, due in reviews if due is None],
            )
            self._write_summary(c, changes.summary)

    def _write_summary(self, c: Any, summary: SummaryChanges) -> None:
        """Add one batch's changes to the program summary (in the batch's transaction)."""
        p = self.prefix
        self._insert_many(
            c,
            f"INSERT INTO {p}summary_days VALUES (?, ?, ?, ?) ON CONFLICT (day) DO UPDATE SET "
            f"issued = {p}summary_days.issued + excluded.issued, "
            f"redeemed = {p}summary_days.redeemed + excluded.redeemed, "
            f"expired = {p}summary_days.expired + excluded.expired",
            [(day, *figures) for day, figures in sorted(summary.days.items())],
        )
        self._insert_many(
            c,
            f"INSERT INTO {p}summary_tiers VALUES (?, ?, ?) ON CONFLICT (tier) DO UPDATE SET "
            f"members = {p}summary_tiers.members + excluded.members, "
            f"outstanding = {p}summary_tiers.outstanding + excluded.outstanding",
            [(tier, *figures) for tier, figures in sorted(summary.tiers.items())],
        )
        t = f"{p}summary_activity"
        self._insert_many(
            c,
            f"INSERT INTO {t} VALUES (?, ?, ?, ?) ON CONFLICT (member_id, day) DO UPDATE SET "
            f"first_at = CASE WHEN excluded.first_at < {t}.first_at "
            f"THEN excluded.first_at ELSE {t}.first_at END, "
            f"last_at = CASE WHEN excluded.last_at > {t}.last_at "
            f"THEN excluded.last_at ELSE {t}.last_at END",
            [
                (member, day, _ts(first), _ts(last))
                for (member, day), (first, last) in sorted(summary.activity.items())
            ],
        )

    def _lock_summary(self, cursor: Any) -> None:
        """Keep batches from adding to the summary while it is filled (PostgreSQL)."""

    def fill_summary(self) -> bool:
        """Fill the program summary from the balances and entries, once: for a store an
        earlier release wrote (the summary tables are new). True when it filled it."""
        p = self.prefix
        with self._tx(commit=True) as c:
            self._lock_summary(c)
            self._run(c, f"SELECT name FROM {p}summary_state WHERE name = ?", ("filled",))
            if c.fetchall():
                return False
            changes = SummaryChanges()
            self._run(c, f"SELECT * FROM {p}balances")
            for r in c.fetchall():
                changes.balance(None, self._balance(r))
            self._run(c, f"SELECT * FROM {p}entries")
            for entry in self._entry_rows(c.fetchall()):
                changes.entry(entry)
            for table in ("summary_days", "summary_tiers", "summary_activity"):
                self._run(c, f"DELETE FROM {p}{table}")
            self._write_summary(c, changes)
            self._run(c, f"INSERT INTO {p}summary_state VALUES (?)", ("filled",))
            return True

    def outstanding(self) -> int:
        """Points members hold (available + pending + held), from the program summary."""
        with self._tx(commit=False) as c:
            self._run(
                c, f"SELECT COALESCE(SUM(outstanding), 0) AS n FROM {self.prefix}summary_tiers"
            )
            return int(c.fetchall()[0]["n"])

    def summary(self, now: datetime, period_days: int) -> Summary:
        """The program summary as of `now`: active members in the period ending then and
        in the one before, read from the days those periods span (an index range)."""
        p = self.prefix
        period = timedelta(days=period_days)
        start, middle = now - period, now - 2 * period
        with self._tx(commit=False) as c:
            self._snapshot(c)
            self._run(c, f"SELECT * FROM {p}summary_days")
            days = {r["day"]: (r["issued"], r["redeemed"], r["expired"]) for r in c.fetchall()}
            self._run(c, f"SELECT * FROM {p}summary_tiers")
            tiers = {r["tier"]: (r["members"], r["outstanding"]) for r in c.fetchall()}
            # One pass over the member-days the two periods span (a range of the covering
            # index on day): per member, active in this period (t) and in the one before (l).
            # A day is shorter than a period, so a member-day with its first activity by a
            # period's end and its last after its start has an activity inside it.
            self._run(
                c,
                "SELECT COUNT(*) AS members, COALESCE(SUM(t), 0) AS active, "
                "COALESCE(SUM(l), 0) AS earlier, COALESCE(SUM(t * l), 0) AS retained FROM ("
                "SELECT member_id, "
                "MAX(CASE WHEN last_at > ? AND first_at <= ? THEN 1 ELSE 0 END) AS t, "
                "MAX(CASE WHEN last_at > ? AND first_at <= ? THEN 1 ELSE 0 END) AS l "
                f"FROM {p}summary_activity WHERE day >= ? AND day <= ? "
                # Members only (an undone enrolment's member has no balance row).
                f"AND member_id IN (SELECT member_id FROM {p}balances) GROUP BY member_id) x",
                (
                    _ts(start),
                    _ts(now),
                    _ts(middle),
                    _ts(start),
                    day_of(middle),
                    day_of(now),
                ),
            )
            counts = c.fetchall()[0]
        return Summary(
            days=days,
            tiers=tiers,
            active=int(counts["active"]),
            active_before=int(counts["earlier"]),
            retained=int(counts["retained"]),
        )

    @staticmethod
    def _balance(row: Any) -> BalanceRow:
        updated = _dt(row["updated_at"])
        assert updated is not None
        return BalanceRow(
            member_id=row["member_id"],
            available=row["available"],
            pending=row["pending"],
            held=row["held"],
            lifetime_earned=row["lifetime_earned"],
            tier=row["tier"],
            entries=row["entries"],
            position=row["position"],
            updated_at=updated,
        )

    @staticmethod
    def _lot(row: Any) -> Lot:
        earned = _dt(row["earned_at"])
        assert earned is not None
        return Lot(
            lot_id=row["lot_id"],
            amount=row["amount"],
            remaining=row["remaining"],
            status=row["status"],
            earned_at=earned,
            release_at=_dt(row["release_at"]),
            expires_at=_dt(row["expires_at"]),
            source=row["source"],
            program_version=row["program_version"],
        )

    def balance(self, member_id: str) -> BalanceRow | None:
        found = self.balances([member_id])
        return found.get(member_id)

    def balances(self, member_ids: list[str]) -> dict[str, BalanceRow]:
        if not member_ids:
            return {}
        marks = ", ".join("?" for _ in member_ids)
        with self._tx(commit=False) as c:
            self._run(
                c, f"SELECT * FROM {self.prefix}balances WHERE member_id IN ({marks})", member_ids
            )
            return {r["member_id"]: self._balance(r) for r in c.fetchall()}

    _binary: ClassVar[str] = ""  # how to compare ids by code point (PostgreSQL: COLLATE "C")

    def find_members(self, prefix: str, limit: int) -> list[BalanceRow]:
        """The first `limit` members whose id starts with `prefix`, by id (code point
        order): a range read of the primary key, not every row. Ids with the prefix are
        the first ones at or after it in that order, so the rows read past the last match
        are at most `limit`."""
        b = self._binary
        with self._tx(commit=False) as c:
            self._run(
                c,
                f"SELECT * FROM {self.prefix}balances WHERE member_id{b} >= ? "
                f"ORDER BY member_id{b} LIMIT ?",
                (prefix, limit),
            )
            rows = [self._balance(r) for r in c.fetchall()]
        return [r for r in rows if r.member_id.startswith(prefix)]

    def all_balances(self) -> list[BalanceRow]:
        with self._tx(commit=False) as c:
            self._run(c, f"SELECT * FROM {self.prefix}balances ORDER BY member_id")
            return [self._balance(r) for r in c.fetchall()]

    def lots(self, member_id: str) -> list[Lot]:
        with self._tx(commit=False) as c:
            self._run(
                c,
                f"SELECT * FROM {self.prefix}lots WHERE member_id = ? ORDER BY lot_id",
                (member_id,),
            )
            return [self._lot(r) for r in c.fetchall()]

    def open_lots(self, member_id: str) -> list[Lot]:
        """The member's lots with points left or still pending (an index range)."""
        with self._tx(commit=False) as c:
            self._run(
                c,
                f"SELECT * FROM {self.prefix}lots WHERE member_id = ? "
                "AND (remaining > 0 OR status = 'pending') ORDER BY lot_id",
                (member_id,),
            )
            return [self._lot(r) for r in c.fetchall()]

    def lots_of(self, member_ids: list[str], *, open_only: bool = False) -> dict[str, list[Lot]]:
        """The members' lots; `open_only`: only those with points left or still pending
        (`open_lots`, an index range: not every lot the members' histories spent)."""
        found: dict[str, list[Lot]] = {m: [] for m in member_ids}
        if not member_ids:
            return found
        marks = ", ".join("?" for _ in member_ids)
        only = " AND (remaining > 0 OR status = 'pending')" if open_only else ""
        with self._tx(commit=False) as c:
            self._run(
                c,
                f"SELECT * FROM {self.prefix}lots WHERE member_id IN ({marks}){only} "
                "ORDER BY member_id, lot_id",
                member_ids,
            )
            for r in c.fetchall():
                found[r["member_id"]].append(self._lot(r))
        return found

    def balance_sources(self, member_id: str, at: datetime) -> BalanceSources | None:
        """The member's balance and lots now, the entries from the last one counted as of
        `at` onward and the tier change in force then, in one snapshot (BalanceSources).

        Indexed reads: the index entries of the entries effective after `at`, and the rows
        recorded from the last one counted on; what was recorded since `at`, not the
        member's whole history."""
        p = self.prefix
        when = _ts(at)
        with self._tx(commit=False) as c:
            self._snapshot(c)
            self._run(c, f"SELECT * FROM {p}balances WHERE member_id = ?", (member_id,))
            found = c.fetchall()
            if not found:
                return None
            self._run(
                c,
                f"SELECT * FROM {p}entries WHERE member_id = ? AND seq >= ("
                f"SELECT MIN(seq) FROM {p}entries WHERE member_id = ? AND effective_at > ?"
                ") - 1 ORDER BY seq",
                (member_id, member_id, when),
            )
            since = self._entry_rows(c.fetchall())
            tier_set: list[EntryRow] = []
            if since:
                self._run(
                    c,
                    f"SELECT * FROM {p}entries WHERE member_id = ? "
                    "AND entry_type = 'tier_assigned' AND effective_at <= ? "
                    "ORDER BY seq DESC LIMIT 1",
                    (member_id, when),
                )
                tier_set = self._entry_rows(c.fetchall())
            self._run(
                c,
                f"SELECT * FROM {p}lots WHERE member_id = ? ORDER BY lot_id",
                (member_id,),
            )
            lots = [self._lot(r) for r in c.fetchall()]
        return BalanceSources(
            balance=self._balance(found[0]),
            lots=lots,
            since=since,
            tier_set=tier_set[0] if tier_set else None,
        )

    def _snapshot(self, cursor: Any) -> None:
        """Make the reads of this transaction see one snapshot of the database."""

    def published_entries(self, first: int, last: int) -> list[tuple[int, str, str, str]]:
        """(position, member_id, entry_type, body as JSON text) for positions first..last."""
        with self._tx(commit=False) as c:
            self._run(
                c,
                f"SELECT * FROM {self.prefix}entries "
                "WHERE position >= ? AND position <= ? ORDER BY position",
                (first, last),
            )
            return [
                (
                    r["position"],
                    r["member_id"],
                    r["entry_type"],
                    entry_body.published(
                        r["body"],
                        position=r["position"],
                        member_id=r["member_id"],
                        seq=r["seq"],
                        entry_type=r["entry_type"],
                        effective_at=r["effective_at"],
                    ),
                )
                for r in c.fetchall()
            ]

    def all_lots(self) -> list[tuple[str, Lot]]:
        with self._tx(commit=False) as c:
            self._run(c, f"SELECT * FROM {self.prefix}lots ORDER BY member_id, lot_id")
            return [(r["member_id"], self._lot(r)) for r in c.fetchall()]

    def all_entries(self) -> list[EntryRow]:
        with self._tx(commit=False) as c:
            self._run(c, f"SELECT * FROM {self.prefix}entries ORDER BY position")
            return self._entry_rows(c.fetchall())

    def entries(
        self, member_id: str, *, before_seq: int | None = None, limit: int = 50
    ) -> list[EntryRow]:
        sql = f"SELECT * FROM {self.prefix}entries WHERE member_id = ?"
        params: list[Any] = [member_id]
        if before_seq is not None:
            sql += " AND seq < ?"
            params.append(before_seq)
        sql += " ORDER BY seq DESC LIMIT ?"
        params.append(limit)
        with self._tx(commit=False) as c:
            self._run(c, sql, params)
            rows = c.fetchall()
        return self._entry_rows(rows)

    @staticmethod
    def _entry_rows(rows: Any) -> list[EntryRow]:
        result = []
        for r in rows:
            effective = _dt(r["effective_at"])
            assert effective is not None
            result.append(
                EntryRow(
                    position=r["position"],
                    member_id=r["member_id"],
                    seq=r["seq"],
                    entry_type=r["entry_type"],
                    effective_at=effective,
                    body=entry_body.expand(
                        r["body"],
                        position=r["position"],
                        member_id=r["member_id"],
                        seq=r["seq"],
                        entry_type=r["entry_type"],
                        effective_at=r["effective_at"],
                    ),
                )
            )
        return result

    def holds(self, member_id: str) -> list[HoldRow]:
        with self._tx(commit=False) as c:
            self._run(
                c,
                f"SELECT * FROM {self.prefix}holds WHERE member_id = ? ORDER BY placed_at DESC",
                (member_id,),
            )
            rows = c.fetchall()
        result = []
        for r in rows:
            placed, expires = _dt(r["placed_at"]), _dt(r["expires_at"])
            assert placed is not None
            assert expires is not None
            result.append(
                HoldRow(
                    hold_id=r["hold_id"],
                    member_id=r["member_id"],
                    reference=r["reference"],
                    points=r["points"],
                    status=r["status"],
                    captured=r["captured"],
                    placed_at=placed,
                    expires_at=expires,
                    resolved_at=_dt(r["resolved_at"]),
                )
            )
        return result

    def members_due(self, now: datetime, limit: int = 10_000) -> list[str]:
        p = self.prefix
        at = _ts(now)
        with self._tx(commit=False) as c:
            self._run(
                c,
                f"SELECT member_id FROM {p}lots WHERE "
                "(status = 'pending' AND release_at <= ?) OR "
                "(status = 'available' AND remaining > 0 AND expires_at <= ?) "
                f"UNION SELECT member_id FROM {p}holds WHERE status = 'held' AND expires_at <= ? "
                f"UNION SELECT member_id FROM {p}tier_reviews WHERE due_at <= ? "
                "ORDER BY member_id LIMIT ?",
                (at, at, at, at, limit),
            )
            return [r["member_id"] for r in c.fetchall()]

    def reset(self) -> None:
        p = self.prefix
        with self._tx(commit=True) as c:
            for table in (
                "balances",
                "lots",
                "entries",
                "holds",
                "tier_reviews",
                "summary_days",
                "summary_tiers",
                "summary_activity",
                "summary_state",
            ):
                self._run(c, f"DELETE FROM {p}{table}")
            self._run(c, f"INSERT INTO {p}summary_state VALUES (?)", ("filled",))  # empty
            self._reset_tracking(c)

    def _reset_tracking(self, cursor: Any) -> None:
        raise NotImplementedError


class SQLiteLedgerView(SqlLedgerView, SQLiteTrackingRecorder):
    # A SQLite transaction reads one snapshot already (BEGIN, then the first read).

    def _lock_summary(self, cursor: Any) -> None:
        # A write first takes the database's write lock (waiting for a batch committing in
        # another process), so the reads after it see every batch and none can commit
        # before this transaction does.
        cursor.execute(f"DELETE FROM {self.prefix}summary_state WHERE name = ?", ("-",))

    def construct_create_table_statements(self) -> list[str]:
        return [*super().construct_create_table_statements(), *_table_statements(self.prefix)]

    def _tx(self, *, commit: bool) -> AbstractContextManager[Any]:
        return self.datastore.transaction(commit=commit)

    def _track(self, cursor: Any, tracking: Tracking) -> None:
        self._insert_tracking(cursor, tracking)

    def _reset_tracking(self, cursor: Any) -> None:
        cursor.execute("DELETE FROM tracking WHERE application_name = ?", (self.tracking_key,))


class PostgresLedgerView(SqlLedgerView, PostgresTrackingRecorder):
    _binary = ' COLLATE "C"'
    _multirow = True

    def __init__(self, datastore: Any, **kwargs: Any) -> None:
        super().__init__(datastore, **kwargs)
        p = self.prefix
        for statement in [
            *_table_statements(p),
            # Member search by id prefix (find_members): ids in code point order.
            f'CREATE INDEX IF NOT EXISTS {p}balances_id_c ON {p}balances (member_id COLLATE "C")',
        ]:
            self.sql_create_statements.append(SQL(statement))  # type: ignore[arg-type]

    def _q(self, sql: str) -> Any:
        return SQL(sql.replace("?", "%s"))

    def _insert_many(self, cursor: Any, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """One statement for all the rows, given as one JSON array of objects:
        `INSERT INTO t SELECT * FROM json_populate_recordset(NULL::t, ?) ...`, rows in
        the array's order. A statement a row (executemany, even pipelined) cost psycopg's
        work in Python and the server's statement handling for each row; many rows in one
        VALUES list, psycopg's parsing of a query text that changes with their count; an
        array a column, psycopg's text array quoting in Python. This text is the same for
        every batch (psycopg caches it, the server prepares it), the JSON is orjson's.

        The rows must have distinct keys (an upsert cannot change a row twice in one
        statement): a batch's changes are keyed by them."""
        if not rows:
            return
        table = sql.split()[2]
        names = _COLUMNS[table.removeprefix(self.prefix)]
        assert len(rows[0]) == len(names), sql
        start = sql.index("VALUES (")
        end = sql.index(")", start) + 1
        select = f"SELECT * FROM json_populate_recordset(NULL::{table}, ?::json)"
        data = orjson.dumps([dict(zip(names, row, strict=True)) for row in rows]).decode()
        self._run(cursor, sql[:start] + select + sql[end:], [data])

    def _lock_summary(self, cursor: Any) -> None:
        # A batch committing meanwhile waits here, then adds its changes to the filled summary.
        tables = ("summary_days", "summary_tiers", "summary_activity")
        cursor.execute(
            SQL("LOCK TABLE {0} IN EXCLUSIVE MODE").format(
                SQL(", ").join(Identifier(f"{self.prefix}{t}") for t in tables)
            )
        )

    def _snapshot(self, cursor: Any) -> None:
        # READ COMMITTED (the default) would let each statement see a later commit.
        cursor.execute(SQL("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"))

    def _tx(self, *, commit: bool) -> AbstractContextManager[Any]:
        return self.datastore.transaction(commit=commit)

    def _track(self, cursor: Any, tracking: Tracking) -> None:
        self._insert_tracking(cursor, tracking)

    def _reset_tracking(self, cursor: Any) -> None:
        cursor.execute(
            SQL("DELETE FROM {0}.{1} WHERE application_name = %s").format(
                Identifier(self.datastore.schema), Identifier(self.tracking_table_name)
            ),
            (self.tracking_key,),
        )


def construct_view(factory: InfrastructureFactory[Any], prefix: str = "view_") -> LedgerView:
    """The view class for the factory's database, sharing the application's datastore."""
    base: type[Any]
    if isinstance(factory, SQLiteFactory):
        base = SQLiteLedgerView
    elif isinstance(factory, PostgresFactory):
        base = PostgresLedgerView
    else:
        msg = f"no ledger view for {type(factory).__name__}: use SQLite or PostgreSQL"
        raise TypeError(msg)
    cls = (
        base
        if prefix == base.prefix
        else type(f"{base.__name__}_{prefix}", (base,), {"prefix": prefix})
    )
    view = created_concurrently(lambda: factory.tracking_recorder(cls))
    assert isinstance(view, SqlLedgerView)
    view.fill_summary()  # a store an earlier release wrote: once
    return view  # type: ignore[return-value]
