"""A Kafka broker and a PostgreSQL server for benchmarks, started by the deploy scripts.

Given ``KAFKA_BOOTSTRAP_SERVERS`` or ``POSTGRES_HOST`` (with the other ``POSTGRES_*``), the
benchmark uses those; otherwise it starts throwaway ones and removes them afterwards.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
POSTGRES_KEYS = ("POSTGRES_HOST", "POSTGRES_PORT", "POSTGRES_USER", "POSTGRES_PASSWORD")


def _exports(stdout: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for line in stdout.splitlines():
        if line.startswith("export ") and "=" in line:
            key, _, value = line.removeprefix("export ").partition("=")
            found[key] = value
    return found


@contextmanager
def kafka() -> Iterator[str]:
    given = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if given:
        yield given
        return
    folder = Path(tempfile.mkdtemp(prefix="loyalty-bench-kafka-"))
    try:
        out = subprocess.run(
            ["bash", str(DEPLOY / "kafka.sh"), "start", str(folder)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        yield _exports(out)["KAFKA_BOOTSTRAP_SERVERS"]
    finally:
        subprocess.run(
            ["bash", str(DEPLOY / "kafka.sh"), "stop", str(folder)],
            check=False,
            capture_output=True,
        )
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def postgres(*, durable: bool = True) -> Iterator[dict[str, str]]:
    """The eventsourcing environment of a PostgreSQL database (durable: fsync on)."""
    if os.environ.get("POSTGRES_HOST"):
        env = {k: v for k, v in os.environ.items() if k.startswith("POSTGRES_")}
        yield {"PERSISTENCE_MODULE": "eventsourcing.postgres", **env}
        return
    folder = Path(tempfile.mkdtemp(prefix="loyalty-bench-pg-", dir="/tmp"))
    folder.chmod(0o755)  # the server runs as the postgres user when started by root
    data = folder / "data"
    script = str(DEPLOY / "postgres.sh")
    try:
        out = subprocess.run(
            ["bash", script, "start", str(data)],
            check=True,
            capture_output=True,
            text=True,
            env={**os.environ, "LOYALTY_PG_DURABLE": "1" if durable else "0"},
        ).stdout
        yield _exports(out)
    finally:
        subprocess.run(["bash", script, "stop", str(data)], check=False, capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)
