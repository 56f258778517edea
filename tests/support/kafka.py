"""A Kafka broker for tests: $KAFKA_BOOTSTRAP_SERVERS, or one run by deploy/kafka.sh."""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
KAFKA_SH = REPO_ROOT / "deploy" / "kafka.sh"
BOOTSTRAP_ENV_VAR = "KAFKA_BOOTSTRAP_SERVERS"
_SCRIPT_TIMEOUT_S = 600  # the first start may fetch the jars
_PORT_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def ephemeral_ports() -> range:
    """The ports Linux gives outgoing connections (32768-60999 unless configured)."""
    try:
        low, high = (int(n) for n in _PORT_RANGE.read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    return range(low, high + 1)


def broker_port() -> int:
    """A free loopback port below the ephemeral range: a client retrying a connection to a
    port inside it can connect to itself and hold the port, so the broker cannot restart."""
    top = max(ephemeral_ports().start, 10001)
    for _ in range(200):
        port = random.randrange(10000, top)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port below the ephemeral range")


@contextmanager
def kafka_broker_for_tests(*, private: bool = False) -> Iterator[str]:
    """Yield bootstrap servers; a throwaway broker is stopped and deleted afterwards.

    `private` always starts a broker of its own, so heavy tests leave the shared one's
    topics small for the others."""
    given = os.environ.get(BOOTSTRAP_ENV_VAR)
    if given and not private:
        yield given
        return
    data_dir = Path(tempfile.mkdtemp(prefix="loyalty-kafka-"))
    try:
        started = subprocess.run(
            ["bash", str(KAFKA_SH), "start", str(data_dir), str(broker_port()), str(broker_port())],
            check=True,
            capture_output=True,
            text=True,
            timeout=_SCRIPT_TIMEOUT_S,
        )
        line = started.stdout.strip().splitlines()[-1]
        bootstrap = line.removeprefix(f"export {BOOTSTRAP_ENV_VAR}=")
        yield bootstrap
    finally:
        subprocess.run(
            ["bash", str(KAFKA_SH), "stop", str(data_dir)],
            check=False,
            capture_output=True,
            timeout=_SCRIPT_TIMEOUT_S,
        )
        shutil.rmtree(data_dir, ignore_errors=True)
