"""A bounded HTTP load generator: a fixed number of requests at a fixed concurrency.

Run: uv run python -m bench.load --url http://127.0.0.1:8000 --key KEY --kind balance \
        --members m-1 m-2 --requests 2000 --concurrency 32

Each of `concurrency` workers keeps one HTTP/1.1 keep-alive connection and sends its share
of the requests one after another; the latency of each is from writing the request to
reading the whole response. It speaks HTTP/1.1 over asyncio streams itself (a few lines,
tens of microseconds a request) rather than through httpx, so that it stays far from being
the bottleneck on a 2-core machine; it prints its own CPU time, so a reader can check.
The last line of output is JSON (what bench.targets reads).

Kinds: `post` POSTs purchases to /v1/events (event ids `<run>-<i>`, members cycled);
`balance`, `statement` GET those members' routes; `metrics` GETs /v1/program/metrics.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, urlsplit


def purchase(run: str, i: int, member: str, at: datetime) -> bytes:
    return json.dumps(
        {
            "event_id": f"{run}-{i}",
            "type": "purchase.completed",
            "occurred_at": at.isoformat().replace("+00:00", "Z"),
            "member_id": member,
            "data": {"order_id": f"{run}-o{i}", "currency": "USD", "total_minor": 1999},
        }
    ).encode()


def requests_of(
    kind: str, members: list[str], count: int, run: str, host: str, key: str
) -> list[bytes]:
    """Every request, encoded, before the clock starts (so building them is not timed)."""
    head = f"Host: {host}\r\nX-API-Key: {key}\r\nConnection: keep-alive\r\n"
    at = datetime.now(UTC) - timedelta(hours=1)
    out = []
    for i in range(count):
        member = quote(members[i % len(members)], safe="") if members else ""
        if kind == "post":
            body = purchase(run, i, members[i % len(members)], at + timedelta(milliseconds=i))
            out.append(
                (
                    f"POST /v1/events HTTP/1.1\r\n{head}Content-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n"
                ).encode()
                + body
            )
        else:
            path = {
                "balance": f"/v1/members/{member}/balance",
                "statement": f"/v1/members/{member}/statement",
                "metrics": "/v1/program/metrics",
            }[kind]
            out.append(f"GET {path} HTTP/1.1\r\n{head}\r\n".encode())
    return out


async def _response(reader: asyncio.StreamReader) -> int:
    """Read one response; its status."""
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("connection closed by the server")
    status = int(status_line.split()[1])
    length = 0
    chunked = False
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        lowered = name.strip().lower()
        if lowered == "content-length":
            length = int(value)
        elif lowered == "transfer-encoding" and "chunked" in value.lower():
            chunked = True
    if chunked:
        while True:
            size = int((await reader.readline()).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length:
        await reader.readexactly(length)
    return status


async def run_load(
    url: str, encoded: list[bytes], concurrency: int, max_seconds: float = 0.0
) -> dict[str, Any]:
    """Send `encoded` over `concurrency` connections; after `max_seconds` (0: no limit) no
    new request starts, and the result counts the ones answered."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    queue = list(reversed(encoded))
    waits: list[float] = []
    statuses: Counter[int] = Counter()
    errors: Counter[str] = Counter()

    async def worker() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while queue and (not deadline or time.perf_counter() < deadline):
                request = queue.pop()
                began = time.perf_counter()
                try:
                    writer.write(request)
                    status = await _response(reader)
                except (ConnectionError, asyncio.IncompleteReadError, ValueError) as exc:
                    errors[type(exc).__name__] += 1
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, port)
                    continue
                waits.append(time.perf_counter() - began)
                statuses[status] += 1
        finally:
            writer.close()

    cpu_before = time.process_time()
    began = time.perf_counter()
    deadline = began + max_seconds if max_seconds else 0.0
    await asyncio.gather(*(worker() for _ in range(min(concurrency, len(encoded)))))
    seconds = time.perf_counter() - began
    cpu = time.process_time() - cpu_before
    ms = sorted(w * 1000 for w in waits)

    def pct(fraction: float) -> float:
        return ms[min(len(ms) - 1, int(len(ms) * fraction))] if ms else 0.0

    return {
        "requests": len(encoded),
        "answered": len(ms),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "errors": dict(errors),
        "concurrency": concurrency,
        "seconds": seconds,
        "per_second": len(ms) / seconds if seconds else 0.0,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "max_ms": ms[-1] if ms else 0.0,
        "cpu_seconds": cpu,
        "cpu_share": cpu / seconds if seconds else 0.0,
        "max_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--kind", choices=["post", "balance", "statement", "metrics"])
    parser.add_argument("--members", nargs="*", default=[])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--max-seconds", type=float, default=0.0, help="0: no limit")
    parser.add_argument("--warmup", type=int, default=20, help="untimed requests first")
    parser.add_argument("--run", default=str(time.time_ns()), help="event id prefix (post)")
    args = parser.parse_args()
    host = urlsplit(args.url).netloc
    if args.warmup:
        warm = requests_of(args.kind, args.members, args.warmup, f"{args.run}w", host, args.key)
        asyncio.run(run_load(args.url, warm, min(args.concurrency, args.warmup), args.max_seconds))
    encoded = requests_of(args.kind, args.members, args.requests, args.run, host, args.key)
    result = asyncio.run(run_load(args.url, encoded, args.concurrency, args.max_seconds))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
