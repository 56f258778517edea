"""`loyalty demo`: a coffee-chain program end to end on the embedded default, in seconds."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from services.ledger.application.ledger import Inbound
from services.ledger.application.service import Ledger, MemberBalanceView
from services.ledger.application.verify import verify
from services.ledger.application.views import EntryRow
from services.ledger.bootstrap import EXAMPLES, Settings, build_ledger
from services.ledger.domain.clock import FixedClock
from services.ledger.domain.provenance import Origin
from services.notifier.embedded import EmbeddedNotifier
from services.tiers.explain import tier_history
from services.tiers.history import ledger_entries
from services.tiers.rebuild import tier_differences

MEMBERS = ("m-ana", "m-ben", "m-cy")


def _event(event_id: str, kind: str, at: str, member: str, **data: Any) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "type": kind,
        "occurred_at": at,
        "member_id": member,
        "data": data,
    }


def _purchase(event_id: str, at: str, member: str, order: str, cents: int) -> dict[str, Any]:
    return _event(
        event_id,
        "purchase.completed",
        at,
        member,
        order_id=order,
        currency="USD",
        total_minor=cents,
        lines=[{"sku": "latte", "category": "drinks", "quantity": 1, "unit_price_minor": cents}],
    )


# (what happens, when the ledger processes it, the events)
# (what happens, when, then either the messages (events, or raw bytes) to ingest, or the
# member whose balance to show at that moment)
SCRIPT: list[tuple[str, str, list[dict[str, Any] | bytes] | str]] = [
    (
        "Ana and Ben join (signup bonus 10)",
        "2026-05-04T13:00:00Z",
        [
            _event("enrol-ana", "member.enrolled", "2026-05-04T13:00:00Z", "m-ana"),
            _event("enrol-ben", "member.enrolled", "2026-05-04T13:05:00Z", "m-ben"),
        ],
    ),
    (
        "Ana buys a $12.55 latte on Monday: 12 points, pending 2 days",
        "2026-05-04T14:00:00Z",
        [
            _purchase("ord-1001-paid", "2026-05-04T14:00:00Z", "m-ana", "1001", 1255),
        ],
    ),
    (
        "Ana buys $8.40 on double-points Tuesday: 16 points",
        "2026-05-05T14:00:00Z",
        [
            _purchase("ord-1002-paid", "2026-05-05T14:00:00Z", "m-ana", "1002", 840),
        ],
    ),
    (
        "Ben buys $30.00 on Wednesday; checkout re-sends the same event",
        "2026-05-06T15:00:00Z",
        [
            _purchase("ord-2001-paid", "2026-05-06T15:00:00Z", "m-ben", "2001", 3000),
            _purchase("ord-2001-paid", "2026-05-06T15:00:00Z", "m-ben", "2001", 3000),
        ],
    ),
    (
        "Ana refers Cy: 20 points for Ana, 10 for Cy",
        "2026-05-07T12:00:00Z",
        [
            _event(
                "ref-ana-cy",
                "referral.qualified",
                "2026-05-07T12:00:00Z",
                "m-ana",
                referee_member_id="m-cy",
            ),
        ],
    ),
    (
        "Ana is Gold now (58 points this year): a $8.40 latte on Friday earns double, 16",
        "2026-05-08T14:00:00Z",
        [
            _purchase("ord-1003-paid", "2026-05-08T14:00:00Z", "m-ana", "1003", 840),
        ],
    ),
    ("The scheduler releases pending points", "2026-05-09T12:00:00Z", []),
    (
        "Ben returns $10.00 of his order: 10 points taken back",
        "2026-05-09T16:00:00Z",
        [
            _event(
                "ord-2001-refund-1",
                "purchase.refunded",
                "2026-05-09T16:00:00Z",
                "m-ben",
                order_id="2001",
                refund_id="r-1",
                amount_minor=1000,
            ),
        ],
    ),
    (
        "Ana redeems a free drink (50 points), then the barista cancels it",
        "2026-05-12T14:00:00Z",
        [
            _event(
                "red-ana-1",
                "redemption.requested",
                "2026-05-12T14:00:00Z",
                "m-ana",
                redemption_id="red-1",
                reward_id="free-drink",
            ),
            _event(
                "red-ana-1-cancel",
                "redemption.cancelled",
                "2026-05-12T14:05:00Z",
                "m-ana",
                redemption_id="red-1",
                reason="machine broken",
            ),
        ],
    ),
    (
        "Ana redeems a pastry (35 points); Ben tries a free drink he cannot afford",
        "2026-05-14T15:00:00Z",
        [
            _event(
                "red-ana-2",
                "redemption.requested",
                "2026-05-14T14:00:00Z",
                "m-ana",
                redemption_id="red-2",
                reward_id="pastry",
            ),
            _event(
                "red-ben-1",
                "redemption.requested",
                "2026-05-14T15:00:00Z",
                "m-ben",
                redemption_id="red-3",
                reward_id="free-drink",
            ),
        ],
    ),
    (
        "A broken message from a partner system",
        "2026-05-15T09:00:00Z",
        [b'{"event_id": "p-1", "type": "purchase.completed"'],
    ),
    ("The notifier sends May's statements", "2026-06-01T14:00:00Z", []),
    ("Mid-November, Ana checks what is about to expire", "2026-11-15T17:00:00Z", "m-ana"),
    ("A week before the end of November, the last expiry reminders", "2026-11-24T14:00:00Z", []),
    ("Six months later the May points expire at the end of November", "2026-12-01T05:00:00Z", []),
    (
        "Ana keeps Gold through 2027 (2026 qualified); after a quiet 2027 and 30 days' grace,"
        " she is back to Green",
        "2028-01-31T06:00:00Z",
        [],
    ),
]


def run_demo(
    db: Path,
    echo: Callable[[str], Any],
    format_balance: Callable[[MemberBalanceView], str],
    format_entry: Callable[[EntryRow], str],
) -> None:
    clock = FixedClock(datetime(2026, 5, 4, tzinfo=UTC))
    ledger = build_ledger(Settings(program=EXAMPLES / "coffee.yaml", db=db), clock=clock)
    # The notifier, in-process: prints the notices it would send after each step.
    notices = EmbeddedNotifier(
        ledger.app.program,
        clock.now,
        lambda line: echo(f"            notice {line}"),
        {m: f"{m.removeprefix('m-')}@example.com" for m in MEMBERS},
    )
    try:
        echo(f"Program {ledger.app.program.name} ({ledger.app.program.version}), store {db}\n")
        for number, (what, at, step) in enumerate(SCRIPT, start=1):
            clock.set(datetime.fromisoformat(at))
            if isinstance(step, str):
                ledger.catch_up()
                balance = ledger.balance(step)
                assert balance is not None
                echo(f"{at[:10]}  {what}:\n            {format_balance(balance)}")
                notices.step(ledger)
                continue
            items = [
                Inbound(
                    e if isinstance(e, bytes) else json.dumps(e).encode(),
                    Origin("file", file="demo", line=number),
                )
                for e in step
            ]
            first = (ledger.app.recorder.max_notification_id() or 0) + 1
            outcomes = ledger.app.apply_batch(items) if items else []
            made = ledger.tick()  # releases, expiries, hold TTLs and tier reviews due
            ledger.catch_up()
            changes = _tier_changes(ledger, first)
            results = ", ".join(o.status + (f" ({o.reason})" if o.reason else "") for o in outcomes)
            echo(
                f"{at[:10]}  {what}"
                + (f"  -> {results}" if results else "")
                + (f"  [{made} scheduled entries]" if made else "")
                + (f"  [{changes} tier changes]" if changes else "")
            )
            notices.step(ledger)
        echo("")
        for member in MEMBERS:
            balance = ledger.balance(member)
            assert balance is not None
            echo(format_balance(balance))
            for row in reversed(ledger.statement(member, limit=100)):
                echo("  " + format_entry(row).replace("\n", "\n  "))
            for line in notices.lines(member):
                echo("  notice " + line)
            echo("")
        echo("Ana's tier history (each change and the ledger entry that caused it):")
        for line in tier_history(ledger.app, "m-ana"):
            echo("  " + line)
        echo("")
        report = verify(ledger.app, ledger.view)
        report.violations += tier_differences(ledger.app)
        echo(
            f"verify: {report.members} members, {report.entries} entries, "
            f"{report.receipts} receipts: "
            + ("all invariants hold" if report.ok else "; ".join(report.violations))
        )
        for rejection in ledger.app.rejections():
            echo(f"rejected: {rejection.reason}: {rejection.detail}")
    finally:
        notices.close()
        ledger.close()


def _tier_changes(ledger: Ledger, first: int) -> int:
    """Tier changes the ledger recorded (inline, as it went) from ledger position `first`."""
    return sum(
        e.entry_type == "tier_assigned" and e.details.get("tier") != e.details.get("previous")
        for e in ledger_entries(ledger.app, first - 1)
    )
