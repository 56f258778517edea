"""Exports the event models as JSON Schema files, so producers can validate offline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Final

from pydantic import TypeAdapter

from schemas.inbound import MODEL_BY_TYPE, InboundEvent
from schemas.outbound import LedgerEntry, MemberBalance, TierStatus

SCHEMA_DIR: Final = Path(__file__).resolve().parent / "json"
JSON_SCHEMA_DIALECT: Final = "https://json-schema.org/draft/2020-12/schema"

SCHEMA_SOURCES: dict[str, Any] = {
    **{f"{event_type}.json": model for event_type, model in MODEL_BY_TYPE.items()},
    "inbound-event.json": InboundEvent,
    "ledger-entry.json": LedgerEntry,
    "member-balance.json": MemberBalance,
    "tier-status.json": TierStatus,
}
"""File name -> model class (or annotated type, such as the ``InboundEvent`` union) to export.

Add an entry here to export another model; ``tests/unit/test_schema_files.py`` then asks for
the file to be generated.
"""

_TITLES: Final = {"inbound-event.json": "InboundEvent"}


def json_schemas() -> dict[str, dict[str, Any]]:
    """File name -> JSON Schema (validation mode) of every exported model."""
    schemas: dict[str, dict[str, Any]] = {}
    for name, source in SCHEMA_SOURCES.items():
        schema = TypeAdapter(source).json_schema()
        if name in _TITLES:
            schema.setdefault("title", _TITLES[name])
        schemas[name] = {"$schema": JSON_SCHEMA_DIALECT, **schema}
    return schemas


def render(schema: dict[str, Any]) -> str:
    """The exact text committed for one schema."""
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write(directory: Path, *, prune: bool = False) -> list[Path]:
    """Write every schema into ``directory``; with ``prune``, delete other ``*.json`` there."""
    directory.mkdir(parents=True, exist_ok=True)
    schemas = json_schemas()
    written: list[Path] = []
    for name, schema in schemas.items():
        path = directory / name
        path.write_text(render(schema), encoding="utf-8", newline="\n")
        written.append(path)
    if prune:
        for stale in directory.glob("*.json"):
            if stale.name not in schemas:
                stale.unlink()
    return written


def main() -> None:
    """Regenerate schemas/json/, removing files of models no longer exported."""
    for path in write(SCHEMA_DIR, prune=True):
        print(path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path)  # noqa: T201


if __name__ == "__main__":
    main()
