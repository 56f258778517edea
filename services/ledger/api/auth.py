"""API keys with scopes, stored hashed (SHA-256 of the key), configured by file or environment.

`LOYALTY_API_KEYS` holds JSON, or `LOYALTY_API_KEYS_FILE` names a JSON file, of the form
`[{"name": "checkout", "scopes": ["events:write", "members:read"], "sha256": "<hex>"}]`;
an entry may carry its own `"rate_limit"` (e.g. `"200/second"`, the `limits` notation)
instead of `LOYALTY_API_RATE_LIMIT`.
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
from typing import Annotated

from limits import parse_many
from pydantic import AfterValidator, BaseModel, Field, TypeAdapter

SCOPES = ("events:write", "members:read", "members:write", "ops:what-if", "ops:write")


def _known_scopes(scopes: list[str]) -> list[str]:
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown:
        raise ValueError(f"unknown scopes {unknown}; known: {', '.join(SCOPES)}")
    return scopes


def _rate(text: str | None) -> str | None:
    if text is not None:
        try:
            parse_many(text)
        except ValueError as exc:
            raise ValueError(f"{exc} (e.g. 200/second or 50/second;2000/minute)") from None
    return text


class KeyEntry(BaseModel):
    name: str = Field(min_length=1, max_length=64)
    scopes: Annotated[list[str], AfterValidator(_known_scopes)]
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    rate_limit: Annotated[str | None, AfterValidator(_rate)] = Field(
        default=None, max_length=200, description="this key's rate; default the server's"
    )


def _distinct_keys(entries: list[KeyEntry]) -> list[KeyEntry]:
    """Two entries for one key would leave which one answers to chance (the last won)."""
    seen: dict[str, str] = {}
    for entry in entries:
        if entry.sha256 in seen:
            raise ValueError(
                f"the entries {seen[entry.sha256]!r} and {entry.name!r} have the same sha256 "
                "(one key twice); give each key one entry"
            )
        seen[entry.sha256] = entry.name
    return entries


_ENTRIES = TypeAdapter(Annotated[list[KeyEntry], AfterValidator(_distinct_keys)])


@dataclass(frozen=True, slots=True)
class Principal:
    """Who called: the key's name is the actor recorded on every ops write."""

    name: str
    scopes: frozenset[str]
    rate_limit: str | None = None  # its own rate, else LOYALTY_API_RATE_LIMIT


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key(name: str, scopes: list[str]) -> tuple[str, KeyEntry]:
    _known_scopes(scopes)
    key = "lk_" + secrets.token_urlsafe(32)
    return key, KeyEntry(name=name, scopes=sorted(scopes), sha256=digest(key))


class KeyStore:
    """Entries are checked as they load: a scope not in `SCOPES` or one key (sha256) in two
    entries is an error, so `loyalty api` stops with the reason instead of starting with
    a key that silently grants nothing or a duplicate that shadows another."""

    def __init__(self, entries: list[KeyEntry]) -> None:
        entries = _ENTRIES.validate_python(entries)
        self._entries = [
            (e.sha256, Principal(e.name, frozenset(e.scopes), e.rate_limit)) for e in entries
        ]

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
    return json.dumps(entry.model_dump(exclude_none=True))
