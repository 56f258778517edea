"""Loads a program file (YAML), with errors that name the field and the problem."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from services.ledger.domain.program import Program


class ProgramFileError(ValueError):
    """The program file cannot be used; the message lists every problem found."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader that refuses duplicate keys instead of silently keeping the last."""


def _mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            mark = key_node.start_mark
            raise ProgramFileError(
                f"line {mark.line + 1}: duplicate key {key!r} (each key may appear once)"
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def parse_program(text: str, *, name: str = "program") -> Program:
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - safe loader subclass
    except yaml.YAMLError as exc:
        raise ProgramFileError(f"{name}: not valid YAML: {exc}") from exc
    except ProgramFileError as exc:
        raise ProgramFileError(f"{name}: {exc}") from None
    if not isinstance(data, dict):
        raise ProgramFileError(f"{name}: expected a mapping of program settings at the top")
    try:
        return Program.model_validate(data)
    except ValidationError as exc:
        problems = [
            f"{'.'.join(str(p) for p in err['loc']) or '(top)'}: {err['msg']}"
            for err in exc.errors()
        ]
        raise ProgramFileError(f"{name}: invalid program:\n  " + "\n  ".join(problems)) from None


def load_program(path: Path) -> Program:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ProgramFileError(f"cannot read program file {path}: {exc.strerror}") from exc
    return parse_program(text, name=str(path))
