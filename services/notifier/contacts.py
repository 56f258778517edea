"""Members' contact details and notice preferences, owned by the notifier (never in the
ledger's events). `MemberContacts` is the service the CLI uses and an HTTP API can wire
routes to."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from services.ledger.domain.program import NoticeKind
from services.notifier.database import Database
from services.notifier.sent_log import FAILED, PENDING, SUPPRESSED, ts
from services.notifier.snapshots import Snapshots

CHANNELS = ("email", "webhook")
ANY = "*"

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS contacts (
        member_id TEXT PRIMARY KEY, email TEXT, name TEXT, updated_at TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS opt_outs (
        member_id TEXT NOT NULL, channel TEXT NOT NULL, kind TEXT NOT NULL,
        PRIMARY KEY (member_id, channel, kind))""",
)


class PreferenceError(ValueError):
    """An unknown channel or notice kind."""


@dataclass(frozen=True, slots=True)
class Contact:
    member_id: str
    email: str | None
    name: str | None


def _check(channel: str, kind: str) -> None:
    if channel != ANY and channel not in CHANNELS:
        raise PreferenceError(f"unknown channel {channel!r}; one of {', '.join(CHANNELS)}, *")
    if kind != ANY and kind not in {k.value for k in NoticeKind}:
        known = ", ".join(k.value for k in NoticeKind)
        raise PreferenceError(f"unknown notice kind {kind!r}; one of {known}, *")


class MemberContacts:
    """Contacts, opt-outs (per channel and per kind, `*` for all) and erasure."""

    def __init__(self, db: Database) -> None:
        self.db = db
        with db.transaction() as run:
            for statement in SCHEMA:
                run(statement)

    def set_contact(self, member_id: str, email: str | None, name: str | None = None) -> None:
        if email is not None and ("@" not in email or len(email) > 320):
            raise PreferenceError(f"not an email address: {email!r}")
        with self.db.transaction() as run:
            run(
                "INSERT INTO contacts (member_id, email, name, updated_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (member_id) DO UPDATE SET email = excluded.email,"
                " name = excluded.name, updated_at = excluded.updated_at",
                (member_id, email, name, ts(datetime.now(UTC))),
            )

    def contact(self, member_id: str) -> Contact | None:
        with self.db.transaction() as run:
            rows = run("SELECT email, name FROM contacts WHERE member_id = ?", (member_id,))
        if not rows:
            return None
        email, name = rows[0]
        return Contact(member_id, email, name)

    def opt_out(self, member_id: str, channel: str = ANY, kind: str = ANY) -> None:
        _check(channel, kind)
        with self.db.transaction() as run:
            run(
                "INSERT INTO opt_outs (member_id, channel, kind) VALUES (?, ?, ?)"
                " ON CONFLICT DO NOTHING",
                (member_id, channel, kind),
            )

    def opt_in(self, member_id: str, channel: str = ANY, kind: str = ANY) -> int:
        """Removes the matching opt-out (exactly that channel and kind); returns how many."""
        _check(channel, kind)
        with self.db.transaction() as run:
            run(
                "DELETE FROM opt_outs WHERE member_id = ? AND channel = ? AND kind = ?",
                (member_id, channel, kind),
            )
            return run.rowcount

    def opt_outs(self, member_id: str) -> list[tuple[str, str]]:
        with self.db.transaction() as run:
            rows = run(
                "SELECT channel, kind FROM opt_outs WHERE member_id = ? ORDER BY 1, 2",
                (member_id,),
            )
        return [(str(c), str(k)) for c, k in rows]

    def erase(self, member_id: str) -> None:
        """Right to erasure: contact details, preferences and the notifier's copy of the
        member's history go; undelivered notices are suppressed. The sent-log keeps only
        keys and states (member id, kind, dates), so a redelivered entry is still no news."""
        now = ts(datetime.now(UTC))
        with self.db.transaction() as run:
            run("DELETE FROM contacts WHERE member_id = ?", (member_id,))
            run("DELETE FROM opt_outs WHERE member_id = ?", (member_id,))
            Snapshots.erase(run, member_id)
            run(
                "UPDATE deliveries SET state = ?, last_error = ?, updated_at = ?"
                " WHERE state IN (?, ?) AND key IN (SELECT key FROM notices WHERE member_id = ?)",
                (SUPPRESSED, "member erased", now, PENDING, FAILED, member_id),
            )
            run("UPDATE notices SET data = ? WHERE member_id = ?", ("{}", member_id))
