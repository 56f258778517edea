"""What the notifier keeps of the ledger: each member's lots, entry summaries, tier, and
how far it has read each topic partition (all in the sent-log's database)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from schemas.outbound import LedgerEntry, LotOut
from schemas.tiers import TierChanged
from services.notifier.database import Database, Run
from services.notifier.notices import EntrySummary, summary
from services.notifier.sent_log import parse_ts, ts

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS member_lots (
        member_id TEXT NOT NULL, lot_id TEXT NOT NULL, seq INTEGER NOT NULL,
        lot TEXT NOT NULL, PRIMARY KEY (member_id, lot_id))""",
    """CREATE TABLE IF NOT EXISTS member_entries (
        member_id TEXT NOT NULL, seq INTEGER NOT NULL, entry_type TEXT NOT NULL,
        effective_at TEXT NOT NULL, points INTEGER NOT NULL, available_after INTEGER NOT NULL,
        PRIMARY KEY (member_id, seq))""",
    """CREATE TABLE IF NOT EXISTS member_tiers (
        member_id TEXT PRIMARY KEY, tier TEXT NOT NULL, valid_until TEXT,
        effective_from TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS positions (
        topic TEXT NOT NULL, part INTEGER NOT NULL, next_offset INTEGER NOT NULL,
        PRIMARY KEY (topic, part))""",
)


@dataclass(frozen=True, slots=True)
class TierState:
    tier: str
    valid_until: datetime | None


class Snapshots:
    def __init__(self, db: Database) -> None:
        self.db = db
        with db.transaction() as run:
            for statement in SCHEMA:
                run(statement)

    # ------------------------------------------------------------------ writes

    @staticmethod
    def apply_entry(run: Run, entry: LedgerEntry) -> bool:
        """Keep the entry's summary and the lots it touched (an entry carries only those;
        each lot keeps the state of the newest entry that touched it); False for an entry
        seen before (the relay publishes at least once)."""
        s = summary(entry)
        run(
            "INSERT INTO member_entries (member_id, seq, entry_type, effective_at, points,"
            " available_after) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (s.member_id, s.seq, s.entry_type, ts(s.effective_at), s.points, s.available_after),
        )
        if run.rowcount != 1:
            return False
        for lot in entry.lots_after:
            run(
                "INSERT INTO member_lots (member_id, lot_id, seq, lot) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (member_id, lot_id) DO UPDATE SET seq = excluded.seq,"
                " lot = excluded.lot WHERE member_lots.seq < excluded.seq",
                (entry.member_id, lot.lot_id, entry.seq, lot.model_dump_json()),
            )
        return True

    @staticmethod
    def apply_tier(run: Run, change: TierChanged) -> None:
        data = change.data
        until = ts(data.valid_until) if data.valid_until else None
        run(
            "INSERT INTO member_tiers (member_id, tier, valid_until, effective_from)"
            " VALUES (?, ?, ?, ?) ON CONFLICT (member_id) DO UPDATE SET tier = excluded.tier,"
            " valid_until = excluded.valid_until, effective_from = excluded.effective_from"
            " WHERE member_tiers.effective_from <= excluded.effective_from",
            (change.member_id, data.to_tier, until, ts(data.effective_from)),
        )

    @staticmethod
    def set_position(run: Run, topic: str, partition: int, next_offset: int) -> None:
        run(
            "INSERT INTO positions (topic, part, next_offset) VALUES (?, ?, ?)"
            " ON CONFLICT (topic, part) DO UPDATE SET next_offset = excluded.next_offset",
            (topic, partition, next_offset),
        )

    @staticmethod
    def erase(run: Run, member_id: str) -> None:
        """Nothing here is contact data, but the erased member's history goes too."""
        for table in ("member_lots", "member_entries", "member_tiers"):
            run(f"DELETE FROM {table} WHERE member_id = ?", (member_id,))

    # ------------------------------------------------------------------- reads

    def positions(self) -> dict[tuple[str, int], int]:
        with self.db.transaction() as run:
            rows = run("SELECT topic, part, next_offset FROM positions")
        return {(str(t), int(p)): int(o) for t, p, o in rows}

    def members(self) -> list[str]:
        with self.db.transaction() as run:
            rows = run(
                "SELECT member_id FROM member_entries UNION SELECT member_id FROM member_tiers"
                " ORDER BY 1"
            )
        return [str(r[0]) for r in rows]

    def lots(self, member_id: str) -> tuple[LotOut, ...]:
        with self.db.transaction() as run:
            rows = run(
                "SELECT lot FROM member_lots WHERE member_id = ? ORDER BY lot_id", (member_id,)
            )
        return tuple(LotOut.model_validate_json(str(row[0])) for row in rows)

    def entries(self, member_id: str) -> list[EntrySummary]:
        with self.db.transaction() as run:
            rows = run(
                "SELECT seq, entry_type, effective_at, points, available_after"
                " FROM member_entries WHERE member_id = ? ORDER BY seq",
                (member_id,),
            )
        return [
            EntrySummary(member_id, int(seq), str(t), parse_ts(str(at)), int(p), int(a))
            for seq, t, at, p, a in rows
        ]

    def tier(self, member_id: str) -> TierState | None:
        with self.db.transaction() as run:
            rows = run(
                "SELECT tier, valid_until FROM member_tiers WHERE member_id = ?", (member_id,)
            )
        if not rows:
            return None
        tier, until = rows[0]
        return TierState(str(tier), parse_ts(str(until)) if until else None)
