"""A Kafka broker for tests: $KAFKA_BOOTSTRAP_SERVERS, or one run by deploy/kafka.sh."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
KAFKA_SH = REPO_ROOT / "deploy" / "kafka.sh"
BOOTSTRAP_ENV_VAR = "KAFKA_BOOTSTRAP_SERVERS"
_SCRIPT_TIMEOUT_S = 600  # the first start may fetch the jars


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
            ["bash", str(KAFKA_SH), "start", str(data_dir)],
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
