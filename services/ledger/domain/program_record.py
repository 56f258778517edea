"""Every program version the ledger applied, kept in the store so entries stay explainable."""

from __future__ import annotations

from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate

_NAMESPACE = uuid5(NAMESPACE_URL, "https://loyalty-ledger.invalid/program")


def program_record_id(version: str) -> UUID:
    return uuid5(_NAMESPACE, version)


class ProgramRecord(Aggregate):
    class Recorded(Aggregate.Created):
        version: str
        document: str

    def __init__(self, version: str, document: str) -> None:
        self.program_version = version
        self.document = document

    @staticmethod
    def create_id(version: str) -> UUID:
        return program_record_id(version)
