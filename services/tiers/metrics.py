"""Prometheus metrics of the tiers projection."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

MEMBERS_PER_TIER = Gauge(
    "loyalty_tiers_members", "Members per tier in the live tier table", ["tier"]
)
CHANGES = Counter(
    "loyalty_tiers_changes",
    "tier.changed published (the ledger's tier changes), by reason (upgrade, downgrade, "
    "override, override_ended); per day is a query (increase over 1d), not a label",
    ["reason"],
)
LAG_SECONDS = Gauge(
    "loyalty_tiers_processing_lag_seconds",
    "Seconds between a ledger entry's recording and its processing here",
)
LAST_POSITION = Gauge("loyalty_tiers_last_position", "Ledger position of the last entry followed")
