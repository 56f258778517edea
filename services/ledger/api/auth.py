"""API keys with scopes, stored hashed (SHA-256 of the key), configured by file or environment.

`LOYALTY_API_KEYS` holds JSON, or `LOYALTY_API_KEYS_FILE` names a JSON file, of the form
`[{"name": "checkout", "scopes": ["events:write", "members:read"], "sha256": "<hex>"}]`.
`loyalty api-key NAME --scope ...` makes a new key and prints its entry.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, Field, TypeAdapter

SCOPES = ("events:write", "members:read", "members:write", "ops:what-if", "ops:write")


class KeyEntry(BaseModel):
    name: str = Field(min_length=1, max_length=64)
    scopes: list[str]
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


_ENTRIES = TypeAdapter(list[KeyEntry])


@dataclass(frozen=True, slots=True)
class Principal:
    """Who called: the key's name is the actor recorded on every ops write."""

    name: str
    scopes: frozenset[str]


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key(name: str, scopes: list[str]) -> tuple[str, KeyEntry]:
    unknown = set(scopes) - set(SCOPES)
    if unknown:
        raise ValueError(f"unknown scopes {sorted(unknown)}; known: {', '.join(SCOPES)}")
    key = "lk_" + secrets.token_urlsafe(32)
    return key, KeyEntry(name=name, scopes=sorted(scopes), sha256=digest(key))


class KeyStore:
    def __init__(self, entries: list[KeyEntry]) -> None:
        self._entries = [(e.sha256, Principal(e.name, frozenset(e.scopes))) for e in entries]

    def names(self) -> list[str]:
        return [principal.name for _, principal in self._entries]

    def authenticate(self, key: str) -> Principal | None:
        presented = digest(key)
        found = None
        for stored, principal in self._entries:  # compare every entry: constant time
            if hmac.compare_digest(stored, presented):
                found = principal
        return found

    @classmethod
    def from_json(cls, text: str) -> KeyStore:
        return cls(_ENTRIES.validate_json(text))

    @classmethod
    def from_environment(cls) -> KeyStore:
        text = os.environ.get("LOYALTY_API_KEYS")
        if text:
            return cls.from_json(text)
        path = os.environ.get("LOYALTY_API_KEYS_FILE")
        if path:
            return cls.from_json(Path(path).read_text(encoding="utf-8"))
        return cls([])


def entry_json(entry: KeyEntry) -> str:
    return json.dumps(entry.model_dump())
