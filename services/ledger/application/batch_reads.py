"""Reads many aggregates' stored events in one query, for the batch hot path.

eventsourcing's recorders read one aggregate at a time. Looking up the receipts of a batch
of 500 events that way costs 500 round trips; here it is one query per store. Recorders
without a bulk form (the in-memory one) fall back to one read per aggregate.

`select_events_after` reads what was stored after given versions: how a process brings its
cached copies of many aggregates up to the store in one query per batch.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Mapping
from typing import Any
from uuid import UUID

from eventsourcing.persistence import AggregateRecorder, ApplicationRecorder, StoredEvent
from eventsourcing.popo import POPOApplicationRecorder
from eventsourcing.postgres import PostgresAggregateRecorder, PostgresApplicationRecorder
from eventsourcing.sqlite import SQLiteAggregateRecorder, SQLiteApplicationRecorder
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
            found[record["originator_id"]].append(_stored(record["originator_id"], record))


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
                found[aggregate_id].append(_stored(aggregate_id, row))


def select_events_after(
    recorder: AggregateRecorder, versions: Mapping[UUID, int], limit: int
) -> dict[UUID, list[StoredEvent]]:
    """The stored events of each aggregate in `versions` that come after its given version,
    at most `limit` of them (versions v+1 .. v+limit), in version order; aggregates with
    nothing newer are left out. One query (per SQLITE_CHUNK aggregates on SQLite) of one
    primary-key probe per aggregate: an aggregate that is up to date costs the same however
    long its history."""
    found: dict[UUID, list[StoredEvent]] = defaultdict(list)
    if not versions or limit <= 0:
        return found
    if isinstance(recorder, PostgresAggregateRecorder):
        _postgres_after(recorder, versions, limit, found)
    elif isinstance(recorder, SQLiteAggregateRecorder):
        _sqlite_after(recorder, versions, limit, found)
    else:
        for aggregate_id, version in versions.items():
            events = list(recorder.select_events(aggregate_id, gt=version, limit=limit))
            if events:
                found[aggregate_id] = events
    return found


def _postgres_after(
    recorder: PostgresAggregateRecorder,
    versions: Mapping[UUID, int],
    limit: int,
    found: dict[UUID, list[StoredEvent]],
) -> None:
    # LATERAL with a LIMIT: an index probe per aggregate, never a scan of the table (a plain
    # join of the same condition may be planned as a hash join over every stored event).
    statement = SQL(
        "SELECT e.originator_id, e.originator_version, e.topic, e.state "
        "FROM unnest(%s::uuid[], %s::bigint[]) AS c(id, version) "
        "CROSS JOIN LATERAL (SELECT originator_id, originator_version, topic, state "
        "FROM {table} WHERE originator_id = c.id AND originator_version > c.version "
        "ORDER BY originator_version LIMIT %s) AS e "
        "ORDER BY e.originator_id, e.originator_version"
    ).format(table=Identifier(*recorder.events_table_name.split(".")))
    with recorder.datastore.get_connection() as conn, conn.cursor() as curs:
        curs.execute(statement, [list(versions), list(versions.values()), limit])
        for row in curs.fetchall():
            record: Any = row
            found[record["originator_id"]].append(_stored(record["originator_id"], record))


def _sqlite_after(
    recorder: SQLiteAggregateRecorder,
    versions: Mapping[UUID, int],
    limit: int,
    found: dict[UUID, list[StoredEvent]],
) -> None:
    by_hex = {aggregate_id.hex: aggregate_id for aggregate_id in versions}
    pairs = [(aggregate_id.hex, version) for aggregate_id, version in versions.items()]
    with recorder.datastore.transaction(commit=False) as cursor:
        for start in range(0, len(pairs), SQLITE_CHUNK):
            chunk = pairs[start : start + SQLITE_CHUNK]
            rows = ",".join(["(?, ?)"] * len(chunk))
            # Versions have no gaps: v+1 .. v+limit is a range on the primary key.
            cursor.execute(
                f"WITH c(id, version) AS (VALUES {rows}) "  # noqa: S608
                "SELECT e.originator_id, e.originator_version, e.topic, e.state "
                f"FROM c JOIN {recorder.events_table_name} e ON e.originator_id = c.id "
                "AND e.originator_version > c.version AND e.originator_version <= c.version + ? "
                "ORDER BY e.originator_id, e.originator_version",
                [*(value for pair in chunk for value in pair), limit],
            )
            for row in cursor.fetchall():
                aggregate_id = by_hex[row["originator_id"]]
                found[aggregate_id].append(_stored(aggregate_id, row))


def _stored(aggregate_id: UUID, row: Any) -> StoredEvent:
    """One selected row (PostgreSQL or SQLite) as the library's stored event."""
    return StoredEvent(
        originator_id=aggregate_id,
        originator_version=row["originator_version"],
        topic=row["topic"],
        state=bytes(row["state"]),
    )


def select_positioned(
    recorder: ApplicationRecorder, ids: Collection[UUID]
) -> list[tuple[int, StoredEvent]]:
    """Every stored event of the aggregates in `ids` with its notification id, in notification
    (recording) order: a few aggregates' histories interleaved as they were recorded, read by
    their primary key, so the cost is theirs, whatever the size of the store."""
    found: list[tuple[int, StoredEvent]] = []
    if not ids:
        return found
    if isinstance(recorder, PostgresApplicationRecorder):
        statement = SQL(
            "SELECT notification_id, originator_id, originator_version, topic, state "
            "FROM {table} WHERE originator_id = ANY(%s)"
        ).format(table=Identifier(*recorder.events_table_name.split(".")))
        with recorder.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(statement, [list(ids)])
            for row in curs.fetchall():
                record: Any = row
                stored = _stored(record["originator_id"], record)
                found.append((record["notification_id"], stored))
    elif isinstance(recorder, SQLiteApplicationRecorder):
        by_hex = {aggregate_id.hex: aggregate_id for aggregate_id in ids}
        hexes = list(by_hex)
        with recorder.datastore.transaction(commit=False) as cursor:
            for start in range(0, len(hexes), SQLITE_CHUNK):
                chunk = hexes[start : start + SQLITE_CHUNK]
                marks = ",".join("?" * len(chunk))
                cursor.execute(
                    f"SELECT rowid, originator_id, originator_version, topic, state "  # noqa: S608
                    f"FROM {recorder.events_table_name} WHERE originator_id IN ({marks})",
                    chunk,
                )
                for row in cursor.fetchall():
                    stored = _stored(by_hex[row["originator_id"]], row)
                    found.append((row["rowid"], stored))
    elif isinstance(recorder, POPOApplicationRecorder):
        # The in-memory store keeps events in one list: a notification id is its index + 1.
        with recorder._database_lock:
            for aggregate_id in ids:
                index = recorder._stored_events_index.get(str(aggregate_id), {})
                for i in index.values():
                    found.append((i + 1, recorder._stored_events[i]))
    else:  # pragma: no cover - every store the ledger runs on is above
        raise TypeError(f"no positioned read for {type(recorder).__name__}")
    found.sort(key=lambda pair: pair[0])
    return found
