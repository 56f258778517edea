"""Every target of issue 11, measured in one run, printed as one table.

Run: uv run python -m bench.targets [--quick] [--only SECTIONS] [size options]

Sections (`--only restart,pipeline,storage,ops,http`; default all, in this order):

  restart   `loyalty serve` started with a backlog waiting: seconds from the process start
            until the first tracking position moves (the first applied batch).
  pipeline  bench.pipeline's end-to-end run on durable PostgreSQL, ingest and relay as two
            processes (`--split`): events/s to balances caught up and to every entry
            published, the naive baseline and the raw COPY limit in the same run; then the
            latency produce -> entry published at 200 and at 2,000 events/s offered, and the
            bytes per inbound event of serve's store.
  storage   bytes per inbound event, all in, after `loyalty ingest` of mixed events, on SQLite
            (file size after a checkpoint) and PostgreSQL (pg_total_relation_size of every
            table); and the marginal bytes of 100 more events for a member with 5 entries and
            for one with a long history.
  ops       `loyalty ingest` of a file into SQLite, then `loyalty rebuild`, `verify` and
            `what-if` (all members) on that store, at N/2 events and at N: events/s and peak
            RSS of each (the child's VmHWM, polled from /proc).
  http      one `loyalty api` process on durable PostgreSQL: GET balance and statement p99 for
            a member with 5 entries and one with a long history (one client, one request at a
            time), GET /v1/program/metrics, then 32 concurrent clients POSTing events and
            GETting balances (bench.load, a process of its own that prints its CPU use).

Every command is the product's own (`loyalty ...` subprocesses, HTTP against `loyalty api`),
printed with its sizes as it runs. Kafka and PostgreSQL are started by the deploy scripts
unless KAFKA_BOOTSTRAP_SERVERS / POSTGRES_HOST are set (see bench.servers); each section
gets a database of its own on the one (durable) PostgreSQL server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from bench import pipeline, servers
from bench.table import Row, format_table
from services.ledger.adapters.kafka_ingest import tracking_key
from services.ledger.adapters.kafka_topics import create_topics, declared_topics
from services.ledger.api.auth import entry_json, new_key
from services.ledger.bootstrap import EXAMPLES, Settings, build_ledger

SECTIONS = ("restart", "pipeline", "storage", "ops", "http")
LOYALTY = pipeline.LOYALTY
KB = 1024


@dataclass
class Sizes:
    events: int  # pipeline: inbound events end to end
    members: int
    naive_events: int
    latency_seconds: int
    restart_events: int  # the backlog waiting when serve restarts
    storage_events: int  # mixed events in the storage stores
    long_history: int  # events of the member with a long history
    ops_events: int  # N: ops tools run at N/2 and at N
    http_events: int  # mixed events in the API's store
    http_samples: int  # one-at-a-time requests per latency row
    http_requests: int  # requests of each 32-client phase
    http_seconds: float  # at most this long per load phase (then the answered count)


DEFAULT = Sizes(100_000, 10_000, 30_000, 20, 5_000, 20_000, 5_000, 100_000, 20_000, 200, 4_000, 120)
QUICK = Sizes(3_000, 500, 2_000, 5, 1_000, 1_000, 500, 2_000, 1_000, 50, 300, 30)


def say(text: str) -> None:
    print(text, flush=True)


# ------------------------------------------------------------------------------ stores


def fresh_database(pg: dict[str, str], name: str) -> dict[str, str]:
    """A new database on the bench's server; the eventsourcing environment to use it."""
    with psycopg.connect(pipeline.conninfo(pg), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return {**pg, "PERSISTENCE_MODULE": "eventsourcing.postgres", "POSTGRES_DBNAME": name}


def pg_bytes(env: dict[str, str]) -> int:
    """pg_total_relation_size (heap, TOAST, indexes) of every table outside the catalogs."""
    with psycopg.connect(pipeline.conninfo(env), autocommit=True) as conn:
        row = conn.execute(
            "SELECT coalesce(sum(pg_total_relation_size(format('%I.%I', schemaname, tablename)"
            "::regclass)), 0) FROM pg_tables "
            "WHERE schemaname NOT IN ('pg_catalog', 'information_schema') "
            "AND tablename NOT IN ('naive_balance', 'naive_history', 'raw_insert')"
        ).fetchone()
    return int(row[0]) if row else 0


def sqlite_bytes(db: Path) -> int:
    """The file's size after a checkpoint (what the WAL held is in the file then)."""
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return sum(p.stat().st_size for p in db.parent.glob(db.name + "*") if p.is_file())


def sqlite_env(db: Path) -> dict[str, str]:
    return {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "LOYALTY_DB": str(db)}


# ------------------------------------------------------------------------------ events


def write_mix(path: Path, events: int, members: int, run: str) -> list[str]:
    """`events` of bench.pipeline's realistic mix as a JSON-lines file; the member ids."""
    mix = pipeline.Mix(members, run)
    with path.open("wb") as out:
        for _ in range(events):
            out.write(mix.next()[2] + b"\n")
    return mix.members


LONG_STEP = timedelta(minutes=40)  # 5,000 purchases over about 139 days: lots of 5 months


def write_purchases(
    path: Path, member: str, count: int, run: str, start: datetime, step: timedelta = LONG_STEP
) -> None:
    """`count` purchases of one member, `step` apart from `start`."""
    with path.open("w") as out:
        for i in range(count):
            at = (start + i * step).isoformat().replace("+00:00", "Z")
            body = {
                "event_id": f"{run}-{member}-{i}",
                "type": "purchase.completed",
                "occurred_at": at,
                "member_id": member,
                "data": {
                    "order_id": f"{run}-{member}-o{i}",
                    "currency": "USD",
                    "total_minor": 1999,
                },
            }
            out.write(json.dumps(body) + "\n")


# ------------------------------------------------------------------------------ commands


@dataclass
class Ran:
    seconds: float
    max_rss_kb: int
    code: int
    stdout: str
    stderr: str


def loyalty(args: list[str], env: dict[str, str], *, timeout: float = 7200) -> Ran:
    """Run `loyalty ARGS` as a user would; wall time and the child's peak RSS (VmHWM)."""
    say(f"  $ {_env_text(env)}loyalty {shlex.join(args)}")
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        began = time.perf_counter()
        process = subprocess.Popen(
            [str(LOYALTY), *args], env={**os.environ, **env}, stdout=out, stderr=err
        )
        deadline = began + timeout
        peak_kb = 0
        while True:
            peak_kb = max(peak_kb, _high_water_kb(process.pid))
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                process.kill()
                pid, status, usage = os.wait4(process.pid, 0)
                break
            time.sleep(0.02)
        seconds = time.perf_counter() - began
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        ran = Ran(
            seconds,
            # ru_maxrss of a child starts from this process's RSS at fork (Linux keeps the
            # high-water mark across exec), so VmHWM polled from /proc is the figure; the
            # last 20 ms before exit are not seen.
            peak_kb or usage.ru_maxrss,
            process.returncode,
            out.read().decode(errors="replace"),
            err.read().decode(errors="replace"),
        )
    last = (ran.stdout.strip().splitlines() or [""])[-1][:160]
    say(f"    {seconds:.1f} s, peak RSS {ran.max_rss_kb / KB:,.0f} MB, exit {ran.code}: {last}")
    if ran.code not in (0, 1):
        say(f"    stderr: {ran.stderr[-800:]}")
    return ran


def _high_water_kb(pid: int) -> int:
    """VmHWM (peak resident set) of a running process, in KB; 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _env_text(env: dict[str, str]) -> str:
    shown = {k: v for k, v in env.items() if k in ("LOYALTY_DB", "POSTGRES_DBNAME", "LOYALTY_NOW")}
    return "".join(f"{k}={v} " for k, v in shown.items())


def ingest(path: Path, env: dict[str, str], events: int) -> tuple[Ran, float]:
    ran = loyalty(["ingest", str(path)], env)
    counts = ran.stdout.strip().splitlines()[-1:] or [""]
    if ran.code not in (0, 1) or counts[0].startswith("0 applied"):
        raise SystemExit(f"loyalty ingest applied nothing: {ran.stderr[:2000]}")
    return ran, events / ran.seconds


# ------------------------------------------------------------------------------ restart


def restart_section(bootstrap: str, pg: dict[str, str], sizes: Sizes, run: str) -> list[Row]:
    say(f"\n== restart: serve with a backlog of {sizes.restart_events:,} events waiting")
    env = pipeline.serve_env(fresh_database(pg, "bench_restart"), 500)
    first = max(200, sizes.restart_events // 5)
    mix, messages = pipeline.make_messages(first + sizes.restart_events, 2_000, f"{run}r")
    asyncio.run(pipeline.produce(bootstrap, messages[:first]))
    ends = asyncio.run(pipeline.end_offsets(bootstrap, pipeline.INBOUND))
    reader = build_ledger(Settings(), env=env)
    log = Path(f"/tmp/loyalty-bench-restart-{run}.log")
    keys = [tracking_key(tp.topic, tp.partition) for tp in ends]
    recorder = reader.app.process_recorder

    def positions() -> dict[str, int | None]:
        return {k: recorder.max_tracking_id(k) for k in keys}

    try:
        say(f"  first start: {first:,} events (and whatever the topics held) to apply")
        processes = pipeline.start_processes(bootstrap, env, f"restart-{run}", log, split=False)
        try:
            pipeline.wait_for(
                lambda: pipeline.caught_up(reader, ends),
                processes,
                time.perf_counter(),
                3600,
                log,
            )
        finally:
            pipeline.stop_processes(processes)
        before = positions()
        asyncio.run(pipeline.produce(bootstrap, messages[first:]))
        say(f"  stopped; produced a backlog of {sizes.restart_events:,}; starting serve again")
        began = time.perf_counter()
        processes = pipeline.start_processes(bootstrap, env, f"restart-{run}", log, split=False)
        try:
            moved = None
            while time.perf_counter() - began < 120:
                if positions() != before:
                    moved = time.perf_counter() - began
                    break
                if any(p.poll() is not None for p in processes):
                    raise SystemExit(f"loyalty serve exited; see {log}")
                time.sleep(0.01)
        finally:
            pipeline.stop_processes(processes)
    finally:
        reader.close()
    del mix
    say(f"  first applied batch after {moved if moved is not None else float('nan'):.2f} s")
    return [
        Row(
            "restart of serve to its first applied batch",
            "<",
            2.0,
            "s",
            moved,
            f"`loyalty serve` on durable PostgreSQL, {sizes.restart_events:,} events waiting; "
            "from Popen to the first tracking position moving (polled every 10 ms)"
            if moved is not None
            else "no position moved within 120 s",
        )
    ]


# ------------------------------------------------------------------------------ pipeline


def pipeline_section(bootstrap: str, pg: dict[str, str], sizes: Sizes, run: str) -> list[Row]:
    say(
        f"\n== pipeline: bench.pipeline --events {sizes.events} --members {sizes.members} "
        f"--naive-events {sizes.naive_events} --split, then latency at 200 and 2,000 events/s"
    )
    db = fresh_database(pg, "bench_pipeline")
    mix, messages = pipeline.make_messages(sizes.events, sizes.members, run)
    produced = asyncio.run(pipeline.produce(bootstrap, messages))
    say(f"  produced in {produced:.1f}s")
    ends = asyncio.run(pipeline.end_offsets(bootstrap, pipeline.INBOUND))
    total = sum(ends.values())
    if total != len(messages):
        say(f"  the inbound topics hold {total:,} events (earlier sections' too): all count")
    env = pipeline.serve_env(db, 500)
    reader = build_ledger(Settings(), env=db)
    log = Path(f"/tmp/loyalty-bench-serve-{run}.log")
    lat: dict[int, tuple[list[float], int, float]] = {}
    began = time.perf_counter()
    processes = pipeline.start_processes(bootstrap, env, f"bench-{run}", log, split=True)
    try:
        ours_s = pipeline.wait_for(
            lambda: pipeline.caught_up(reader, ends), processes, began, 7200, log
        )
        say(pipeline._row("balances caught up", total, ours_s, None))
        relay_s = pipeline.wait_for(lambda: pipeline.published(reader), processes, began, 7200, log)
        say(pipeline._row("every entry published", total, relay_s, None))
        stored = pg_bytes(db)
        say(f"  serve's store: {stored:,} bytes for {total:,} inbound events")
        for rate in (200, 2000):  # the lower rate first: 2,000/s may leave a backlog
            lat[rate] = asyncio.run(
                pipeline.latency(
                    bootstrap,
                    mix,
                    rate,
                    sizes.latency_seconds,
                    settled=lambda ends: (
                        pipeline.caught_up(reader, ends) and pipeline.published(reader)
                    ),
                )
            )
            say("  " + pipeline.latency_line(*lat[rate]))
    finally:
        pipeline.stop_processes(processes)
        reader.close()
    naive_n, naive_s = asyncio.run(
        pipeline.naive(bootstrap, pipeline.naive_ends(ends, sizes.naive_events), db)
    )
    copy_s = pipeline.copy_insert(messages, db)
    naive_rate = naive_n / naive_s
    copy_rate = len(messages) / copy_s
    caught, pub = total / ours_s, total / relay_s
    say(pipeline._row("naive: 1 transaction/event, UPDATE + INSERT", naive_n, naive_s, None))
    say(pipeline._row("raw: PostgreSQL COPY, 10k rows/transaction", len(messages), copy_s, None))
    how = f"{total:,} events over {sizes.members:,} members, serve --split, durable PostgreSQL"
    rows = [
        Row("end to end: balances caught up", ">=", 20_000, "events/s", caught, how),
        Row("end to end: every entry published", ">=", 20_000, "events/s", pub, how),
        Row(
            "naive baseline, same run",
            "info",
            0,
            "events/s",
            naive_rate,
            f"{naive_n:,} events, 1 transaction/event (UPDATE + INSERT)",
        ),
        Row("balances caught up vs naive", ">=", 10, "x", caught / naive_rate),
        Row("every entry published vs naive", ">=", 10, "x", pub / naive_rate),
        Row(
            "every entry published / raw COPY limit",
            "info",
            0.2,
            "",
            pub / copy_rate,
            f"raw COPY {copy_rate:,.0f} rows/s (10k rows a transaction)",
        ),
    ]
    for rate, limit in ((2000, 250.0), (200, 100.0)):
        waits, offered_n, offered = lat[rate]
        p99 = pipeline.percentile([w * 1000 for w in waits], 0.99) if len(waits) >= 2 else None
        rows.append(
            Row(
                f"latency produce -> entry published, p99 at {rate:,}/s",
                "<",
                limit,
                "ms",
                p99,
                f"{offered:,.0f}/s offered for {sizes.latency_seconds} s, {len(waits):,} of "
                f"{offered_n:,} entries seen"
                if p99 is not None
                else "no entries seen",
            )
        )
    rows.append(
        Row(
            "bytes per inbound event, PostgreSQL, serve's store",
            "<=",
            KB,
            "B",
            stored / total,
            f"{stored:,} bytes (every table with its indexes and TOAST) / {total:,} events",
        )
    )
    return rows


# ------------------------------------------------------------------------------ storage


def storage_section(pg: dict[str, str] | None, sizes: Sizes, run: str, tmp: Path) -> list[Row]:
    long_n = sizes.long_history
    say(
        f"\n== storage: {sizes.storage_events:,} mixed events, a member with {long_n:,} "
        "purchases and one with 5, then 100 more purchases each"
    )
    base = tmp / "storage-mix.jsonl"
    write_mix(base, sizes.storage_events, max(10, sizes.storage_events // 10), f"{run}s")
    start = datetime.now(UTC) - timedelta(days=10)
    long_file, short_file = tmp / "storage-long.jsonl", tmp / "storage-short.jsonl"
    write_purchases(long_file, "long", long_n, f"{run}s", start - long_n * LONG_STEP)
    write_purchases(short_file, "short", 5, f"{run}s", start)
    more_long, more_short = tmp / "storage-more-long.jsonl", tmp / "storage-more-short.jsonl"
    later = datetime.now(UTC) - timedelta(days=2)
    write_purchases(more_long, "long", 100, f"{run}s-more", later, timedelta(minutes=1))
    write_purchases(more_short, "short", 100, f"{run}s-more", later, timedelta(minutes=1))

    stores: list[tuple[str, dict[str, str], Callable[[], int]]] = []
    db = tmp / "storage.sqlite"
    stores.append(("SQLite", sqlite_env(db), lambda: sqlite_bytes(db)))
    if pg is not None:
        env = fresh_database(pg, "bench_storage")
        stores.append(("PostgreSQL", env, lambda: pg_bytes(env)))
    rows = []
    for name, env, size in stores:
        say(f"  {name}:")
        ingest(base, env, sizes.storage_events)
        mixed = size()
        per_event = mixed / sizes.storage_events
        say(
            f"    {mixed:,} bytes after {sizes.storage_events:,} mixed events: "
            f"{per_event:,.0f}/event"
        )
        ingest(long_file, env, long_n)
        ingest(short_file, env, 5)
        before = size()
        ingest(more_short, env, 100)
        after_short = size()
        ingest(more_long, env, 100)
        after_long = size()
        short_each = (after_short - before) / 100
        long_each = (after_long - after_short) / 100
        rows += [
            Row(
                f"bytes per inbound event, {name}, all in",
                "<=",
                KB,
                "B",
                per_event,
                f"`loyalty ingest` of {sizes.storage_events:,} mixed events: {mixed:,} bytes",
            ),
            Row(
                f"bytes per event, {name}, member with 5 purchases",
                "<=",
                KB,
                "B",
                short_each,
                f"+{after_short - before:,} bytes over 100 more purchases",
            ),
            Row(
                f"bytes per event, {name}, member with {long_n:,} purchases",
                "<=",
                KB,
                "B",
                long_each,
                f"+{after_long - after_short:,} bytes over 100 more purchases",
            ),
            Row(
                f"{name}: long history / short, bytes per event",
                "<=",
                1.25,
                "x",
                long_each / short_each if short_each > 0 else None,
                f"{long_each:,.0f} vs {short_each:,.0f} bytes per event: the target is about "
                "the same (allowing 25 % for page granularity)"
                if short_each > 0
                else "the 5-entry member's events grew nothing measurable",
            ),
        ]
    return rows


# ------------------------------------------------------------------------------ ops tools


def ops_section(sizes: Sizes, run: str, tmp: Path) -> list[Row]:
    n = sizes.ops_events
    half = n // 2
    members = max(10, n // 10)
    say(
        f"\n== ops: loyalty ingest, rebuild, verify, what-if on SQLite at {half:,} and {n:,} events"
    )
    whole = tmp / "ops-mix.jsonl"
    write_mix(whole, n, members, f"{run}o")
    lines = whole.read_bytes().splitlines(keepends=True)
    first, second = tmp / "ops-1.jsonl", tmp / "ops-2.jsonl"
    first.write_bytes(b"".join(lines[:half]))
    second.write_bytes(b"".join(lines[half:]))
    db = tmp / "ops.sqlite"
    env = sqlite_env(db)
    other = str(EXAMPLES / "coffee-v2.yaml")
    tools = {
        "rebuild": ["rebuild"],
        "verify": ["verify"],
        "what-if": ["what-if", "--program", other],
    }
    ran: dict[tuple[str, int], Ran] = {}
    ingested: list[tuple[int, float]] = []
    for size, part in ((half, first), (n, second)):
        r, _ = ingest(part, env, len(lines[:half]) if part is first else n - half)
        ingested.append((n - half if part is second else half, r.seconds))
        for tool, args in tools.items():
            ran[(tool, size)] = loyalty(args, env)
    rows = []
    events = sum(e for e, _ in ingested)
    seconds = sum(s for _, s in ingested)
    rows.append(
        Row(
            "loyalty ingest of a file, SQLite",
            ">=",
            20_000,
            "events/s",
            events / seconds,
            f"{events:,} mixed events over {members:,} members in two files: "
            + ", ".join(f"{e:,} in {s:.1f} s" for e, s in ingested),
        )
    )
    for tool in tools:
        big, small = ran[(tool, n)], ran[(tool, half)]
        failed = "" if big.code == 0 else f"; exit {big.code}: {big.stderr.strip()[-200:]}"
        rows.append(
            Row(
                f"loyalty {tool}, all members",
                ">=",
                50_000,
                "events/s",
                n / big.seconds,
                f"store of {n:,} events, {big.seconds:.1f} s{failed}",
            )
        )
        rows.append(
            Row(
                f"loyalty {tool}: peak RSS at {n:,} / at {half:,}",
                "<=",
                1.25,
                "x",
                big.max_rss_kb / small.max_rss_kb,
                f"{small.max_rss_kb / KB:,.0f} MB at {half:,} events, "
                f"{big.max_rss_kb / KB:,.0f} MB at {n:,}; growing linearly that would be "
                f"{_at_a_million(small.max_rss_kb, big.max_rss_kb, half, n) / KB:,.0f} MB "
                "at 1,000,000",
            )
        )
    return rows


def _at_a_million(small_kb: int, big_kb: int, small_n: int, big_n: int) -> float:
    """Peak RSS at 1,000,000 events, extrapolated along the line through the two runs."""
    slope = (big_kb - small_kb) / (big_n - small_n) if big_n > small_n else 0.0
    return big_kb + max(0.0, slope) * (1_000_000 - big_n)


# ------------------------------------------------------------------------------ HTTP


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def api_process(env: dict[str, str], tmp: Path, key_entry: str) -> Iterator[tuple[str, int]]:
    port = _free_port()
    api_env = {
        **env,
        "LOYALTY_API_KEYS": f"[{key_entry}]",
        # The per-key limit (1000/second by default) would cap the 2,000 req/s target; the
        # limiter still runs, at a rate no caller here reaches.
        "LOYALTY_API_RATE_LIMIT": "1000000/second",
        "LOYALTY_NOTIFIER_DB": f"sqlite:///{tmp / 'notifier.sqlite'}",
        "LOYALTY_METRICS_PORT": "0",
    }
    log = tmp / "api.log"
    say(f"  $ {_env_text(env)}loyalty api --port {port}   (log {log})")
    with log.open("ab") as handle:
        process = subprocess.Popen(
            [str(LOYALTY), "api", "--port", str(port)],
            env={**os.environ, **api_env},
            stdout=handle,
            stderr=handle,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        began = time.perf_counter()
        while True:
            try:
                with urllib.request.urlopen(f"{url}/healthz", timeout=2):
                    break
            except OSError:
                if process.poll() is not None or time.perf_counter() - began > 120:
                    raise SystemExit(f"loyalty api did not start; see {log}") from None
                time.sleep(0.2)
        say(f"    answering after {time.perf_counter() - began:.1f} s")
        yield url, process.pid
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def load(
    url: str,
    key: str,
    kind: str,
    members: list[str],
    requests: int,
    concurrency: int,
    seconds: float,
    server_pid: int,
    run: str,
) -> dict[str, Any]:
    """bench.load in a process of its own; its JSON result, with the server's CPU share."""
    args = [
        sys.executable,
        "-m",
        "bench.load",
        "--url",
        url,
        "--key",
        key,
        "--kind",
        kind,
        "--requests",
        str(requests),
        "--concurrency",
        str(concurrency),
        "--max-seconds",
        str(seconds),
        "--run",
        run,
        "--members",
        *members,
    ]
    shown = members[:2] + (["..."] if len(members) > 2 else [])
    say(
        f"  $ python -m bench.load --kind {kind} --requests {requests} --concurrency "
        f"{concurrency} --max-seconds {seconds:g} --members {' '.join(shown)} "
        f"({len(members)} members)"
    )
    cpu_before = _cpu_seconds(server_pid)
    began = time.perf_counter()
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    wall = time.perf_counter() - began
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    # Over the whole load process (its start and 20 warm-up requests too): an approximation.
    server_cpu = _cpu_seconds(server_pid) - cpu_before
    result["server_cpu_share"] = server_cpu / wall
    result["server_cpu_ms"] = 1000 * server_cpu / (result["answered"] + 20)
    say(
        f"    {result['answered']:,} answered in {result['seconds']:.1f} s: "
        f"{result['per_second']:,.0f} req/s, p50 {result['p50_ms']:,.1f} ms, p99 "
        f"{result['p99_ms']:,.1f} ms; statuses {result['statuses']}"
        + (f", errors {result['errors']}" if result["errors"] else "")
        + f"; load generator CPU {result['cpu_share']:.0%} of a core; loyalty api CPU "
        f"{result['server_cpu_share']:.0%} of a core, {result['server_cpu_ms']:.1f} ms a request"
    )
    return result


def _load_note(result: dict[str, Any]) -> str:
    return (
        f"{result['answered']:,} requests, {result['concurrency']} at a time, statuses "
        f"{result['statuses']}; load generator {result['cpu_share']:.0%} of a core; api "
        f"{result['server_cpu_share']:.0%} of a core, "
        f"{result['server_cpu_ms']:.1f} ms CPU a request"
    )


def http_section(pg: dict[str, str], sizes: Sizes, run: str, tmp: Path) -> list[Row]:
    long_n = sizes.long_history
    say(
        f"\n== http: loyalty api on durable PostgreSQL, {sizes.http_events:,} mixed events, "
        f"a member with {long_n:,} purchases and one with 5"
    )
    env = fresh_database(pg, "bench_http")
    base = tmp / "http-mix.jsonl"
    members = write_mix(base, sizes.http_events, max(10, sizes.http_events // 10), f"{run}h")
    start = datetime.now(UTC) - timedelta(days=10)
    long_file, short_file = tmp / "http-long.jsonl", tmp / "http-short.jsonl"
    write_purchases(long_file, "long", long_n, f"{run}h", start - long_n * LONG_STEP)
    write_purchases(short_file, "short", 5, f"{run}h", start)
    for path, count in ((base, sizes.http_events), (long_file, long_n), (short_file, 5)):
        ingest(path, env, count)
    store_events = sizes.http_events + long_n + 5
    key, entry = new_key("bench", ["events:write", "members:read"])
    rows = []
    with api_process(env, tmp, entry_json(entry)) as (url, pid):
        samples, secs = sizes.http_samples, sizes.http_seconds

        def one_at_a_time(kind: str, member: str) -> dict[str, Any]:
            return load(url, key, kind, [member], samples, 1, secs, pid, f"{run}-{kind}")

        p99: dict[tuple[str, str], float] = {}
        for kind in ("balance", "statement"):
            for member, label in (("short", "5 purchases"), ("long", f"{long_n:,} purchases")):
                result = one_at_a_time(kind, member)
                p99[(kind, member)] = result["p99_ms"]
                rows.append(
                    Row(
                        f"GET {kind} p99, member with {label}",
                        "<",
                        10,
                        "ms",
                        result["p99_ms"],
                        f"{result['answered']:,} requests one at a time, statuses "
                        f"{result['statuses']}",
                    )
                )
            rows.append(
                Row(
                    f"GET {kind} p99, long history / short",
                    "<=",
                    1.5,
                    "x",
                    p99[(kind, "long")] / p99[(kind, "short")] if p99[(kind, "short")] else None,
                    "the same for both",
                )
            )
        metrics = load(url, key, "metrics", [], max(3, samples // 10), 1, secs, pid, run)
        rows.append(
            Row(
                "GET /v1/program/metrics, slowest",
                "<",
                100,
                "ms",
                metrics["max_ms"],
                f"on a store of {store_events:,} events (the issue's is 1,000,000); "
                f"{metrics['answered']} requests, p50 {metrics['p50_ms']:,.0f} ms",
            )
        )
        posted = load(url, key, "post", members, sizes.http_requests, 32, secs, pid, f"{run}-post")
        rows += [
            Row(
                "POST /v1/events, 32 clients",
                ">=",
                2_000,
                "req/s",
                posted["per_second"],
                _load_note(posted),
            ),
            Row("POST /v1/events, 32 clients, p99", "<", 50, "ms", posted["p99_ms"]),
        ]
        got = load(url, key, "balance", members, sizes.http_requests, 32, secs, pid, run)
        rows += [
            Row(
                "GET balance, 32 clients", ">=", 3_000, "req/s", got["per_second"], _load_note(got)
            ),
            Row("GET balance, 32 clients, p99", "<", 20, "ms", got["p99_ms"]),
        ]
    return rows


# ------------------------------------------------------------------------------ main


def _load() -> str:
    """The 1, 5 and 15 minute load averages: other work on the machine skews every figure."""
    return " / ".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="everything small (minutes)")
    parser.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections")
    parser.add_argument("--fast-pg", action="store_true", help="PostgreSQL without fsync")
    for field, help_text in (
        ("events", "pipeline: inbound events end to end"),
        ("members", "pipeline: members"),
        ("naive_events", "pipeline: events through the naive baseline"),
        ("latency_seconds", "pipeline: seconds of each latency run"),
        ("restart_events", "restart: the backlog waiting"),
        ("storage_events", "storage: mixed events per store"),
        ("long_history", "storage, http: purchases of the long-history member"),
        ("ops_events", "ops: N (the tools run at N/2 and N)"),
        ("http_events", "http: mixed events in the API's store"),
        ("http_samples", "http: one-at-a-time requests per latency row"),
        ("http_requests", "http: requests per 32-client phase"),
        ("http_seconds", "http: at most this long per load phase"),
    ):
        kind = float if field == "http_seconds" else int
        parser.add_argument("--" + field.replace("_", "-"), type=kind, help=help_text)
    args = parser.parse_args()
    # SIGTERM unwinds like Ctrl-C, so the servers started here are stopped and removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(chosen) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; known: {', '.join(SECTIONS)}")
    base = QUICK if args.quick else DEFAULT
    sizes = Sizes(
        **{
            name: getattr(args, name) if getattr(args, name) is not None else value
            for name, value in vars(base).items()
        }
    )
    run = str(int(time.time()))
    say(f"bench.targets {'--quick ' if args.quick else ''}sections {','.join(chosen)}; {sizes}")
    say(
        f"{os.cpu_count()} cores, load average {_load()}; PostgreSQL "
        f"{'fsync off' if args.fast_pg else 'durable'}"
    )
    rows: list[Row] = []
    began = time.perf_counter()
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="loyalty-targets-") as folder:
        tmp = Path(folder)
        needs_kafka = {"restart", "pipeline"} & set(chosen)
        needs_pg = needs_kafka | ({"http"} & set(chosen)) or "storage" in chosen
        bootstrap = stack.enter_context(servers.kafka()) if needs_kafka else ""
        pg = stack.enter_context(servers.postgres(durable=not args.fast_pg)) if needs_pg else None
        if bootstrap:
            asyncio.run(create_topics(bootstrap, declared_topics()))
        # Restart first: it runs serve on a fresh store, which reads the topics from the start.
        if "restart" in chosen and pg is not None:
            rows += restart_section(bootstrap, pg, sizes, run)
        if "pipeline" in chosen and pg is not None:
            rows += pipeline_section(bootstrap, pg, sizes, run)
        if "storage" in chosen:
            rows += storage_section(pg, sizes, run, tmp)
        if "ops" in chosen:
            rows += ops_section(sizes, run, tmp)
        if "http" in chosen and pg is not None:
            rows += http_section(pg, sizes, run, tmp)
    say(
        f"\n== issue 11 targets ({time.perf_counter() - began:,.0f} s in all; load average now "
        f"{_load()} on {os.cpu_count()} cores: anything above the core count shares them)\n"
    )
    for line in format_table(rows):
        print(line)


if __name__ == "__main__":
    main()
