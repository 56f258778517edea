"""Strict inbound event models and the one parser all ingest paths share, so bad input is named."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal, get_args

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails, PydanticCustomError
from pydantic_extra_types.currency_code import ISO4217

from schemas.examples import EVENT_EXAMPLES
from schemas.limits import (
    CODE_PATTERN,
    CURRENCY_PATTERN,
    ID_PATTERN,
    MAX_AMOUNT_MINOR,
    MAX_CODE_LENGTH,
    MAX_EVENT_ID_LENGTH,
    MAX_ID_LENGTH,
    MAX_LINES,
    MAX_MESSAGE_BYTES,
    MAX_OCCURRED_YEAR,
    MAX_POINTS,
    MAX_QUANTITY,
    MAX_REASON_LENGTH,
    MAX_REFERENCE_LENGTH,
    MIN_OCCURRED_YEAR,
    OCCURRED_AT_PATTERN,
    RFC3339_PATTERN,
)
from schemas.text import NO_CONTROL_PATTERN

# --------------------------------------------------------------------------------------------
# Topics (contract: extend, never rename)
# --------------------------------------------------------------------------------------------

TOPIC_PURCHASES: Final = "loyalty.purchases.v1"
TOPIC_REFERRALS: Final = "loyalty.referrals.v1"
TOPIC_REDEMPTIONS: Final = "loyalty.redemptions.v1"
TOPIC_ACTIVITIES: Final = "loyalty.activities.v1"
TOPIC_LEDGER: Final = "loyalty.ledger.v1"
TOPIC_BALANCES: Final = "loyalty.balances.v1"
TOPIC_TIERS: Final = "loyalty.tiers.v1"
TOPIC_TIER_STATUS: Final = "loyalty.tier-status.v1"
TOPIC_DEADLETTER: Final = "loyalty.deadletter.v1"

EVENT_TYPES_BY_TOPIC: Final[dict[str, frozenset[str]]] = {
    TOPIC_PURCHASES: frozenset({"purchase.completed", "purchase.refunded"}),
    TOPIC_REFERRALS: frozenset({"referral.qualified"}),
    TOPIC_REDEMPTIONS: frozenset({"redemption.requested", "redemption.cancelled"}),
    TOPIC_ACTIVITIES: frozenset({"activity.completed", "member.enrolled"}),
    TOPIC_TIERS: frozenset({"tier.changed"}),
}
"""Event types of each inbound topic. tier.changed is published by the tiers projection
(services/tiers) for the notifier; the ledger decides tiers itself and declines it
(``decided_by_ledger``), so `loyalty serve` does not consume loyalty.tiers.v1."""

INBOUND_TOPICS: Final = frozenset(EVENT_TYPES_BY_TOPIC)

LEDGER_INPUT_TOPICS: Final = INBOUND_TOPICS - {TOPIC_TIERS}
"""The topics `loyalty serve` consumes (every inbound topic but loyalty.tiers.v1)."""

# --------------------------------------------------------------------------------------------
# Field types
# --------------------------------------------------------------------------------------------

EventId = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_EVENT_ID_LENGTH, pattern=ID_PATTERN),
]
MemberId = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_ID_LENGTH, pattern=ID_PATTERN),
]
ExternalId = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_ID_LENGTH, pattern=ID_PATTERN),
]
"""An identifier minted by an upstream system: order, refund, SKU, redemption, referral code."""
Reference = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_REFERENCE_LENGTH, pattern=ID_PATTERN),
]
Code = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_CODE_LENGTH, pattern=CODE_PATTERN),
]
"""A lowercase code: source system, category, activity, reward."""


def whole_number(value: object) -> object:
    """A JSON number with no fraction (``10.0``, ``1e3``) as the int it is; JSON Schema counts
    it as an ``integer`` too. Anything else is left for strict validation to judge, so
    ``10.5``, ``"10"`` and ``true`` are still refused and no float is ever stored."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


WHOLE: Final = BeforeValidator(whole_number)
"""After an int's constraints, ``Annotated[int, Field(ge=1), WHOLE]``: the field also takes a
whole float (``10.0`` is 10) in strict models. Placed last, the constraints stay in the JSON
Schema as ``minimum``/``maximum``."""

AmountMinor = Annotated[int, Field(ge=0, le=MAX_AMOUNT_MINOR), WHOLE]
PositiveAmountMinor = Annotated[int, Field(ge=1, le=MAX_AMOUNT_MINOR), WHOLE]
Quantity = Annotated[int, Field(ge=1, le=MAX_QUANTITY), WHOLE]
Points = Annotated[int, Field(ge=1, le=MAX_POINTS), WHOLE]
Text = Annotated[str, StringConstraints(max_length=MAX_REASON_LENGTH, pattern=NO_CONTROL_PATTERN)]
"""Free text that is stored and shown later (a reason): no control character."""
Reason = Annotated[Text, StringConstraints(min_length=1)]

_CURRENCY_RE: Final = re.compile(CURRENCY_PATTERN)


def _require_uppercase_code(value: object) -> object:
    # ISO4217 upper-cases its input itself; the contract wants the canonical spelling only.
    if isinstance(value, str) and not _CURRENCY_RE.fullmatch(value):
        raise PydanticCustomError(
            "currency_format", "Currency must be an uppercase ISO 4217 code, e.g. USD"
        )
    return value


CurrencyCode = Annotated[ISO4217, BeforeValidator(_require_uppercase_code)]

_RFC3339_RE: Final = re.compile(RFC3339_PATTERN)
_DATETIME_FROM_STRING: Final[TypeAdapter[datetime]] = TypeAdapter(datetime)


def _parse_rfc3339(value: object) -> object:
    # pydantic alone would also take "10:15Z" (no seconds), "+0200" or a space for the "T".
    # Strict mode only parses strings when validating JSON text, so parse them here for both.
    if not isinstance(value, str):
        return value
    if not _RFC3339_RE.fullmatch(value):
        raise PydanticCustomError(
            "rfc3339",
            "Datetime should be RFC 3339 with seconds and a zone, e.g. 2026-11-20T10:15:00Z",
        )
    try:
        return _DATETIME_FROM_STRING.validate_python(value)
    except ValidationError as exc:
        raise PydanticCustomError(
            "datetime_parsing", "Datetime is not valid: {problem}", {"problem": _first_msg(exc)}
        ) from None


def _first_msg(exc: ValidationError) -> str:
    errors = exc.errors(include_url=False, include_input=False)
    return errors[0]["msg"] if errors else str(exc)


Timestamp = Annotated[AwareDatetime, BeforeValidator(_parse_rfc3339)]

# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------


def exactly_one_of(*fields: str) -> dict[str, Any]:
    """The JSON Schema of "exactly one of ``fields`` is given and not null"."""
    return {
        "oneOf": [
            {"required": [name], "properties": {name: {"not": {"type": "null"}}}} for name in fields
        ]
    }


class StrictModel(BaseModel):
    """Base of every inbound model: unknown fields rejected, no type coercion, immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class EventEnvelope(StrictModel):
    """Fields common to every inbound event; subclasses add ``type`` and ``data``."""

    event_id: EventId = Field(
        description="Unique id of the event at its source; re-sending it earns nothing twice."
    )
    occurred_at: Timestamp = Field(
        description="When the event happened: RFC 3339 with seconds and a zone offset, in the "
        f"years {MIN_OCCURRED_YEAR} to {MAX_OCCURRED_YEAR} once converted to UTC; stored in UTC.",
        json_schema_extra={"pattern": OCCURRED_AT_PATTERN},
    )
    member_id: MemberId = Field(description="The loyalty member; also the Kafka message key.")
    source: Code | None = Field(
        default=None, description="The emitting system or partner, e.g. a travel agency."
    )

    @field_validator("occurred_at")
    @classmethod
    def _to_utc(cls, value: datetime) -> datetime:
        # Compare before converting: astimezone() can overflow near year 1 or 9999.
        lowest = datetime(MIN_OCCURRED_YEAR, 1, 1, tzinfo=UTC)
        beyond = datetime(MAX_OCCURRED_YEAR + 1, 1, 1, tzinfo=UTC)
        if not lowest <= value < beyond:
            raise PydanticCustomError(
                "occurred_at_range",
                "Datetime should be in the years {low} to {high} (UTC)",
                {"low": MIN_OCCURRED_YEAR, "high": MAX_OCCURRED_YEAR},
            )
        return value.astimezone(UTC)

    @field_serializer("occurred_at", when_used="json")
    def _rfc3339(self, value: datetime) -> str:
        # Pinned here rather than left to pydantic, because payload digests depend on it.
        return value.isoformat().replace("+00:00", "Z")


def _reject_duplicate_skus(lines: Sequence[PurchaseLine | RefundLine]) -> None:
    seen: set[str] = set()
    for line in lines:
        if line.sku in seen:
            raise PydanticCustomError(
                "duplicate_sku",
                "Duplicate sku '{sku}': each SKU appears once per order, with its quantity",
                {"sku": line.sku},
            )
        seen.add(line.sku)


class PurchaseLine(StrictModel):
    """One SKU of a purchase, with its quantity and unit price."""

    sku: ExternalId
    category: Code | None = Field(
        default=None, description="Product category, used by category multipliers."
    )
    quantity: Quantity
    unit_price_minor: AmountMinor = Field(description="Unit price in minor units of the currency.")


class PurchaseCompletedData(StrictModel):
    """A paid order."""

    order_id: ExternalId
    currency: CurrencyCode = Field(description="ISO 4217 code, uppercase.")
    total_minor: AmountMinor = Field(description="Amount paid, in minor units of the currency.")
    lines: Annotated[tuple[PurchaseLine, ...], Field(max_length=MAX_LINES)] = Field(
        default=(), description="Order lines; each SKU at most once."
    )

    @field_validator("lines")
    @classmethod
    def _check_lines(cls, lines: tuple[PurchaseLine, ...]) -> tuple[PurchaseLine, ...]:
        _reject_duplicate_skus(lines)
        if sum(line.quantity * line.unit_price_minor for line in lines) > MAX_AMOUNT_MINOR:
            raise PydanticCustomError(
                "lines_total_too_large",
                "The sum of quantity * unit_price_minor over the lines exceeds {limit}",
                {"limit": MAX_AMOUNT_MINOR},
            )
        return lines


class RefundLine(StrictModel):
    """One SKU given back, with the quantity returned."""

    sku: ExternalId
    quantity: Quantity


class PurchaseRefundedData(StrictModel):
    """A full or partial refund of an order: an amount, or the lines given back."""

    model_config = ConfigDict(json_schema_extra=exactly_one_of("amount_minor", "lines"))

    order_id: ExternalId
    refund_id: ExternalId = Field(description="Unique per refund; several refunds per order.")
    currency: CurrencyCode | None = Field(
        default=None, description="ISO 4217 code, uppercase; the order's currency if omitted."
    )
    amount_minor: PositiveAmountMinor | None = Field(
        default=None, description="Amount refunded, in minor units. Exclusive with lines."
    )
    lines: Annotated[tuple[RefundLine, ...], Field(min_length=1, max_length=MAX_LINES)] | None = (
        Field(default=None, description="Lines returned. Exclusive with amount_minor.")
    )

    @field_validator("lines")
    @classmethod
    def _unique_skus(cls, lines: tuple[RefundLine, ...] | None) -> tuple[RefundLine, ...] | None:
        if lines is not None:
            _reject_duplicate_skus(lines)
        return lines

    @model_validator(mode="after")
    def _exactly_one(self) -> PurchaseRefundedData:
        if (self.amount_minor is None) == (self.lines is None):
            raise PydanticCustomError(
                "exactly_one", "Give exactly one of amount_minor or lines (not both, not neither)"
            )
        return self


class ReferralQualifiedData(StrictModel):
    """The referred member whose qualifying action earns the referrer (the envelope member)."""

    referee_member_id: MemberId = Field(
        description="The referred member; not the envelope's member_id (no self-referral)."
    )


class RedemptionRequestedData(StrictModel):
    """A request to spend points: on a catalog reward, or an amount of points."""

    model_config = ConfigDict(json_schema_extra=exactly_one_of("reward_id", "points"))

    redemption_id: ExternalId
    reward_id: Code | None = Field(
        default=None, description="Reward from the program catalog. Exclusive with points."
    )
    points: Points | None = Field(
        default=None, description="Points to redeem. Exclusive with reward_id."
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> RedemptionRequestedData:
        if (self.reward_id is None) == (self.points is None):
            raise PydanticCustomError(
                "exactly_one", "Give exactly one of reward_id or points (not both, not neither)"
            )
        return self


class RedemptionCancelledData(StrictModel):
    """Cancellation of an earlier redemption request."""

    redemption_id: ExternalId
    reason: Reason | None = None


class ActivityCompletedData(StrictModel):
    """A non-purchase activity the program may reward."""

    activity: Code = Field(description="e.g. signup, birthday, social_follow, review.")
    reference: Reference | None = Field(
        default=None,
        description="What the activity was about (review id, social network); de-duplicates.",
    )


class MemberEnrolledData(StrictModel):
    """A member joined the program. No personal data: the ledger keeps only the member id."""

    referral_code: ExternalId | None = None


class PurchaseCompleted(EventEnvelope):
    """``purchase.completed`` on ``loyalty.purchases.v1``."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [EVENT_EXAMPLES["purchase.completed"]]}
    )

    type: Literal["purchase.completed"]
    data: PurchaseCompletedData


class PurchaseRefunded(EventEnvelope):
    """``purchase.refunded`` on ``loyalty.purchases.v1``."""

    model_config = ConfigDict(json_schema_extra={"examples": [EVENT_EXAMPLES["purchase.refunded"]]})

    type: Literal["purchase.refunded"]
    data: PurchaseRefundedData


class ReferralQualified(EventEnvelope):
    """``referral.qualified`` on ``loyalty.referrals.v1``; ``member_id`` is the referrer."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [EVENT_EXAMPLES["referral.qualified"]]}
    )

    type: Literal["referral.qualified"]
    data: ReferralQualifiedData

    @model_validator(mode="after")
    def _not_self(self) -> ReferralQualified:
        if self.data.referee_member_id == self.member_id:
            raise PydanticCustomError(
                "self_referral",
                "data.referee_member_id equals member_id: a member cannot refer themselves",
            )
        return self


class RedemptionRequested(EventEnvelope):
    """``redemption.requested`` on ``loyalty.redemptions.v1``."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [EVENT_EXAMPLES["redemption.requested"]]}
    )

    type: Literal["redemption.requested"]
    data: RedemptionRequestedData


class RedemptionCancelled(EventEnvelope):
    """``redemption.cancelled`` on ``loyalty.redemptions.v1``."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [EVENT_EXAMPLES["redemption.cancelled"]]}
    )

    type: Literal["redemption.cancelled"]
    data: RedemptionCancelledData


class ActivityCompleted(EventEnvelope):
    """``activity.completed`` on ``loyalty.activities.v1``."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [EVENT_EXAMPLES["activity.completed"]]}
    )

    type: Literal["activity.completed"]
    data: ActivityCompletedData


class MemberEnrolled(EventEnvelope):
    """``member.enrolled`` on ``loyalty.activities.v1``."""

    model_config = ConfigDict(json_schema_extra={"examples": [EVENT_EXAMPLES["member.enrolled"]]})

    type: Literal["member.enrolled"]
    data: MemberEnrolledData


# ``tier.changed`` is published by the tiers projection from the ledger's tier_assigned
# entries (the notifier reads it); the ledger itself declines it.
TierChangeReason = Literal["upgrade", "downgrade", "override", "override_ended", "recompute"]


class TierChangedData(StrictModel):
    """One tier decision and the qualifying activity behind it."""

    from_tier: Code | None = Field(description="The tier held before; null for a new member.")
    to_tier: Code = Field(description="The tier held from ``effective_from``.")
    reason: TierChangeReason
    detail: Text = ""
    basis: Literal["points", "spend"] = Field(
        description="What qualifies: points earned (never the spendable balance) or spend."
    )
    qualifying_value: Annotated[int, Field(ge=0, le=MAX_POINTS * 1000), WHOLE] = Field(
        description="Qualifying points, or spend in minor units, inside the window."
    )
    threshold: Annotated[int, Field(ge=0, le=MAX_POINTS * 1000), WHOLE] = Field(
        description="The threshold of ``to_tier``."
    )
    effective_from: Timestamp
    valid_until: Timestamp | None = Field(
        description="End of the qualification period plus grace: held at least until then."
    )
    caused_by_position: Annotated[int, Field(ge=0), WHOLE] | None = Field(
        description="Ledger position of the entry that caused the change; null for a timer."
    )


class TierChanged(EventEnvelope):
    """``tier.changed`` on ``loyalty.tiers.v1``."""

    model_config = ConfigDict(json_schema_extra={"examples": [EVENT_EXAMPLES["tier.changed"]]})

    type: Literal["tier.changed"]
    data: TierChangedData


InboundEvent = Annotated[
    PurchaseCompleted
    | PurchaseRefunded
    | ReferralQualified
    | RedemptionRequested
    | RedemptionCancelled
    | ActivityCompleted
    | MemberEnrolled
    | TierChanged,
    Field(discriminator="type"),
]
"""Any inbound event, told apart by ``type``."""

INBOUND_EVENT_ADAPTER: Final[TypeAdapter[InboundEvent]] = TypeAdapter(InboundEvent)

MODEL_BY_TYPE: Final[dict[str, type[EventEnvelope]]] = {
    get_args(model.model_fields["type"].annotation)[0]: model
    for model in get_args(get_args(InboundEvent)[0])
}
"""Each inbound event type and its model, in the order of the ``InboundEvent`` union."""

EVENT_TYPES: Final = frozenset(MODEL_BY_TYPE)

# --------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------

InvalidReason = Literal[
    "oversized", "not_utf8", "not_json", "not_object", "unknown_type", "wrong_topic", "schema"
]
INVALID_REASONS: Final = frozenset(get_args(InvalidReason))

MAX_REPORTED_ERRORS: Final = 5


class InvalidInput(Exception):
    """Bytes that are not a valid event: ``reason`` is a fixed code, ``detail`` a sentence."""

    def __init__(self, reason: InvalidReason, detail: str) -> None:
        super().__init__(reason, detail)
        self.reason: InvalidReason = reason
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"


class _NotJsonError(ValueError):
    """Raised from the json hooks for input the standard parser would otherwise accept."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _NotJsonError(f"duplicate key {_short(key)} in a JSON object")
        result[key] = value
    return result


def _no_constants(name: str) -> Any:
    raise _NotJsonError(f"{name} is not a JSON number")


def _short(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


PATTERN_MESSAGES: Final = {
    ID_PATTERN: "Id should be ASCII letters, digits and . _ : @ -, with / only between "
    "segments that each start with a letter or digit",
    NO_CONTROL_PATTERN: "Text should hold no control character (U+0000 to U+001F, U+007F to "
    "U+009F: no tab, line break or NUL)",
}
"""The policy in words, for an error a pattern of the character policy reports."""


def error_message(error: ErrorDetails) -> str:
    """The message of one validation error; the character policy's patterns in words."""
    if error["type"] == "string_pattern_mismatch":
        pattern = (error.get("ctx") or {}).get("pattern")
        if pattern in PATTERN_MESSAGES:
            return PATTERN_MESSAGES[pattern]
    return error["msg"]


def _describe(error: ErrorDetails, event_type: str) -> str:
    loc = tuple(error["loc"])
    if loc and loc[0] == event_type:  # the discriminated union prefixes the tag
        loc = loc[1:]
    where = ".".join(str(part) for part in loc)
    message = error_message(error)
    return f"{where}: {message}" if where else message


def parse_inbound(raw: bytes, *, topic: str | None = None) -> InboundEvent:
    """Parse one inbound message, or raise ``InvalidInput`` saying why it is not an event.

    ``topic``, when given, must be an inbound topic that carries the event's type.
    """
    if len(raw) > MAX_MESSAGE_BYTES:
        raise InvalidInput(
            "oversized", f"message is {len(raw)} bytes; the limit is {MAX_MESSAGE_BYTES} bytes"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(
            "not_utf8", f"not valid UTF-8: {exc.reason} at byte {exc.start}"
        ) from None
    try:
        document = json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_no_constants)
    except (_NotJsonError, json.JSONDecodeError) as exc:
        raise InvalidInput("not_json", f"not valid JSON: {exc}") from None
    except RecursionError:
        raise InvalidInput("not_json", "not valid JSON: nested too deeply") from None
    if not isinstance(document, dict):
        raise InvalidInput(
            "not_object", f"the message is a JSON {type(document).__name__}, not an object"
        )
    known = ", ".join(sorted(EVENT_TYPES))
    event_type = document.get("type")
    if not isinstance(event_type, str) or event_type not in EVENT_TYPES:
        what = "type is missing" if "type" not in document else f"type {_short(event_type)}"
        raise InvalidInput("unknown_type", f"{what} is not a known event type; known: {known}")
    if topic is not None and event_type not in EVENT_TYPES_BY_TOPIC.get(topic, frozenset()):
        allowed = ", ".join(sorted(EVENT_TYPES_BY_TOPIC.get(topic, frozenset()))) or "none"
        raise InvalidInput(
            "wrong_topic",
            f"type {event_type!r} is not allowed on topic {_short(topic)} (allowed: {allowed})",
        )
    try:
        # Validated from the JSON text, not from ``document``: strict mode takes a JSON array
        # for a tuple field only there. Duplicate keys and NaN were ruled out above.
        return INBOUND_EVENT_ADAPTER.validate_json(raw)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        for error in errors:
            if error["type"] == "json_invalid":
                # What the stdlib accepts but pydantic's parser refuses, e.g. lone surrogates.
                raise InvalidInput("not_json", error["msg"]) from None
        parts = [_describe(error, event_type) for error in errors[:MAX_REPORTED_ERRORS]]
        if len(errors) > MAX_REPORTED_ERRORS:
            parts.append(f"and {len(errors) - MAX_REPORTED_ERRORS} more errors")
        raise InvalidInput("schema", "; ".join(parts)) from None


def canonical_json(event: InboundEvent) -> bytes:
    """The event as canonical JSON: sorted keys, no spaces, absent optional fields left out."""
    payload = event.model_dump(mode="json", exclude_none=True)
    return json.dumps(payload, sort_keys=True, separators=(",", ":")).encode("ascii")


def payload_digest(event: InboundEvent) -> str:
    """SHA-256 (hex) of the canonical JSON: tells "same event_id, different payload" apart."""
    return hashlib.sha256(canonical_json(event)).hexdigest()
