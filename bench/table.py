"""The table of targets: one row per target, its measured value and whether it is met.

Pure formatting and verdicts (no measuring), so a unit test can check them on given numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Sense = Literal[">=", "<=", "<", "info"]


@dataclass(frozen=True)
class Row:
    """One target: `value` against `limit` in `unit` (`sense` says which side is met).

    `sense` "info" is a figure the issue asks to report without a bound of its own (the
    fraction of the raw COPY limit). `value` None means it could not be measured (`note`
    says why)."""

    what: str
    sense: Sense
    limit: float
    unit: str
    value: float | None
    note: str = ""

    @property
    def met(self) -> bool | None:
        if self.value is None or self.sense == "info":
            return None
        if self.sense == ">=":
            return self.value >= self.limit
        if self.sense == "<=":
            return self.value <= self.limit
        return self.value < self.limit


def number(value: float, unit: str = "") -> str:
    """1,234 or 12.3 or 0.123 (three significant figures below 100), then the unit."""
    magnitude = abs(value)
    if magnitude >= 100 or value == int(value):
        text = f"{value:,.0f}"
    elif magnitude >= 10:
        text = f"{value:.1f}"
    elif magnitude >= 1:
        text = f"{value:.2f}"
    else:
        text = f"{value:.3g}"
    if not unit:
        return text
    return f"{text}{unit}" if unit in ("x", "%") else f"{text} {unit}"


def target_text(row: Row) -> str:
    if row.sense == "info":
        return f"~{number(row.limit, row.unit)}" if row.limit else "(reported)"
    return f"{row.sense} {number(row.limit, row.unit)}"


def verdict(row: Row) -> str:
    """met, MISSED (by how much, and the factor), or what stopped the measurement."""
    if row.value is None:
        return "NOT MEASURED" + (f": {row.note}" if row.note else "")
    if row.met is None:
        return "(reported)"
    if row.met:
        return "met"
    gap = abs(row.value - row.limit)
    if row.sense == ">=":
        factor = f"{number(row.limit / row.value)}x short" if row.value > 0 else "nothing measured"
        return f"MISSED by {number(gap, row.unit)} ({factor})"
    factor = f"{number(row.value / row.limit)}x the limit" if row.limit > 0 else "over"
    return f"MISSED by {number(gap, row.unit)} ({factor})"


def measured_text(row: Row) -> str:
    if row.value is None:
        return "-"
    return number(row.value, row.unit)


def format_table(rows: list[Row]) -> list[str]:
    """The lines of the table: what, target, measured, verdict; then the rows' notes."""
    header = ("what", "target", "measured", "verdict")
    cells = [(r.what, target_text(r), measured_text(r), verdict(r)) for r in rows]
    widths = [max(len(c[i]) for c in [header, *cells]) for i in range(3)]
    lines = []
    for cell in [header, *cells]:
        lines.append(
            f"{cell[0]:<{widths[0]}}  {cell[1]:>{widths[1]}}  {cell[2]:>{widths[2]}}  {cell[3]}"
        )
    lines.insert(1, "-" * len(lines[0]))
    notes = [f"  {r.what}: {r.note}" for r in rows if r.note and r.value is not None]
    if notes:
        lines += ["", "notes:", *notes]
    met = sum(1 for r in rows if r.met)
    bounded = sum(1 for r in rows if r.met is not None)
    lines += ["", f"{met} of {bounded} bounded targets met"]
    return lines
