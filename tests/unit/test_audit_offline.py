"""scripts/audit's offline half: pinned versions from uv.lock against shipped advisories."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "audit_offline", REPO / "scripts/audit_offline.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


LOCK = """
version = 1
[[package]]
name = "Jinja2"
version = "2.10"
source = { registry = "https://pypi.org/simple" }
[[package]]
name = "aiokafka"
version = "0.14.0"
source = { registry = "https://pypi.org/simple" }
[[package]]
name = "loyalty"
version = "0.2.0"
source = { editable = "." }
"""

DB = {
    "$meta": {"advisory": "test", "timestamp": 1625119202},
    "jinja2": [
        {"id": "pyup.io-1", "cve": "CVE-2019-10906", "v": "<2.10.1", "specs": ["<2.10.1"]},
        {"id": "pyup.io-2", "cve": None, "v": "<2.7.2", "specs": ["<2.7.2"]},
    ],
    "aiokafka": [{"id": "pyup.io-3", "cve": None, "v": "<0.5", "specs": ["<0.5"]}],
}


def test_pinned_versions_inside_an_advisorys_range_are_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    audit = _script()
    lock, db = tmp_path / "uv.lock", tmp_path / "db.json"
    lock.write_text(LOCK)
    db.write_text(json.dumps(DB))
    assert audit.locked_packages(lock) == {"jinja2": "2.10", "aiokafka": "0.14.0"}
    assert audit.main([str(lock), "--db", str(db)]) == 1
    out = capsys.readouterr().out
    assert "as of 2021-07-01" in out
    assert "jinja2 2.10: CVE-2019-10906" in out
    assert "pyup.io-2" not in out
    assert "aiokafka" not in out
    lock.write_text(LOCK.replace('"2.10"', '"2.11.3"'))
    assert audit.main([str(lock), "--db", str(db)]) == 0


def test_the_projects_lock_file_is_read() -> None:
    packages = _script().locked_packages(REPO / "uv.lock")
    assert {"aiokafka", "fastapi", "pydantic", "eventsourcing"} <= set(packages)
