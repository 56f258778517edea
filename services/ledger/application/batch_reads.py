"""Reads many aggregates' stored events in one query, for the batch hot path.

eventsourcing's recorders read one aggregate at a time. Looking up the receipts of a batch
of 500 events that way costs 500 round trips; here it is one query per store. Recorders
without a bulk form (the in-memory one) fall back to one read per aggregate.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection
from typing import Any
from uuid import UUID

from eventsourcing.persistence import AggregateRecorder, StoredEvent
from eventsourcing.postgres import PostgresAggregateRecorder
from eventsourcing.sqlite import SQLiteAggregateRecorder
from psycopg.sql import SQL, Identifier

SQLITE_CHUNK = 500  # well under SQLite's limit on bound parameters


def select_events_of(
    recorder: AggregateRecorder, ids: Collection[UUID]
) -> dict[UUID, list[StoredEvent]]:
    """Every stored event of each aggregate in `ids`, in version order; absent ids are left out."""
    found: dict[UUID, list[StoredEvent]] = defaultdict(list)
    if not ids:
        return found
    if isinstance(recorder, PostgresAggregateRecorder):
        _postgres(recorder, list(ids), found)
    elif isinstance(recorder, SQLiteAggregateRecorder):
        _sqlite(recorder, list(ids), found)
    else:
        for aggregate_id in ids:
            events = list(recorder.select_events(aggregate_id))
            if events:
                found[aggregate_id] = events
    return found


def _postgres(
    recorder: PostgresAggregateRecorder, ids: list[UUID], found: dict[UUID, list[StoredEvent]]
) -> None:
    statement = SQL(
        "SELECT originator_id, originator_version, topic, state FROM {table} "
        "WHERE originator_id = ANY(%s) ORDER BY originator_id, originator_version"
    ).format(table=Identifier(*recorder.events_table_name.split(".")))
    with recorder.datastore.get_connection() as conn, conn.cursor() as curs:
        curs.execute(statement, [ids])
        for row in curs.fetchall():
            record: Any = row
            found[record["originator_id"]].append(
                StoredEvent(
                    originator_id=record["originator_id"],
                    originator_version=record["originator_version"],
                    topic=record["topic"],
                    state=bytes(record["state"]),
                )
            )


def _sqlite(
    recorder: SQLiteAggregateRecorder, ids: list[UUID], found: dict[UUID, list[StoredEvent]]
) -> None:
    by_hex = {aggregate_id.hex: aggregate_id for aggregate_id in ids}
    hexes = list(by_hex)
    with recorder.datastore.transaction(commit=False) as cursor:
        for start in range(0, len(hexes), SQLITE_CHUNK):
            chunk = hexes[start : start + SQLITE_CHUNK]
            marks = ",".join("?" * len(chunk))
            cursor.execute(
                f"SELECT originator_id, originator_version, topic, state "  # noqa: S608
                f"FROM {recorder.events_table_name} WHERE originator_id IN ({marks}) "
                "ORDER BY originator_id, originator_version",
                chunk,
            )
            for row in cursor.fetchall():
                aggregate_id = by_hex[row["originator_id"]]
                found[aggregate_id].append(
                    StoredEvent(
                        originator_id=aggregate_id,
                        originator_version=row["originator_version"],
                        topic=row["topic"],
                        state=row["state"],
                    )
                )
