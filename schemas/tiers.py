"""``tier.changed``: what the tiers service publishes on ``loyalty.tiers.v1``.

It uses the inbound envelope, so the ledger applies it exactly once like every other input
(the ``event_id`` is deterministic: the same decision always gets the same id), and the
notifier reads the same message to tell the member. The models live in ``schemas.inbound``
(the ledger's inbound union includes them); this module is where consumers import them.
"""

from __future__ import annotations

from schemas.inbound import TierChanged, TierChangedData, TierChangeReason

__all__ = ["TierChangeReason", "TierChanged", "TierChangedData"]
