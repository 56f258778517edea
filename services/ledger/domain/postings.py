"""Double-entry postings: every ledger entry moves points between accounts and sums to zero."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from services.ledger.domain.errors import InvariantViolation

AVAILABLE = "member:available"
PENDING = "member:pending"
HELD = "member:held"
ISSUED = "program:issued"
REDEEMED = "program:redeemed"
EXPIRED = "program:expired"
ADJUSTMENTS = "program:adjustments"

MEMBER_ACCOUNTS = (AVAILABLE, PENDING, HELD)
PROGRAM_ACCOUNTS = (ISSUED, REDEEMED, EXPIRED, ADJUSTMENTS)
ACCOUNTS = MEMBER_ACCOUNTS + PROGRAM_ACCOUNTS


@dataclass(frozen=True, slots=True)
class Posting:
    """A signed movement on one account (positive: the account's balance grows)."""

    account: str
    amount: int


def transfer(source: str, destination: str, amount: int) -> tuple[Posting, ...]:
    """Move `amount` points from `source` to `destination`: two postings that sum to zero."""
    if amount == 0:
        return ()
    return (Posting(source, -amount), Posting(destination, amount))


def check_balanced(postings: Iterable[Posting]) -> None:
    postings = tuple(postings)
    for p in postings:
        if p.account not in ACCOUNTS:
            raise InvariantViolation(f"unknown account {p.account!r}")
        if not isinstance(p.amount, int) or isinstance(p.amount, bool):
            raise InvariantViolation(f"posting amount {p.amount!r} is not an integer")
    total = sum(p.amount for p in postings)
    if total != 0:
        raise InvariantViolation(f"postings sum to {total}, not zero: {postings}")


def apply_postings(balances: Mapping[str, int], postings: Iterable[Posting]) -> dict[str, int]:
    result = dict(balances)
    for p in postings:
        result[p.account] = result.get(p.account, 0) + p.amount
    return result
