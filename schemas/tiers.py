"""``tier.changed``: what the tiers projection publishes on ``loyalty.tiers.v1``.

One message for each tier change the ledger records (a ``tier_assigned`` entry that changed
the tier), with a deterministic ``event_id`` (``tier:<member>:<to>:p<position>``), so a
message published again after a crash is recognisably the same; the notifier reads it to
tell the member. It uses the inbound envelope and the models live in ``schemas.inbound``
(0.1's ledger took it as input; the ledger now decides tiers itself and declines it); this
module is where consumers import them.
"""

from __future__ import annotations

from schemas.inbound import TierChanged, TierChangedData, TierChangeReason

__all__ = ["TierChangeReason", "TierChanged", "TierChangedData"]
