"""End-to-end benchmark: Kafka in, the ledger on PostgreSQL, Kafka out.

Run: uv run python -m bench.pipeline [--events 200000] [--members 20000]

It produces a realistic mix of inbound events (purchases, refunds, referrals, redemptions,
cancellations, activities, enrolments, 1% re-sends) into a real broker, then measures on
the same data, in one run:

  (a) `loyalty serve` end to end: events/s from its start until every inbound offset is
      applied and the balances projection has caught up (PostgreSQL, durable by default:
      fsync and synchronous commit on, as a ledger must run);
  (b) latency at a fixed offered rate (default 2,000 events/s): from handing an event to
      the producer to reading its ledger entry on loyalty.ledger.v1, p50 and p99;
  (c) a naive baseline: one transaction per event doing UPDATE balance + INSERT history
      with psycopg (no idempotency, no lots, no outbox);
  (d) raw limits: aiokafka consume-only, and batched PostgreSQL inserts (COPY).

Without KAFKA_BOOTSTRAP_SERVERS / POSTGRES_HOST it starts its own broker and server with
the deploy scripts. Use --fast-pg for a server without fsync (like the test suite's).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from bench import servers
from schemas.inbound import (
    TOPIC_ACTIVITIES,
    TOPIC_LEDGER,
    TOPIC_PURCHASES,
    TOPIC_REDEMPTIONS,
    TOPIC_REFERRALS,
)
from services.ledger.adapters.kafka_ingest import tracking_key
from services.ledger.adapters.kafka_relay import RELAY_KEY
from services.ledger.adapters.kafka_topics import create_topics, declared_topics, describe_topics
from services.ledger.bootstrap import Settings, build_ledger

INBOUND = (TOPIC_PURCHASES, TOPIC_REFERRALS, TOPIC_REDEMPTIONS, TOPIC_ACTIVITIES)
LOYALTY = Path(sys.executable).parent / "loyalty"
Message = tuple[str, str, bytes]  # topic, key, value


# ------------------------------------------------------------------------------ the data


@dataclass
class _Member:
    orders: list[tuple[str, int]]
    redemptions: list[str]


class Mix:
    """A deterministic stream of realistic inbound events over `members` members."""

    def __init__(self, members: int, run: str, seed: int = 7) -> None:
        self.rng = random.Random(seed)
        self.members = [f"b{run}-{i}" for i in range(members)]
        self.state: dict[str, _Member] = {}
        self.run = run
        self.count = 0
        self.clock = datetime.now(UTC) - timedelta(days=20)
        self.sent: list[Message] = []

    def _at(self) -> str:
        self.clock += timedelta(milliseconds=5)
        return self.clock.isoformat().replace("+00:00", "Z")

    def _msg(self, topic: str, kind: str, member: str, **data: Any) -> Message:
        self.count += 1
        body = {
            "event_id": f"{self.run}-{self.count}",
            "type": kind,
            "occurred_at": self._at(),
            "member_id": member,
            "data": data,
        }
        return topic, member, json.dumps(body).encode()

    def next(self) -> Message:
        rng = self.rng
        if self.sent and rng.random() < 0.01:
            return self.sent[rng.randrange(len(self.sent))]  # an upstream re-send
        member = rng.choice(self.members)
        state = self.state.setdefault(member, _Member([], []))
        roll = rng.random()
        if roll < 0.64 or (not state.orders and roll < 0.80):
            order = f"o{self.count}"
            cents = rng.randrange(300, 15000)
            sku = f"sku-{rng.randrange(200)}"
            state.orders.append((order, cents))
            message = self._msg(
                TOPIC_PURCHASES,
                "purchase.completed",
                member,
                order_id=order,
                currency="USD",
                total_minor=cents,
                lines=[
                    {"sku": sku, "category": "drinks", "quantity": 1, "unit_price_minor": cents}
                ],
            )
        elif roll < 0.69 and state.orders:
            order, cents = rng.choice(state.orders)
            message = self._msg(
                TOPIC_PURCHASES,
                "purchase.refunded",
                member,
                order_id=order,
                refund_id=f"r{self.count}",
                amount_minor=max(1, cents // 4),
            )
        elif roll < 0.72:
            referee = f"b{self.run}-ref{self.count}"
            message = self._msg(
                TOPIC_REFERRALS, "referral.qualified", member, referee_member_id=referee
            )
        elif roll < 0.82 and state.orders:
            redemption = f"d{self.count}"
            state.redemptions.append(redemption)
            message = self._msg(
                TOPIC_REDEMPTIONS,
                "redemption.requested",
                member,
                redemption_id=redemption,
                points=rng.randrange(5, 40),
            )
        elif roll < 0.84 and state.redemptions:
            message = self._msg(
                TOPIC_REDEMPTIONS,
                "redemption.cancelled",
                member,
                redemption_id=state.redemptions.pop(),
            )
        elif roll < 0.86 and not state.orders:
            message = self._msg(TOPIC_ACTIVITIES, "member.enrolled", member)
        else:
            activity = rng.choice(["review", "birthday", "review", "signup"])
            message = self._msg(
                TOPIC_ACTIVITIES,
                "activity.completed",
                member,
                activity=activity,
                reference=f"x{self.count}",
            )
        self.sent.append(message)
        if len(self.sent) > 5000:
            del self.sent[:1000]
        return message


# ------------------------------------------------------------------------------- Kafka


async def produce(bootstrap: str, messages: list[Message]) -> float:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, enable_idempotence=True, linger_ms=20, max_batch_size=262144
    )
    await producer.start()
    began = time.perf_counter()
    try:
        futures = [
            await producer.send(topic, value, key=key.encode()) for topic, key, value in messages
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return time.perf_counter() - began


async def partitions_of(bootstrap: str, topics: tuple[str, ...]) -> list[TopicPartition]:
    """Every partition of `topics`."""
    counts = await describe_topics(bootstrap)
    return [TopicPartition(t, p) for t in topics for p in range(counts[t])]


async def end_offsets(bootstrap: str, topics: tuple[str, ...]) -> dict[TopicPartition, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        return dict(await consumer.end_offsets(await partitions_of(bootstrap, topics)))
    finally:
        await consumer.stop()


async def consume_only(bootstrap: str, ends: dict[TopicPartition, int]) -> tuple[int, float]:
    """Raw limit: read every inbound message with aiokafka, doing nothing with it."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, max_partition_fetch_bytes=4 << 20
    )
    await consumer.start()
    try:
        consumer.assign(list(ends))
        await consumer.seek_to_beginning(*ends)
        began = time.perf_counter()
        remaining = {tp: end for tp, end in ends.items() if end > 0}
        count = 0
        while remaining:
            batches = await consumer.getmany(timeout_ms=500, max_records=10000)
            for tp, records in batches.items():
                count += len(records)
                if records and records[-1].offset + 1 >= remaining.get(tp, 0):
                    remaining.pop(tp, None)
        return count, time.perf_counter() - began
    finally:
        await consumer.stop()


# ------------------------------------------------------------------------ the real thing


def start_serve(
    bootstrap: str, env: dict[str, str], group: str, log: Path, *options: str
) -> subprocess.Popen[bytes]:
    with log.open("ab") as handle:
        return subprocess.Popen(
            [str(LOYALTY), "serve", "--bootstrap", bootstrap, "--group-id", group, *options],
            env={**os.environ, **env, "LOYALTY_METRICS_PORT": "0"},
            stdout=subprocess.DEVNULL,
            stderr=handle,
        )


def caught_up(ledger: Any, ends: dict[TopicPartition, int]) -> bool:
    recorder = ledger.app.process_recorder
    for tp, end in ends.items():
        if not end:
            continue
        position = recorder.max_tracking_id(tracking_key(tp.topic, tp.partition))
        if position is None or position < end - 1:  # offset 0 is a position too
            return False
    # Caught up when no account entry is left past the projection's position.
    after = ledger.projection.position + 1
    return not recorder.select_notifications(start=after, limit=1, topics=ledger.projection.topics)


def published(ledger: Any) -> bool:
    """The relay has published every entry (its position is past the last one)."""
    recorder = ledger.app.process_recorder
    after = (recorder.max_tracking_id(RELAY_KEY) or 0) + 1
    return not recorder.select_notifications(start=after, limit=1, topics=ledger.projection.topics)


async def latency(
    bootstrap: str, mix: Mix, rate: int, seconds: int, settled: Any = None
) -> tuple[list[float], int, float]:
    """Offer `rate` events/s for `seconds`; time each event until its entry is published.

    Without `settled`, reading stops once 90 % of the events have been seen (some events make
    no entry), or 30 s after the last was sent. With `settled` (a callable: has the relay
    published everything?), it stops once that holds and the entries published by then are
    read, or 120 s after the last was sent, so the slowest 10 % are not left out."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, linger_ms=1)
    await producer.start()
    sent_at: dict[str, float] = {}
    seen: dict[str, float] = {}
    try:
        partitions = await partitions_of(bootstrap, (TOPIC_LEDGER,))
        consumer.assign(partitions)
        await consumer.seek_to_end(*partitions)
        for tp in partitions:
            await consumer.position(tp)
        done = asyncio.Event()

        async def read() -> None:
            last_round = False
            ends: dict[TopicPartition, int] | None = None
            while True:
                batches = await consumer.getmany(timeout_ms=100, max_records=5000)
                now = time.perf_counter()
                for records in batches.values():
                    for record in records:
                        body = json.loads(record.value)
                        event_id = body["provenance"]["event_id"]
                        if event_id in sent_at and event_id not in seen:
                            seen[event_id] = now
                if not done.is_set():
                    continue
                if settled is None:
                    if len(seen) >= len(sent_at) * 0.9 or now - finished > 30:
                        return
                elif (last_round and not batches) or now - finished > 120:
                    return
                elif ends is None:
                    ends = await end_offsets(bootstrap, INBOUND)
                elif not last_round and settled(ends):
                    last_round = True  # read what was published up to now, then stop

        reader = asyncio.create_task(read())
        tick = 0.01
        per_tick = max(1, rate // 100)
        began = time.perf_counter()
        futures = []
        for step in range(int(seconds / tick)):
            target = began + step * tick
            if (delay := target - time.perf_counter()) > 0:
                await asyncio.sleep(delay)
            for _ in range(per_tick):
                topic, key, value = mix.next()
                event_id = json.loads(value)["event_id"]
                if event_id in sent_at:
                    continue  # a re-send: its entry was published the first time
                sent_at[event_id] = time.perf_counter()
                futures.append(await producer.send(topic, value, key=key.encode()))
        await asyncio.gather(*futures)
        offered = len(sent_at) / (time.perf_counter() - began)
        finished = time.perf_counter()
        done.set()
        await reader
    finally:
        await producer.stop()
        await consumer.stop()
    return [seen[e] - sent_at[e] for e in seen], len(sent_at), offered


# ------------------------------------------------------------------------ the baselines


def naive_points(kind: str, data: dict[str, Any]) -> int:
    """A flat rule per event type: the baseline does no lots, caps or tiers."""
    if kind == "purchase.completed":
        return int(data["total_minor"]) // 100
    if kind == "purchase.refunded":
        return -(int(data.get("amount_minor") or 0) // 100)
    if kind == "redemption.requested":
        return -int(data.get("points") or 0)
    return {"referral.qualified": 20, "activity.completed": 5, "member.enrolled": 10}.get(kind, 0)


def conninfo(env: dict[str, str]) -> str:
    return (
        f"host={env['POSTGRES_HOST']} port={env['POSTGRES_PORT']} user={env['POSTGRES_USER']} "
        f"password={env['POSTGRES_PASSWORD']} dbname={env['POSTGRES_DBNAME']}"
    )


async def naive(
    bootstrap: str, ends: dict[TopicPartition, int], env: dict[str, str]
) -> tuple[int, float]:
    """What many loyalty plugins do: per event, one transaction of UPDATE + INSERT."""
    conn = psycopg.connect(conninfo(env), autocommit=True)
    conn.execute(
        "CREATE TABLE IF NOT EXISTS naive_balance (member_id text PRIMARY KEY, points bigint)"
    )
    conn.execute(
        "CREATE TABLE IF NOT EXISTS naive_history (id bigserial PRIMARY KEY, event_id text, "
        "member_id text, points bigint, body jsonb)"
    )
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(list(ends))
        await consumer.seek_to_beginning(*ends)
        remaining = {tp: end for tp, end in ends.items() if end > 0}
        count = 0
        began = time.perf_counter()
        while remaining:
            batches = await consumer.getmany(timeout_ms=500, max_records=2000)
            for tp, records in batches.items():
                for record in records:
                    body = json.loads(record.value)
                    points = naive_points(body["type"], body["data"])
                    member = body["member_id"]
                    with conn.transaction():
                        conn.execute(
                            "INSERT INTO naive_history (event_id, member_id, points, body) "
                            "VALUES (%s, %s, %s, %s)",
                            (body["event_id"], member, points, record.value.decode()),
                        )
                        updated = conn.execute(
                            "UPDATE naive_balance SET points = points + %s WHERE member_id = %s",
                            (points, member),
                        )
                        if updated.rowcount == 0:
                            conn.execute(
                                "INSERT INTO naive_balance VALUES (%s, %s)", (member, points)
                            )
                    count += 1
                if records and records[-1].offset + 1 >= remaining.get(tp, 0):
                    remaining.pop(tp, None)
        return count, time.perf_counter() - began
    finally:
        await consumer.stop()
        conn.close()


def copy_insert(messages: list[Message], env: dict[str, str], batch: int = 10000) -> float:
    """Raw limit: the same rows written with COPY, one transaction per `batch` rows."""
    with psycopg.connect(conninfo(env), autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS raw_insert (event_id text, member_id text, "
            "points bigint, body jsonb)"
        )
        began = time.perf_counter()
        for start in range(0, len(messages), batch):
            with (
                conn.transaction(),
                conn.cursor() as cur,
                cur.copy("COPY raw_insert FROM STDIN") as copy,
            ):
                for topic, key, value in messages[start : start + batch]:
                    copy.write_row((topic, key, 1, value.decode()))
        return time.perf_counter() - began


# ---------------------------------------------------------------------------------- main


def _row(name: str, events: int, seconds: float, naive_rate: float | None) -> str:
    rate = events / seconds if seconds else 0.0
    ratio = f"{rate / naive_rate:7.1f}x" if naive_rate else "       -"
    return f"{name:<52} {events:>8,} {seconds:>9.1f} {rate:>10,.0f} {ratio}"


def make_messages(events: int, members: int, run: str) -> tuple[Mix, list[Message]]:
    """The deterministic mix and its first `events` messages; prints what they are."""
    mix = Mix(members, run)
    messages = [mix.next() for _ in range(events)]
    kinds = Counter(json.loads(v)["type"] for _, _, v in messages)
    print(
        f"{events:,} events over {members:,} members: "
        + ", ".join(f"{k} {n}" for k, n in kinds.most_common()),
        flush=True,
    )
    return mix, messages


def serve_env(pg: dict[str, str], max_batch: int) -> dict[str, str]:
    return {**pg, "LOYALTY_DB": "/tmp/unused.sqlite", "LOYALTY_MAX_BATCH": str(max_batch)}


def start_processes(
    bootstrap: str, env: dict[str, str], group: str, log: Path, *, split: bool
) -> list[subprocess.Popen[bytes]]:
    """`loyalty serve`, or with `split` ingest and relay (with the views) as two processes."""
    if split:
        return [
            start_serve(bootstrap, env, group, log, "--no-relay", "--no-project"),
            start_serve(bootstrap, env, group, log, "--no-ingest"),
        ]
    return [start_serve(bootstrap, env, group, log)]


def stop_processes(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_for(
    done: Any, processes: list[subprocess.Popen[bytes]], began: float, timeout: float, log: Path
) -> float:
    """Poll `done()` every 0.25 s; the seconds since `began` once it holds."""
    while not done():
        if any(p.poll() is not None for p in processes):
            raise SystemExit(f"loyalty serve exited; see {log}")
        if time.perf_counter() - began > timeout:
            raise SystemExit("timed out")
        time.sleep(0.25)
    return time.perf_counter() - began


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def latency_line(waits: list[float], offered_n: int, offered: float) -> str:
    if len(waits) < 2:
        return "latency: no entries seen"
    ms = sorted(w * 1000 for w in waits)
    return (
        f"latency at {offered:,.0f} events/s offered ({offered_n:,} events, "
        f"{len(ms):,} entries seen): p50 {statistics.median(ms):,.0f} ms, "
        f"p99 {percentile(ms, 0.99):,.0f} ms, max {ms[-1]:,.0f} ms"
    )


def naive_ends(ends: dict[TopicPartition, int], limit: int) -> dict[TopicPartition, int]:
    """The first `limit` inbound records (spread over the partitions); 0: all of them."""
    if not limit:
        return ends
    return {tp: min(end, limit // len(ends) + 1) for tp, end in ends.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--members", type=int, default=20_000)
    parser.add_argument("--rate", type=int, default=2000, help="offered rate for latency")
    parser.add_argument("--seconds", type=int, default=20, help="length of the latency run")
    parser.add_argument("--naive-events", type=int, default=0, help="0: all of them")
    parser.add_argument("--fast-pg", action="store_true", help="PostgreSQL without fsync")
    parser.add_argument("--timeout", type=int, default=3600)
    parser.add_argument("--max-batch", type=int, default=500, help="`serve --max-batch`")
    parser.add_argument(
        "--split",
        action="store_true",
        help="two processes: `serve --no-relay --no-project` and `serve --no-ingest`",
    )
    args = parser.parse_args()
    run = str(int(time.time()))
    mix, messages = make_messages(args.events, args.members, run)
    with servers.kafka() as bootstrap, servers.postgres(durable=not args.fast_pg) as pg:
        asyncio.run(create_topics(bootstrap, declared_topics()))
        produced = asyncio.run(produce(bootstrap, messages))
        print(f"produced in {produced:.1f}s ({len(messages) / produced:,.0f}/s)", flush=True)
        ends = asyncio.run(end_offsets(bootstrap, INBOUND))
        total = sum(ends.values())
        consumed, consume_s = asyncio.run(consume_only(bootstrap, ends))
        print(_row("raw: aiokafka consume only", consumed, consume_s, None), flush=True)

        env = serve_env(pg, args.max_batch)
        reader = build_ledger(Settings(), env=pg)
        log = Path(f"/tmp/loyalty-bench-serve-{run}.log")
        began = time.perf_counter()
        processes = start_processes(bootstrap, env, f"bench-{run}", log, split=args.split)
        try:
            ours_s = wait_for(lambda: caught_up(reader, ends), processes, began, args.timeout, log)
            print(
                _row("loyalty serve, end to end (projection caught up)", total, ours_s, None),
                flush=True,
            )
            relay_s = wait_for(lambda: published(reader), processes, began, args.timeout, log)
            print(_row("loyalty serve, every entry published", total, relay_s, None), flush=True)
            waits, offered_n, offered = asyncio.run(
                latency(bootstrap, mix, args.rate, args.seconds)
            )
        finally:
            stop_processes(processes)
            reader.close()
        naive_n, naive_s = asyncio.run(naive(bootstrap, naive_ends(ends, args.naive_events), pg))
        copy_s = copy_insert(messages, pg)
    naive_rate = naive_n / naive_s
    print()
    durability = "fsync off (--fast-pg)" if args.fast_pg else "durable: fsync, synchronous commit"
    print(f"PostgreSQL {durability}; {os.cpu_count()} cores")
    print(f"{'what':<52} {'events':>8} {'seconds':>9} {'events/s':>10} vs naive")
    print(_row("loyalty serve, end to end: balances caught up", total, ours_s, naive_rate))
    print(_row("loyalty serve, end to end: every entry published", total, relay_s, naive_rate))
    print(_row("naive: 1 transaction/event, UPDATE + INSERT", naive_n, naive_s, naive_rate))
    print(_row("raw: aiokafka consume only", consumed, consume_s, naive_rate))
    print(_row("raw: PostgreSQL COPY, 10k rows/transaction", len(messages), copy_s, naive_rate))
    print(latency_line(waits, offered_n, offered))


if __name__ == "__main__":
    main()
