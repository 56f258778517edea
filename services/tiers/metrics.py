"""Prometheus metrics of the tiers service."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

MEMBERS_PER_TIER = Gauge(
    "loyalty_tiers_members", "Members per tier in the live tier table", ["tier"]
)
CHANGES = Counter(
    "loyalty_tiers_changes",
    "Tier changes published, by reason (upgrade, downgrade, override_ended) and day (UTC)",
    ["reason", "day"],
)
LAG_SECONDS = Gauge(
    "loyalty_tiers_processing_lag_seconds",
    "Seconds between an applied ledger entry's recording and its processing here",
)
LAST_POSITION = Gauge("loyalty_tiers_last_position", "Highest ledger position applied")
