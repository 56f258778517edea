"""Prometheus metrics of the HTTP API, Kafka ingest and the outbox relay (served by
`loyalty serve`). Every label has a bounded set of values: no ids, no days, nothing a
caller can choose freely."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

API_REQUESTS = Counter(
    "loyalty_api_requests",
    "HTTP requests by method (a known one, else other), route (its template, else "
    "unmatched) and status",
    ["method", "route", "status"],
)
INGEST_MESSAGES = Counter(
    "loyalty_ingest_messages",
    "Inbound messages by topic and outcome (applied, duplicate, rejected) and reason",
    ["topic", "outcome", "reason"],
)
INGEST_BATCH_SIZE = Histogram(
    "loyalty_ingest_batch_size",
    "Messages per applied batch (one partition, one transaction)",
    buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000),
)
INGEST_APPLY_SECONDS = Histogram(
    "loyalty_ingest_apply_seconds",
    "Time to validate, apply and commit one batch",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
INGEST_RETRIES = Counter(
    "loyalty_ingest_retries", "Batches retried after a failure (database or broker)"
)
CONSUMER_LAG = Gauge(
    "loyalty_ingest_consumer_lag",
    "Messages in the partition after the last applied one",
    ["topic", "partition"],
)
RELAY_MESSAGES = Counter(
    "loyalty_relay_messages", "Messages the relay published, by topic", ["topic"]
)
RELAY_RETRIES = Counter(
    "loyalty_relay_retries", "Relay rounds retried after a failure, by what failed", ["cause"]
)
RELAY_LAG = Gauge("loyalty_relay_lag", "Ledger notifications recorded but not yet published")
RELAY_LEADER = Gauge(
    "loyalty_relay_leader", "1 while this process's relay holds the store's publishing lease"
)


def serve_metrics(port: int, host: str = "127.0.0.1") -> None:
    """Expose /metrics on `host:port` from a background thread."""
    start_http_server(port, addr=host)
