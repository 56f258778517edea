"""Offline dependency audit: the packages pinned in uv.lock against the advisories the
`safety-db` package ships (PyUp's free database, last published July 2021).

    python scripts/audit_offline.py uv.lock [--db insecure_full.json]

Exit status: 0 nothing found, 1 vulnerable packages found. Run by scripts/audit when the
current database (OSV) cannot be reached.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import sys
import tomllib
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def locked_packages(lock: Path) -> dict[str, str]:
    """name -> version of every package uv.lock pins (the project itself has no version
    from a registry and is left out when it is `editable`/`virtual`)."""
    data = tomllib.loads(lock.read_text())
    found: dict[str, str] = {}
    for package in data.get("package", []):
        source = package.get("source", {})
        if "registry" not in source or "version" not in package:
            continue
        found[canonical(package["name"])] = package["version"]
    return found


def findings(
    packages: Mapping[str, str], advisories: Mapping[str, Any]
) -> Iterable[tuple[str, str, dict[str, Any]]]:
    """(package, version, advisory) for each advisory whose ranges hold the pinned version."""
    by_name = {canonical(k): v for k, v in advisories.items() if not k.startswith("$")}
    for name, version in sorted(packages.items()):
        try:
            pinned = Version(version)
        except InvalidVersion:
            continue
        for advisory in by_name.get(name, []):
            for spec in advisory.get("specs") or [advisory.get("v", "")]:
                try:
                    if pinned in SpecifierSet(spec, prereleases=True):
                        yield name, version, advisory
                        break
                except InvalidSpecifier:
                    continue


def _default_db() -> Path:
    """The data file of the installed safety-db (found, not imported: its __init__ opens a
    path relative to the working directory)."""
    spec = importlib.util.find_spec("safety_db")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("safety-db is not installed (scripts/audit installs it)")
    return Path(next(iter(spec.submodule_search_locations))) / "insecure_full.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("lock", type=Path)
    parser.add_argument("--db", type=Path, default=None)
    args = parser.parse_args(argv)
    db_path = args.db or _default_db()
    advisories = json.loads(db_path.read_text())
    stamp = advisories.get("$meta", {}).get("timestamp")
    as_of = datetime.fromtimestamp(stamp, UTC).date().isoformat() if stamp else "unknown"
    packages = locked_packages(args.lock)
    found = list(findings(packages, advisories))
    lines = [
        f"offline audit of {len(packages)} locked packages against safety-db advisories as of "
        f"{as_of}: advisories published since then are NOT checked"
    ]
    for name, version, advisory in found:
        ident = advisory.get("cve") or advisory.get("id")
        text = str(advisory.get("advisory", ""))[:200]
        lines.append(f"{name} {version}: {ident} ({advisory.get('v')}): {text}")
    lines.append(f"{len(found)} known vulnerabilities found")
    sys.stdout.write("\n".join(lines) + "\n")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
