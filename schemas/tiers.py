"""``tier.changed``: what the tiers service publishes on ``loyalty.tiers.v1``.

It uses the inbound envelope, so the ledger applies it exactly once like every other input
(the ``event_id`` is deterministic: the same decision always gets the same id), and the
notifier reads the same message to tell the member.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from schemas.inbound import Code, EventEnvelope, StrictModel, Timestamp
from schemas.limits import MAX_POINTS, MAX_REASON_LENGTH

TierChangeReason = Literal["upgrade", "downgrade", "override", "override_ended", "recompute"]


class TierChangedData(StrictModel):
    """One tier decision and the qualifying activity behind it."""

    from_tier: Code | None = Field(description="The tier held before; null for a new member.")
    to_tier: Code = Field(description="The tier held from ``effective_from``.")
    reason: TierChangeReason
    detail: Annotated[str, StringConstraints(max_length=MAX_REASON_LENGTH)] = ""
    basis: Literal["points", "spend"] = Field(
        description="What qualifies: points earned (never the spendable balance) or spend."
    )
    qualifying_value: Annotated[int, Field(ge=0, le=MAX_POINTS * 1000)] = Field(
        description="Qualifying points, or spend in minor units, inside the window."
    )
    threshold: Annotated[int, Field(ge=0, le=MAX_POINTS * 1000)] = Field(
        description="The threshold of ``to_tier``."
    )
    effective_from: Timestamp
    valid_until: Timestamp | None = Field(
        description="End of the qualification period plus grace: held at least until then."
    )
    caused_by_position: Annotated[int, Field(ge=0)] | None = Field(
        description="Ledger position of the entry that caused the change; null for a timer."
    )


class TierChanged(EventEnvelope):
    """``tier.changed`` on ``loyalty.tiers.v1``."""

    type: Literal["tier.changed"]
    data: TierChangedData
