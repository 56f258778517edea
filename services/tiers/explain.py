"""A member's tier history from the ledger: each change and the entry that caused it."""

from __future__ import annotations

import re

from schemas.outbound import LedgerEntry
from services.ledger.application.ledger import LedgerApplication
from services.tiers.history import ledger_entries

_CAUSE = re.compile(r":p(\d+)$")


def tier_history(app: LedgerApplication, member_id: str) -> list[str]:
    """One line per tier entry, then the ledger entry whose position caused it (if any)."""
    entries: dict[int, LedgerEntry] = {}
    lines: list[str] = []
    for entry in ledger_entries(app):
        if entry.member_id != member_id or entry.position is None:
            continue
        entries[entry.position] = entry
        if entry.entry_type != "tier_assigned":
            continue
        d = entry.details
        who = entry.provenance.origin
        by = f"ops ({who.actor})" if who.channel == "ops" else "tiers service"
        lines.append(
            f"position {entry.position} {entry.effective_at.isoformat()} "
            f"{d.get('previous') or '-'} -> {d.get('tier') or '-'} by {by}: {d.get('reason')}"
            + (f"; until {d['until']}" if d.get("until") else "")
            + ("; locked" if d.get("locked") else "")
        )
        match = _CAUSE.search(entry.provenance.event_id or "")
        cause = entries.get(int(match.group(1))) if match else None
        if cause is not None:
            lines.append(
                f"    caused by position {cause.position}: {cause.entry_type} {cause.points:+d} "
                f"({cause.note})"
            )
        elif who.channel != "ops":
            lines.append("    caused by the period-end review (no entry: time passed)")
    return lines
