"""Where a ledger entry came from: the source event and the rule and program that produced it."""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True, slots=True)
class Origin:
    """The channel a request arrived on and its position there."""

    channel: str  # kafka | http | file | ops | scheduler
    topic: str | None = None
    partition: int | None = None
    offset: int | None = None
    line: int | None = None
    file: str | None = None
    request_id: str | None = None
    actor: str | None = None

    def key(self) -> str:
        """A stable text naming this exact position (used to de-duplicate rejections)."""
        parts = [self.channel]
        for value in (
            self.topic,
            self.partition,
            self.offset,
            self.file,
            self.line,
            self.request_id,
        ):
            if value is not None:
                parts.append(str(value))
        return ":".join(parts)


@dataclass(frozen=True, slots=True)
class Provenance:
    origin: Origin
    event_id: str | None = None
    event_type: str | None = None
    rule_id: str | None = None
    program_version: str | None = None
    tier: str | None = None

    def with_rule(self, rule_id: str) -> Provenance:
        return replace(self, rule_id=rule_id)
