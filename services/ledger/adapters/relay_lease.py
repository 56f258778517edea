"""Which relay publishes: one leader per ledger store, the others stand by.

Two `loyalty serve` processes on one store would otherwise both publish every entry
(correct, since consumers drop repeats by position, but twice the traffic). The lease is
held by the store itself, so it needs nothing else and dies with its holder:

- PostgreSQL: a session advisory lock on a connection of the relay's own; a killed process
  closes its session and PostgreSQL releases the lock at once;
- SQLite: an exclusive ``flock`` on a file beside the database; the kernel releases it
  when the process dies;
- in memory: one process by definition, so always the leader.

A leader that lost its lease (its connection dropped) may publish one more batch before it
notices: repeats with the same positions, never a gap.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
from pathlib import Path
from typing import Any, Protocol

import psycopg
from eventsourcing.persistence import Recorder
from eventsourcing.postgres import PostgresAggregateRecorder
from eventsourcing.sqlite import SQLiteAggregateRecorder

log = logging.getLogger(__name__)


class RelayLease(Protocol):
    def acquire(self) -> bool:
        """Take the lease if free (or keep it); True while this process holds it."""
        ...

    def release(self) -> None: ...


class AlwaysLeader:
    def acquire(self) -> bool:
        return True

    def release(self) -> None:
        return None


def _lock_key(name: str) -> int:
    digest = hashlib.sha256(f"loyalty-relay:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class PostgresLease:
    def __init__(self, connect_kwargs: dict[str, Any], name: str) -> None:
        self.kwargs = {k: v for k, v in connect_kwargs.items() if k != "row_factory"}
        self.key = _lock_key(name)
        self._conn: psycopg.Connection[Any] | None = None
        self._held = False

    def acquire(self) -> bool:
        try:
            if self._conn is None or self._conn.closed:
                self._held = False
                self._conn = psycopg.connect(**self.kwargs, autocommit=True, connect_timeout=5)
            if self._held:
                self._conn.execute("SELECT 1")  # still our session, so still our lock
            else:
                row = self._conn.execute("SELECT pg_try_advisory_lock(%s)", (self.key,)).fetchone()
                self._held = bool(row and row[0])
        except psycopg.Error as exc:
            if self._held:
                log.warning("relay lease lost (%s)", exc)
            self._held = False
            self._close()
        return self._held

    def release(self) -> None:
        self._held = False
        self._close()

    def _close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
        self._conn = None


class FileLease:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> bool:
        if self._fd is not None:
            return True
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the lock
            self._fd = None


def lease_for(recorder: Recorder) -> RelayLease:
    """The lease that fits the ledger's store."""
    if isinstance(recorder, PostgresAggregateRecorder):
        kwargs = recorder.datastore.pool.kwargs
        if callable(kwargs):  # psycopg_pool also accepts a function giving them
            kwargs = kwargs()
        return PostgresLease(dict(kwargs or {}), recorder.events_table_name)
    if isinstance(recorder, SQLiteAggregateRecorder):
        name = str(recorder.datastore.pool.db_name)
        if name and ":memory:" not in name and "mode=memory" not in name:
            return FileLease(Path(f"{name}.relay.lock"))
    return AlwaysLeader()
