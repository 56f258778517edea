"""Domain errors: why the ledger refused to apply something."""

from __future__ import annotations


class LedgerError(Exception):
    """Base class of every error the ledger domain raises on purpose."""


class Declined(LedgerError):
    """A valid request the ledger will not apply (insufficient points, unknown order, ...).

    `reason` is a stable machine code; `detail` explains it to a person.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class InvariantViolation(LedgerError):
    """Raised when an entry would break a ledger invariant; signals a bug, never bad input."""
