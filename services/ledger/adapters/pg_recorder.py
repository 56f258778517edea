"""The PostgreSQL process recorder the ledger uses: the library's, with an insert that does
not use psycopg's pipeline mode.

Root cause of the hang docs/performance.md used to report (one insert of more than about
4,100 stored events never returned): the library's `insert_events` sends its statements
in psycopg's pipeline mode, and psycopg's `pipeline_communicate` generator (psycopg 3.3.9,
both its C and Python implementations; unchanged upstream) calls `PQflush()` once per
write-ready wake-up and ignores its result. When one message (the insert's array of
stored events, several MB) is larger than the socket takes at once, `PQflush()` returns 1
with the rest still in libpq's output buffer, psycopg moves on to wait for results, and the
server waits for the rest of the message (`ClientRead`): neither side moves again.
Reproduced standalone with a bare `INSERT ... SELECT unnest(%s)` of 8,000 rows of 1.5 KB
in a pipeline; a generator that waits for write readiness until `PQflush()` returns 0
fixes it; so does leaving pipeline mode out, which this recorder does. The statements are
the library's own (tracking row, table lock, notify, insert returning the notification
ids), in one transaction, so the notification log keeps its ordering guarantee; the few
extra round trips cost microseconds on a batch of thousands.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from eventsourcing.persistence import InterfaceError, OperationalError, StoredEvent
from eventsourcing.postgres import PostgresProcessRecorder
from eventsourcing.utils import retry


class LedgerPostgresProcessRecorder(PostgresProcessRecorder):
    @retry((InterfaceError, OperationalError), max_attempts=10, wait=0.2)
    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        with (
            self.datastore.get_connection() as conn,
            conn.transaction(),
            conn.cursor() as curs,
        ):
            self._insert_events(curs, stored_events, **kwargs)  # the tracking row
            if not stored_events:
                return None
            self._insert_stored_events(curs, stored_events, **kwargs)  # lock, notify, insert
            return self._fetch_ids_after_insert_events(curs, stored_events, **kwargs)
