"""Prometheus metrics of the notifier (served by `loyalty notify run --metrics-port`)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

NOTICES_RECORDED = Counter(
    "loyalty_notices_recorded",
    "Notices recorded in the sent-log (new keys only), by kind",
    ["kind"],
)
DELIVERIES = Counter(
    "loyalty_notice_deliveries",
    "Delivery outcomes by kind, channel and outcome: sent, failed, retried, suppressed, dead",
    ["kind", "channel", "outcome"],
)
SKIPPED_MESSAGES = Counter(
    "loyalty_notifier_skipped_messages", "Consumed messages that did not parse, by topic", ["topic"]
)
QUEUE_AGE = Gauge(
    "loyalty_notifier_queue_age_seconds", "How long the oldest due, undelivered notice has waited"
)
IN_DOUBT = Counter(
    "loyalty_notifier_in_doubt",
    "Deliveries found in flight after a crash and retried (may reach the member twice)",
)
