"""A member's tier history from the ledger: each tier entry, who decided it and what caused it."""

from __future__ import annotations

import re

from schemas.outbound import LedgerEntry
from services.ledger.application.ledger import LedgerApplication
from services.tiers.facts import OVERRIDE, tier_entry
from services.tiers.history import ledger_entries
from services.tiers.messages import TIMED

_CAUSE = re.compile(r":p(\d+)$")  # 0.1's tier.changed ids end with the causing position


def tier_history(app: LedgerApplication, member_id: str) -> list[str]:
    """One line per tier entry, then the ledger entry (or the review) that caused it."""
    entries: dict[int, LedgerEntry] = {}
    previous: LedgerEntry | None = None  # the member's entry before the current one
    lines: list[str] = []
    for entry in ledger_entries(app):
        if entry.member_id != member_id or entry.position is None:
            continue
        entries[entry.position] = entry
        last, previous = previous, entry
        recorded = tier_entry(entry)
        if recorded is None:
            continue
        who = entry.provenance.origin
        if recorded.cause == OVERRIDE:
            by = f"ops ({who.actor})"
        elif recorded.cause == "service":
            by = "tiers service"
        else:
            by = f"the ledger ({recorded.cause})"
        change = (
            f"{recorded.previous or '-'} -> {recorded.tier or '-'}"
            if recorded.tier != recorded.previous
            else f"{recorded.tier or '-'} kept"
        )
        lines.append(
            f"position {entry.position} {entry.effective_at.isoformat()} {change} by {by}: "
            f"{recorded.reason}"
            + (f"; until {recorded.until.isoformat()}" if recorded.until else "")
            + ("; locked" if recorded.locked else "")
        )
        cause: LedgerEntry | None = None
        if recorded.cause == "upgrade":  # recorded right after the earn that reached it
            cause = last
        elif recorded.cause == "service":
            match = _CAUSE.search(entry.provenance.event_id or "")
            cause = entries.get(int(match.group(1))) if match else None
        if cause is not None:
            lines.append(
                f"    caused by position {cause.position}: {cause.entry_type} {cause.points:+d} "
                f"({cause.note})"
            )
        elif recorded.cause == "override_ended":
            lines.append("    caused by the override's end (no entry: time passed)")
        elif recorded.cause in TIMED or recorded.cause == "service":
            lines.append("    caused by the period-end review (no entry: time passed)")
        elif recorded.cause == "entry":
            lines.append("    placed before the member's first entry counted")
        elif recorded.cause == "reviewed":
            lines.append(
                f"    decided again once event {entry.provenance.event_id or '-'}, dated "
                "before it, arrived"
            )
    return lines
