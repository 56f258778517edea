"""deploy/compose.yaml is a valid Compose file (checked as `docker compose config` does,
with compose-go, since this machine has no Docker engine) and runs the broker version the
tests run."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
CHECK = DEPLOY / "compose-check.sh"

pytestmark = pytest.mark.integration


def _check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(CHECK), str(path)], check=False, capture_output=True, text=True, timeout=600
    )


def test_the_compose_file_is_valid_and_runs_the_tested_broker() -> None:
    done = _check(DEPLOY / "compose.yaml")
    assert done.returncode == 0, done.stderr
    resolved = yaml.safe_load(done.stdout)
    assert set(resolved["services"]) == {"kafka", "postgres", "topics"}
    version = re.search(r"KAFKA_VERSION:-([0-9.]+)", (DEPLOY / "kafka.sh").read_text())
    assert version is not None
    assert resolved["services"]["kafka"]["image"] == f"apache/kafka:{version.group(1)}"
    ports = resolved["services"]["kafka"]["ports"]
    assert [(p["host_ip"], p["published"], p["target"]) for p in ports] == [
        ("127.0.0.1", "9092", 9092)
    ]


def test_an_invalid_compose_file_is_refused_with_the_reason(tmp_path: Path) -> None:
    broken = tmp_path / "compose.yaml"
    text = (DEPLOY / "compose.yaml").read_text()
    broken.write_text(text.replace("    healthcheck:", "    health_check:", 1))
    done = _check(broken)
    assert done.returncode != 0
    assert "health_check" in done.stderr
