"""The durable sent-log: an outbox of notices, one delivery row per (notice key, channel).

A notice is recorded (key = primary key, so a repeat changes nothing) in the same
transaction as the cause's consumer position; a sender then delivers due rows:

    pending/failed --begin--> sending --> sent | failed (retry later) | dead | suppressed

`sending` is written and committed before the channel is called, and `sent` right after it
accepted. A crash between the channel accepting and `sent` being committed leaves the row
`sending`: on restart it is retried and marked `in_doubt` (the one case where a member could
get a notice twice; webhooks carry the key as Idempotency-Key and emails a Message-ID made
from it, so receivers can drop the repeat).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from services.ledger.domain.program import NoticeKind, Program
from services.notifier import metrics
from services.notifier.database import Database, Run
from services.notifier.notices import CORRECTION, Notice, Reminded, send_after

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS notices (
        key TEXT PRIMARY KEY, member_id TEXT NOT NULL, kind TEXT NOT NULL,
        subject TEXT NOT NULL, win TEXT NOT NULL, at TEXT NOT NULL, cause TEXT NOT NULL,
        data TEXT NOT NULL, recorded_at TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS notices_member ON notices (member_id)",
    """CREATE TABLE IF NOT EXISTS deliveries (
        key TEXT NOT NULL, channel TEXT NOT NULL, state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at TEXT NOT NULL,
        created_at TEXT NOT NULL, updated_at TEXT NOT NULL, sent_at TEXT,
        last_error TEXT, in_doubt INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (key, channel))""",
    "CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (state, next_attempt_at)",
)

PENDING, SENDING, SENT, FAILED, DEAD, SUPPRESSED = (
    "pending",
    "sending",
    "sent",
    "failed",
    "dead",
    "suppressed",
)


def ts(at: datetime) -> str:
    """Timestamps as text that sorts in time order in both databases."""
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_ts(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Delivery:
    notice: Notice
    channel: str
    state: str
    attempts: int
    next_attempt_at: datetime
    created_at: datetime
    sent_at: datetime | None
    last_error: str | None
    in_doubt: bool


_COLUMNS = (
    "n.member_id, n.kind, n.subject, n.win, n.at, n.cause, n.data, d.channel, d.state, "
    "d.attempts, d.next_attempt_at, d.created_at, d.sent_at, d.last_error, d.in_doubt"
)
_FROM = "FROM deliveries d JOIN notices n ON n.key = d.key"


def _delivery(row: tuple[object, ...]) -> Delivery:
    (member, kind, subject, win, at, cause, data, channel, state, attempts, next_at,
     created, sent, error, doubt) = row  # fmt: skip
    notice = Notice(
        str(member),
        NoticeKind(str(kind)),
        str(subject),
        str(win),
        parse_ts(str(at)),
        str(cause),
        json.loads(str(data)),
    )
    return Delivery(
        notice,
        str(channel),
        str(state),
        int(str(attempts)),
        parse_ts(str(next_at)),
        parse_ts(str(created)),
        parse_ts(str(sent)) if sent else None,
        str(error) if error else None,
        bool(doubt),
    )


class SentLog:
    def __init__(self, db: Database) -> None:
        self.db = db
        with db.transaction() as run:
            for statement in SCHEMA:
                run(statement)

    # ------------------------------------------------------------------ record

    @staticmethod
    def record(
        run: Run,
        notices: Iterable[Notice],
        channels: Iterable[str],
        now: datetime,
        program: Program,
    ) -> int:
        """Record notices and their deliveries in the caller's transaction; returns how many
        notices were new (a key seen before is left as it is)."""
        channels = tuple(channels)
        new = 0
        for notice in notices:
            run(
                "INSERT INTO notices (key, member_id, kind, subject, win, at, cause, data,"
                " recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (key) DO NOTHING",
                (
                    notice.key,
                    notice.member_id,
                    str(notice.kind),
                    notice.subject,
                    notice.window,
                    ts(notice.at),
                    notice.cause,
                    json.dumps(notice.data, sort_keys=True),
                    ts(now),
                ),
            )
            if run.rowcount != 1:
                continue
            new += 1
            metrics.NOTICES_RECORDED.labels(str(notice.kind)).inc()
            first = ts(send_after(now, program))
            for channel in channels:
                run(
                    "INSERT INTO deliveries (key, channel, state, next_attempt_at, created_at,"
                    " updated_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                    (notice.key, channel, PENDING, first, ts(now), ts(now)),
                )
        return new

    def record_now(
        self, notices: Iterable[Notice], channels: Iterable[str], now: datetime, program: Program
    ) -> int:
        with self.db.transaction() as run:
            return self.record(run, notices, channels, now, program)

    # ------------------------------------------------------------------- sender

    def recover(self, now: datetime) -> int:
        """Rows left `sending` by a crash: retried now, and marked in doubt."""
        with self.db.transaction() as run:
            run(
                "UPDATE deliveries SET state = ?, in_doubt = 1, next_attempt_at = ?,"
                " updated_at = ? WHERE state = ?",
                (FAILED, ts(now), ts(now), SENDING),
            )
            return run.rowcount

    def due(self, now: datetime, limit: int = 100) -> list[Delivery]:
        with self.db.transaction() as run:
            rows = run(
                f"SELECT {_COLUMNS} {_FROM} WHERE d.state IN (?, ?) AND d.next_attempt_at <= ?"
                " ORDER BY d.next_attempt_at, d.key, d.channel LIMIT ?",
                (PENDING, FAILED, ts(now), limit),
            )
        return [_delivery(row) for row in rows]

    def _set(self, key: str, channel: str, sql: str, params: tuple[object, ...]) -> None:
        with self.db.transaction() as run:
            run(
                f"UPDATE deliveries SET {sql} WHERE key = ? AND channel = ?",
                (*params, key, channel),
            )

    def begin(self, d: Delivery, now: datetime) -> None:
        self._set(
            d.notice.key,
            d.channel,
            "state = ?, attempts = attempts + 1, updated_at = ?",
            (SENDING, ts(now)),
        )

    def sent(self, d: Delivery, now: datetime, stated: Notice | None = None) -> None:
        """Delivered; `stated` is the notice as sent when it differs from the one recorded
        (an expiry amount rechecked at send time): kept, so a later scan knows what the
        member was told."""
        with self.db.transaction() as run:
            run(
                "UPDATE deliveries SET state = ?, sent_at = ?, updated_at = ?, last_error = NULL"
                " WHERE key = ? AND channel = ?",
                (SENT, ts(now), ts(now), d.notice.key, d.channel),
            )
            if stated is not None and stated.data != d.notice.data:
                run(
                    "UPDATE notices SET data = ? WHERE key = ?",
                    (json.dumps(stated.data, sort_keys=True), d.notice.key),
                )

    def failed(
        self, d: Delivery, error: str, now: datetime, retry_at: datetime | None, attempts: int
    ) -> None:
        """A failed try (`attempts` so far): retried at `retry_at`, or dead (the
        dead-letter) when None."""
        state = FAILED if retry_at is not None else DEAD
        self._set(
            d.notice.key,
            d.channel,
            "state = ?, attempts = ?, last_error = ?, next_attempt_at = ?, updated_at = ?",
            (state, attempts, error[:1000], ts(retry_at or now), ts(now)),
        )

    def suppress(self, d: Delivery, reason: str, now: datetime) -> None:
        self._set(
            d.notice.key,
            d.channel,
            "state = ?, last_error = ?, updated_at = ?",
            (SUPPRESSED, reason, ts(now)),
        )

    def defer(self, d: Delivery, until: datetime, now: datetime) -> None:
        self._set(
            d.notice.key,
            d.channel,
            "next_attempt_at = ?, updated_at = ?",
            (ts(until), ts(now)),
        )

    def redrive(self, now: datetime) -> int:
        """Dead deliveries go again (attempts start over), e.g. after the receiver is fixed."""
        with self.db.transaction() as run:
            run(
                "UPDATE deliveries SET state = ?, attempts = 0, next_attempt_at = ?,"
                " updated_at = ? WHERE state = ?",
                (PENDING, ts(now), ts(now), DEAD),
            )
            return run.rowcount

    # -------------------------------------------------------------------- reads

    def oldest_due_age(self, now: datetime) -> float:
        """Seconds the oldest due, undelivered row has been waiting (0 when none)."""
        with self.db.transaction() as run:
            rows = run(
                "SELECT MIN(next_attempt_at) FROM deliveries WHERE state IN (?, ?, ?)"
                " AND next_attempt_at <= ?",
                (PENDING, FAILED, SENDING, ts(now)),
            )
        if not rows or rows[0][0] is None:
            return 0.0
        return max(0.0, (now - parse_ts(str(rows[0][0]))).total_seconds())

    def deliveries(self, member_id: str | None = None, state: str | None = None) -> list[Delivery]:
        where, params = [], []
        if member_id is not None:
            where.append("n.member_id = ?")
            params.append(member_id)
        if state is not None:
            where.append("d.state = ?")
            params.append(state)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        with self.db.transaction() as run:
            rows = run(
                f"SELECT {_COLUMNS} {_FROM} {clause} ORDER BY n.at, n.key, d.channel",
                params,
            )
        return [_delivery(row) for row in rows]

    def reminded(self, member_id: str) -> dict[str, Reminded]:
        """Per last day: the member's expiry reminders, what the last delivered one stated,
        and whether one is still to go out."""
        with self.db.transaction() as run:
            rows = run(
                "SELECT n.subject, n.win, n.data, d.state, d.sent_at FROM notices n"
                " JOIN deliveries d ON n.key = d.key WHERE n.member_id = ? AND n.kind = ?"
                " ORDER BY d.sent_at",
                (member_id, str(NoticeKind.POINTS_EXPIRING)),
            )
        windows: dict[str, set[str]] = {}
        stated: dict[str, tuple[str, int]] = {}
        undelivered: set[str] = set()
        for subject, win, data, state, sent_at in rows:
            day = str(subject)
            if CORRECTION not in str(win):
                windows.setdefault(day, set()).add(str(win))
            if state == SENT and sent_at is not None:
                said = (str(sent_at), int(json.loads(str(data)).get("points", 0)))
                stated[day] = max(stated.get(day, said), said)  # the last delivered
            elif state in (PENDING, FAILED, SENDING):
                undelivered.add(day)
        return {
            day: Reminded(frozenset(wins), stated.get(day, ("", 0))[1], day in undelivered)
            for day, wins in windows.items()
        }

    def counts(self) -> dict[str, int]:
        with self.db.transaction() as run:
            rows = run("SELECT state, COUNT(*) FROM deliveries GROUP BY state")
        return {str(state): int(count) for state, count in rows}


def backoff(attempts: int, program: Program) -> timedelta:
    """Exponential: base, 2x base, 4x base, ... after the 1st, 2nd, 3rd failed try."""
    return timedelta(seconds=program.notifications.retry_base_seconds * 2 ** (attempts - 1))
