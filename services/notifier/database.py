"""The notifier's own database: SQLite (stdlib, the default) or PostgreSQL (psycopg).

The SQL is written once with `?` placeholders and `ON CONFLICT` clauses that both accept;
every value is a bound parameter.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

Row = tuple[Any, ...]


class Database:
    """One connection; `transaction()` yields a function that runs one statement."""

    def __init__(self, url: str) -> None:
        self.url = url
        # One connection shared by every thread of the process (the API's request threads):
        # one transaction at a time.
        self._lock = threading.RLock()
        self.postgres = url.startswith(("postgresql://", "postgres://"))
        if self.postgres:
            import psycopg

            self._pg = psycopg.connect(url, autocommit=True)
        else:
            path = url.removeprefix("sqlite:///")
            if path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._lite = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._lite.execute("PRAGMA journal_mode=WAL")
            self._lite.execute("PRAGMA busy_timeout=10000")

    def close(self) -> None:
        if self.postgres:
            self._pg.close()
        else:
            self._lite.close()

    @contextmanager
    def transaction(self) -> Iterator[Run]:
        with self._lock:
            if self.postgres:
                with self._pg.transaction(), self._pg.cursor() as cursor:
                    yield Run(cursor, postgres=True)
                return
            self._lite.execute("BEGIN IMMEDIATE")
            try:
                yield Run(self._lite.cursor(), postgres=False)
            except BaseException:
                self._lite.execute("ROLLBACK")
                raise
            self._lite.execute("COMMIT")


class Run:
    def __init__(self, cursor: Any, *, postgres: bool) -> None:
        self._cursor = cursor
        self._postgres = postgres

    def __call__(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        if self._postgres:
            sql = sql.replace("?", "%s")
        self._cursor.execute(sql, tuple(params))
        if self._cursor.description is None:
            return []
        return [tuple(row) for row in self._cursor.fetchall()]

    @property
    def rowcount(self) -> int:
        return int(self._cursor.rowcount)
