"""Creating the store's tables when several processes start on a fresh database at once."""

from __future__ import annotations

import random
import sqlite3
import time
from collections.abc import Callable
from typing import TypeVar

from eventsourcing.persistence import PersistenceError

T = TypeVar("T")


def created_concurrently(make: Callable[[], T], attempts: int = 20) -> T:
    """Run `make` (which creates tables "IF NOT EXISTS"), again if another process created
    the same tables at the same moment. PostgreSQL then fails the loser in one of several
    ways (a unique violation on its catalogue, "type already exists", "tuple concurrently
    updated"); SQLite says "database is locked", and a first connection switching a new file
    to WAL mode raises sqlite3's own OperationalError. The next attempt finds the tables."""
    for attempt in range(attempts):
        try:
            return make()
        except (PersistenceError, sqlite3.OperationalError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.05 * (attempt + 1) + random.uniform(0, 0.05))  # noqa: S311
    raise AssertionError("unreachable")  # pragma: no cover
