"""Pins down what the inbound contract accepts and how each rejection is named."""

from __future__ import annotations

import copy
import json
import pickle
from datetime import UTC, datetime
from typing import Any, get_args

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from schemas import (
    EVENT_TYPES,
    EVENT_TYPES_BY_TOPIC,
    INVALID_REASONS,
    MAX_AMOUNT_MINOR,
    MAX_MESSAGE_BYTES,
    MAX_POINTS,
    MODEL_BY_TYPE,
    TOPIC_ACTIVITIES,
    TOPIC_BALANCES,
    TOPIC_DEADLETTER,
    TOPIC_LEDGER,
    TOPIC_PURCHASES,
    TOPIC_REDEMPTIONS,
    TOPIC_REFERRALS,
    TOPIC_TIERS,
    ActivityCompleted,
    InvalidInput,
    MemberEnrolled,
    PurchaseCompleted,
    PurchaseCompletedData,
    PurchaseRefunded,
    RedemptionCancelled,
    RedemptionRequested,
    ReferralQualified,
    parse_inbound,
    payload_digest,
)

Doc = dict[str, Any]

# The example of DESIGN.md, section "Contract", byte for byte.
DESIGN_EXAMPLE = b"""{"event_id": "ord-1001-paid", "type": "purchase.completed",
 "occurred_at": "2026-11-20T10:15:00Z", "member_id": "m-42",
 "data": {"order_id": "1001", "currency": "USD", "total_minor": 12550,
          "lines": [{"sku": "A1", "category": "shoes", "quantity": 1,
                     "unit_price_minor": 12550}]}}"""


def envelope(event_type: str, data: Doc, **fields: Any) -> Doc:
    doc: Doc = {
        "event_id": f"evt-{event_type}-1",
        "type": event_type,
        "occurred_at": "2026-11-20T10:15:00Z",
        "member_id": "m-42",
        "data": data,
    }
    doc.update(fields)
    return doc


EXAMPLES: dict[str, Doc] = {
    "purchase.completed": json.loads(DESIGN_EXAMPLE),
    "purchase.refunded": envelope(
        "purchase.refunded",
        {"order_id": "1001", "refund_id": "r-1", "currency": "USD", "amount_minor": 2500},
    ),
    "referral.qualified": envelope("referral.qualified", {"referee_member_id": "m-77"}),
    "redemption.requested": envelope(
        "redemption.requested", {"redemption_id": "red-9", "reward_id": "free-coffee"}
    ),
    "redemption.cancelled": envelope(
        "redemption.cancelled", {"redemption_id": "red-9", "reason": "changed my mind"}
    ),
    "activity.completed": envelope(
        "activity.completed", {"activity": "review", "reference": "rev-314"}, source="reviews"
    ),
    "member.enrolled": envelope("member.enrolled", {"referral_code": "FRIEND-42"}),
}

TOPIC_OF = {
    event_type: topic for topic, types in EVENT_TYPES_BY_TOPIC.items() for event_type in types
}


def encode(doc: object) -> bytes:
    return json.dumps(doc).encode()


def example(event_type: str) -> Doc:
    return copy.deepcopy(EXAMPLES[event_type])


def changed(doc: Doc, path: str, value: Any) -> Doc:
    """A copy of ``doc`` with the value at a dotted path (list indexes as digits) replaced."""
    result = copy.deepcopy(doc)
    *parents, last = path.split(".")
    node: Any = result
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return result


def removed(doc: Doc, path: str) -> Doc:
    result = copy.deepcopy(doc)
    *parents, last = path.split(".")
    node: Any = result
    for part in parents:
        node = node[part]
    del node[last]
    return result


def rejection(raw: bytes, topic: str | None = None) -> InvalidInput:
    with pytest.raises(InvalidInput) as caught:
        parse_inbound(raw, topic=topic)
    assert caught.value.reason in INVALID_REASONS
    return caught.value


# --------------------------------------------------------------------------------------------
# Valid events
# --------------------------------------------------------------------------------------------


def test_the_design_example_parses() -> None:
    event = parse_inbound(DESIGN_EXAMPLE, topic=TOPIC_PURCHASES)

    assert isinstance(event, PurchaseCompleted)
    assert event.event_id == "ord-1001-paid"
    assert event.member_id == "m-42"
    assert event.source is None
    assert event.occurred_at == datetime(2026, 11, 20, 10, 15, tzinfo=UTC)
    assert event.data.currency == "USD"
    assert event.data.total_minor == 12550
    (line,) = event.data.lines
    assert (line.sku, line.category, line.quantity, line.unit_price_minor) == (
        "A1",
        "shoes",
        1,
        12550,
    )


@pytest.mark.parametrize(
    ("event_type", "model"),
    [
        ("purchase.completed", PurchaseCompleted),
        ("purchase.refunded", PurchaseRefunded),
        ("referral.qualified", ReferralQualified),
        ("redemption.requested", RedemptionRequested),
        ("redemption.cancelled", RedemptionCancelled),
        ("activity.completed", ActivityCompleted),
        ("member.enrolled", MemberEnrolled),
    ],
)
def test_each_event_type_parses_on_its_topic(event_type: str, model: type[Any]) -> None:
    event = parse_inbound(encode(EXAMPLES[event_type]), topic=TOPIC_OF[event_type])

    assert type(event) is model
    assert event.type == event_type
    assert MODEL_BY_TYPE[event_type] is model


def test_optional_fields_may_be_left_out() -> None:
    minimal: dict[str, Doc] = {
        "purchase.completed": {"order_id": "1", "currency": "EUR", "total_minor": 0},
        "purchase.refunded": {
            "order_id": "1",
            "refund_id": "r",
            "lines": [{"sku": "A1", "quantity": 1}],
        },
        "redemption.requested": {"redemption_id": "r", "points": MAX_POINTS},
        "redemption.cancelled": {"redemption_id": "r"},
        "activity.completed": {"activity": "signup"},
        "member.enrolled": {},
    }
    for event_type, data in minimal.items():
        event = parse_inbound(encode(envelope(event_type, data)))
        assert event.type == event_type


def test_occurred_at_is_normalized_to_utc() -> None:
    doc = changed(example("member.enrolled"), "occurred_at", "2026-11-20T23:30:00.250-05:00")

    event = parse_inbound(encode(doc))

    assert event.occurred_at == datetime(2026, 11, 21, 4, 30, 0, 250000, tzinfo=UTC)
    assert event.occurred_at.utcoffset() is not None
    assert event.occurred_at.tzinfo is UTC
    assert event.model_dump(mode="json")["occurred_at"] == "2026-11-21T04:30:00.250000Z"


def test_a_message_of_exactly_the_size_limit_is_accepted() -> None:
    raw = encode(example("member.enrolled"))
    padded = raw + b" " * (MAX_MESSAGE_BYTES - len(raw))

    assert len(padded) == MAX_MESSAGE_BYTES
    assert parse_inbound(padded).type == "member.enrolled"


def test_amount_bounds_are_inclusive() -> None:
    doc = example("purchase.completed")
    doc["data"]["lines"] = [{"sku": "A1", "quantity": 1, "unit_price_minor": MAX_AMOUNT_MINOR}]
    doc["data"]["total_minor"] = MAX_AMOUNT_MINOR

    event = parse_inbound(encode(doc))

    assert isinstance(event, PurchaseCompleted)
    assert event.data.total_minor == MAX_AMOUNT_MINOR


# --------------------------------------------------------------------------------------------
# One test per rejection reason, in the order parse_inbound checks them
# --------------------------------------------------------------------------------------------


def test_oversized_is_checked_before_anything_else() -> None:
    error = rejection(b"\xff" * (MAX_MESSAGE_BYTES + 1))

    assert error.reason == "oversized"
    assert str(MAX_MESSAGE_BYTES) in error.detail


def test_not_utf8() -> None:
    error = rejection(b'{"type": "member.enrolled", "event_id": "\xc3\x28"}')

    assert error.reason == "not_utf8"
    assert "UTF-8" in error.detail


@pytest.mark.parametrize(
    ("raw", "hint"),
    [
        (b"", "Expecting value"),
        (b"{not json}", "Expecting property name"),
        (b'{"type": "member.enrolled",}', "Expecting property name"),
        (b'{"type": "member.enrolled", "type": "member.enrolled"}', "duplicate key 'type'"),
        (b'{"data": {"a": 1, "a": 2}}', "duplicate key 'a'"),
        (b'{"total_minor": NaN}', "NaN"),
        (b'{"total_minor": Infinity}', "Infinity"),
        (b'{"total_minor": -Infinity}', "-Infinity"),
        (b"\xef\xbb\xbf{}", "BOM"),
    ],
)
def test_not_json(raw: bytes, hint: str) -> None:
    error = rejection(raw)

    assert error.reason == "not_json"
    assert hint in error.detail


def test_json_the_strict_parser_refuses_is_not_json() -> None:
    # The stdlib accepts a lone surrogate escape; pydantic's parser (and any UTF-8 sink) does not.
    doc = example("redemption.cancelled")
    raw = encode(doc).replace(b"changed my mind", b"\\ud800")

    error = rejection(raw)

    assert error.reason == "not_json"


def test_deep_nesting_is_not_json_rather_than_a_crash() -> None:
    raw = b'{"type": "member.enrolled", "x": ' + b"[" * 20_000 + b"]" * 20_000 + b"}"

    assert rejection(raw).reason == "not_json"


@pytest.mark.parametrize(
    "raw", [b"[]", b"[1, 2]", b'"purchase.completed"', b"12", b"null", b"true"]
)
def test_not_object(raw: bytes) -> None:
    error = rejection(raw)

    assert error.reason == "not_object"
    assert "not an object" in error.detail


@pytest.mark.parametrize(
    "doc",
    [
        removed(EXAMPLES["member.enrolled"], "type"),
        changed(EXAMPLES["member.enrolled"], "type", "member.deleted"),
        changed(EXAMPLES["member.enrolled"], "type", "Member.Enrolled"),
        changed(EXAMPLES["member.enrolled"], "type", None),
        changed(EXAMPLES["member.enrolled"], "type", ["member.enrolled"]),
        changed(EXAMPLES["member.enrolled"], "type", {"name": "member.enrolled"}),
    ],
)
def test_unknown_type_lists_the_known_types(doc: Doc) -> None:
    error = rejection(encode(doc))

    assert error.reason == "unknown_type"
    assert "type" in error.detail
    for known in EVENT_TYPES:
        assert known in error.detail


@pytest.mark.parametrize(
    ("event_type", "topic"),
    [
        ("purchase.completed", TOPIC_REFERRALS),
        ("referral.qualified", TOPIC_PURCHASES),
        ("redemption.requested", TOPIC_ACTIVITIES),
        ("member.enrolled", TOPIC_REDEMPTIONS),
        ("member.enrolled", TOPIC_LEDGER),
        ("member.enrolled", TOPIC_DEADLETTER),
        ("member.enrolled", "loyalty.members.v1"),
    ],
)
def test_wrong_topic(event_type: str, topic: str) -> None:
    error = rejection(encode(EXAMPLES[event_type]), topic=topic)

    assert error.reason == "wrong_topic"
    assert event_type in error.detail
    assert topic in error.detail


def test_type_is_checked_before_topic_and_topic_before_schema() -> None:
    unknown = changed(EXAMPLES["member.enrolled"], "type", "nope")
    invalid = changed(EXAMPLES["member.enrolled"], "member_id", "")

    assert rejection(encode(unknown), topic=TOPIC_PURCHASES).reason == "unknown_type"
    assert rejection(encode(invalid), topic=TOPIC_PURCHASES).reason == "wrong_topic"
    assert rejection(encode(invalid), topic=TOPIC_ACTIVITIES).reason == "schema"


def test_schema_detail_names_the_field_and_the_problem() -> None:
    doc = changed(example("purchase.completed"), "data.total_minor", -1)

    error = rejection(encode(doc))

    assert error.reason == "schema"
    assert error.detail == "data.total_minor: Input should be greater than or equal to 0"


def test_schema_detail_reports_at_most_five_errors() -> None:
    doc = envelope("purchase.completed", {"lines": [{"sku": ""}] * 4}, member_id="", event_id="")
    del doc["occurred_at"]

    error = rejection(encode(doc))

    assert error.reason == "schema"
    reported = [part for part in error.detail.split("; ") if ": " in part]
    assert len(reported) == 5
    assert error.detail.endswith("more errors")


def test_schema_detail_for_missing_fields() -> None:
    error = rejection(b'{"type": "member.enrolled"}')

    assert error.reason == "schema"
    for field in ("event_id", "occurred_at", "member_id", "data"):
        assert f"{field}: Field required" in error.detail


# --------------------------------------------------------------------------------------------
# Strictness
# --------------------------------------------------------------------------------------------

STRICTNESS_CASES: list[tuple[str, str, Any, str]] = [
    # (event type, path, bad value, loc expected at the start of the detail)
    ("purchase.completed", "data.total_minor", "12", "data.total_minor"),
    ("purchase.completed", "data.total_minor", 12.5, "data.total_minor"),
    ("purchase.completed", "data.total_minor", True, "data.total_minor"),
    ("purchase.completed", "data.total_minor", -1, "data.total_minor"),
    ("purchase.completed", "data.total_minor", MAX_AMOUNT_MINOR + 1, "data.total_minor"),
    ("purchase.completed", "data.total_minor", 10**40, "data.total_minor"),
    ("purchase.completed", "data.total_minor", None, "data.total_minor"),
    ("purchase.completed", "data.lines.0.quantity", "1", "data.lines.0.quantity"),
    ("purchase.completed", "data.lines.0.quantity", False, "data.lines.0.quantity"),
    ("purchase.completed", "data.lines.0.quantity", 0, "data.lines.0.quantity"),
    ("purchase.completed", "data.lines.0.unit_price_minor", -5, "data.lines.0.unit_price_minor"),
    ("purchase.completed", "data.lines.0.category", "Shoes", "data.lines.0.category"),
    ("purchase.completed", "data.lines.0.sku", "", "data.lines.0.sku"),
    ("purchase.completed", "data.lines.0.extra", 1, "data.lines.0.extra"),
    ("purchase.completed", "data.currency", "usd", "data.currency"),
    ("purchase.completed", "data.currency", "Usd", "data.currency"),
    ("purchase.completed", "data.currency", "XXY", "data.currency"),
    ("purchase.completed", "data.currency", "US", "data.currency"),
    ("purchase.completed", "data.currency", 840, "data.currency"),
    ("purchase.completed", "data.lines", {"sku": "A1"}, "data.lines"),
    ("purchase.completed", "data.coupon", "X", "data.coupon"),
    ("purchase.completed", "data", [], "data"),
    ("purchase.completed", "priority", "high", "priority"),
    ("purchase.completed", "occurred_at", "2026-11-20T10:15:00", "occurred_at"),
    ("purchase.completed", "occurred_at", "2026-11-20", "occurred_at"),
    ("purchase.completed", "occurred_at", "2026-11-20T10:15Z", "occurred_at"),
    ("purchase.completed", "occurred_at", "2026-11-20 10:15:00Z", "occurred_at"),
    ("purchase.completed", "occurred_at", "2026-11-20T10:15:00+0200", "occurred_at"),
    ("purchase.completed", "occurred_at", "2026-11-20T10:15:00Z\n", "occurred_at"),
    ("purchase.completed", "occurred_at", "2026-02-30T10:15:00Z", "occurred_at"),
    ("purchase.completed", "occurred_at", "1999-12-31T23:59:59Z", "occurred_at"),
    ("purchase.completed", "occurred_at", "2000-01-01T00:30:00+01:00", "occurred_at"),
    ("purchase.completed", "occurred_at", "2101-01-01T00:00:00Z", "occurred_at"),
    ("purchase.completed", "occurred_at", "0001-01-01T00:00:00+05:00", "occurred_at"),
    ("purchase.completed", "occurred_at", "9999-12-31T23:59:59-05:00", "occurred_at"),
    ("purchase.completed", "occurred_at", 1_790_000_000, "occurred_at"),
    ("purchase.completed", "event_id", "", "event_id"),
    ("purchase.completed", "event_id", "has space", "event_id"),
    ("purchase.completed", "event_id", "-starts-with-dash", "event_id"),
    ("purchase.completed", "event_id", "x" * 129, "event_id"),
    ("purchase.completed", "event_id", "ord-1001\n", "event_id"),
    ("purchase.completed", "event_id", 1001, "event_id"),
    ("purchase.completed", "member_id", "m-42é", "member_id"),
    ("purchase.completed", "member_id", "m" * 65, "member_id"),
    ("purchase.completed", "source", "Checkout", "source"),
    ("purchase.completed", "source", "", "source"),
    ("purchase.refunded", "data.amount_minor", 0, "data.amount_minor"),
    ("purchase.refunded", "data.amount_minor", "2500", "data.amount_minor"),
    ("purchase.refunded", "data.currency", "usd", "data.currency"),
    ("referral.qualified", "data.referee_member_id", "m 77", "data.referee_member_id"),
    ("redemption.requested", "data.reward_id", "Free-Coffee", "data.reward_id"),
    ("redemption.cancelled", "data.reason", "", "data.reason"),
    ("redemption.cancelled", "data.reason", "x" * 501, "data.reason"),
    ("activity.completed", "data.activity", "Social Follow", "data.activity"),
    ("activity.completed", "data.reference", "a b", "data.reference"),
    ("member.enrolled", "data.email", "a@example.com", "data.email"),
    ("member.enrolled", "data.referral_code", 42, "data.referral_code"),
]


@pytest.mark.parametrize(("event_type", "path", "value", "loc"), STRICTNESS_CASES)
def test_strictness(event_type: str, path: str, value: Any, loc: str) -> None:
    error = rejection(encode(changed(example(event_type), path, value)))

    assert error.reason == "schema"
    assert error.detail.startswith(f"{loc}: "), error.detail


def test_lowercase_currency_error_says_uppercase() -> None:
    doc = changed(example("purchase.completed"), "data.currency", "usd")

    assert "uppercase" in rejection(encode(doc)).detail


def test_unknown_field_error_says_so() -> None:
    doc = changed(example("member.enrolled"), "data.email", "a@example.com")

    assert rejection(encode(doc)).detail == "data.email: Extra inputs are not permitted"


def test_python_construction_is_strict_too() -> None:
    with pytest.raises(ValidationError):
        PurchaseCompletedData.model_validate(
            {"order_id": "1", "currency": "USD", "total_minor": "12"}
        )
    with pytest.raises(ValidationError):
        PurchaseCompleted.model_validate(
            {**EXAMPLES["purchase.completed"], "occurred_at": datetime(2026, 1, 1)}
        )


def test_models_are_frozen() -> None:
    event = parse_inbound(DESIGN_EXAMPLE)

    with pytest.raises(ValidationError):
        event.member_id = "m-43"  # type: ignore[misc]
    assert isinstance(event.data, PurchaseCompletedData)
    assert isinstance(event.data.lines, tuple)


# --------------------------------------------------------------------------------------------
# Cross-field rules
# --------------------------------------------------------------------------------------------


def test_purchase_lines_reject_a_duplicate_sku() -> None:
    doc = example("purchase.completed")
    doc["data"]["lines"] = [
        {"sku": "A1", "quantity": 1, "unit_price_minor": 100},
        {"sku": "A1", "quantity": 2, "unit_price_minor": 100},
    ]

    error = rejection(encode(doc))

    assert error.reason == "schema"
    assert error.detail.startswith("data.lines: ")
    assert "A1" in error.detail
    assert "once per order" in error.detail


def test_purchase_lines_sum_is_bounded() -> None:
    doc = example("purchase.completed")
    doc["data"]["lines"] = [
        {"sku": "A1", "quantity": 2, "unit_price_minor": MAX_AMOUNT_MINOR // 2},
        {"sku": "A2", "quantity": 1, "unit_price_minor": 1},
    ]

    error = rejection(encode(doc))

    assert error.detail.startswith("data.lines: ")
    assert str(MAX_AMOUNT_MINOR) in error.detail


def test_purchase_lines_are_capped() -> None:
    doc = example("purchase.completed")
    doc["data"]["lines"] = [
        {"sku": f"S{i}", "quantity": 1, "unit_price_minor": 1} for i in range(501)
    ]

    assert rejection(encode(doc)).detail.startswith("data.lines: ")


@pytest.mark.parametrize(
    "data",
    [
        {"order_id": "1001", "refund_id": "r-1"},
        {"order_id": "1001", "refund_id": "r-1", "amount_minor": None, "lines": None},
        {
            "order_id": "1001",
            "refund_id": "r-1",
            "amount_minor": 100,
            "lines": [{"sku": "A1", "quantity": 1}],
        },
    ],
)
def test_refund_needs_exactly_one_of_amount_or_lines(data: Doc) -> None:
    error = rejection(encode(envelope("purchase.refunded", data)))

    assert error.reason == "schema"
    assert error.detail.startswith("data: ")
    assert "exactly one of amount_minor or lines" in error.detail


def test_refund_by_lines() -> None:
    data = {"order_id": "1001", "refund_id": "r-2", "lines": [{"sku": "A1", "quantity": 1}]}

    event = parse_inbound(encode(envelope("purchase.refunded", data)))

    assert isinstance(event, PurchaseRefunded)
    assert event.data.amount_minor is None
    assert event.data.lines is not None
    assert event.data.lines[0].sku == "A1"


@pytest.mark.parametrize(
    "lines",
    [
        [],
        [{"sku": "A1", "quantity": 1}, {"sku": "A1", "quantity": 1}],
        [{"sku": "A1", "quantity": 0}],
    ],
)
def test_refund_lines_are_non_empty_unique_and_positive(lines: list[Doc]) -> None:
    data = {"order_id": "1001", "refund_id": "r-2", "lines": lines}

    error = rejection(encode(envelope("purchase.refunded", data)))

    assert error.detail.startswith("data.lines")


@pytest.mark.parametrize(
    "data",
    [
        {"redemption_id": "red-1"},
        {"redemption_id": "red-1", "reward_id": "free-coffee", "points": 100},
    ],
)
def test_redemption_needs_exactly_one_of_reward_or_points(data: Doc) -> None:
    error = rejection(encode(envelope("redemption.requested", data)))

    assert error.detail.startswith("data: ")
    assert "exactly one of reward_id or points" in error.detail


@pytest.mark.parametrize("points", [0, -1, MAX_POINTS + 1])
def test_redemption_points_are_bounded(points: int) -> None:
    doc = envelope("redemption.requested", {"redemption_id": "red-1", "points": points})

    assert rejection(encode(doc)).detail.startswith("data.points: ")


def test_a_member_cannot_refer_themselves() -> None:
    doc = envelope("referral.qualified", {"referee_member_id": "m-42"}, member_id="m-42")

    error = rejection(encode(doc), topic=TOPIC_REFERRALS)

    assert error.reason == "schema"
    assert "a member cannot refer themselves" in error.detail
    assert "referee_member_id" in error.detail


# --------------------------------------------------------------------------------------------
# Digest
# --------------------------------------------------------------------------------------------


def test_digest_is_stable_under_key_order_whitespace_and_zone_spelling() -> None:
    doc = example("purchase.completed")
    reordered = dict(reversed(list(doc.items())))
    reordered["data"] = dict(reversed(list(doc["data"].items())))
    other_zone = changed(doc, "occurred_at", "2026-11-20T12:15:00+02:00")

    digests = {
        payload_digest(parse_inbound(DESIGN_EXAMPLE)),
        payload_digest(parse_inbound(encode(doc))),
        payload_digest(parse_inbound(json.dumps(reordered, indent=4).encode())),
        payload_digest(parse_inbound(encode(other_zone))),
    }

    assert len(digests) == 1
    (digest,) = digests
    assert len(digest) == 64
    assert int(digest, 16) >= 0


def test_digest_treats_null_as_absent() -> None:
    doc = example("member.enrolled")
    with_nulls = changed(changed(doc, "source", None), "data.referral_code", None)
    without = removed(doc, "data.referral_code")

    assert payload_digest(parse_inbound(encode(with_nulls))) == payload_digest(
        parse_inbound(encode(without))
    )


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("data.total_minor", 12551),
        ("data.lines.0.quantity", 2),
        ("member_id", "m-43"),
        ("occurred_at", "2026-11-20T10:15:01Z"),
        ("source", "checkout"),
    ],
)
def test_digest_differs_for_a_different_payload(path: str, value: Any) -> None:
    original = payload_digest(parse_inbound(DESIGN_EXAMPLE))
    other = payload_digest(
        parse_inbound(encode(changed(example("purchase.completed"), path, value)))
    )

    assert other != original


# --------------------------------------------------------------------------------------------
# Contract tables and the error type
# --------------------------------------------------------------------------------------------


def test_topic_names_are_the_contract() -> None:
    assert (
        TOPIC_PURCHASES,
        TOPIC_REFERRALS,
        TOPIC_REDEMPTIONS,
        TOPIC_ACTIVITIES,
        TOPIC_LEDGER,
        TOPIC_BALANCES,
        TOPIC_TIERS,
        TOPIC_DEADLETTER,
    ) == (
        "loyalty.purchases.v1",
        "loyalty.referrals.v1",
        "loyalty.redemptions.v1",
        "loyalty.activities.v1",
        "loyalty.ledger.v1",
        "loyalty.balances.v1",
        "loyalty.tiers.v1",
        "loyalty.deadletter.v1",
    )


def test_every_event_type_has_exactly_one_topic_and_one_model() -> None:
    routed = [event_type for types in EVENT_TYPES_BY_TOPIC.values() for event_type in types]

    assert sorted(routed) == sorted(EVENT_TYPES)
    assert set(MODEL_BY_TYPE) == EVENT_TYPES
    for event_type, model in MODEL_BY_TYPE.items():
        assert get_args(model.model_fields["type"].annotation) == (event_type,)


def test_invalid_input_carries_reason_and_detail_and_pickles() -> None:
    error = InvalidInput("schema", "data.total_minor: Input should be greater than or equal to 0")

    assert str(error) == "schema: data.total_minor: Input should be greater than or equal to 0"
    copied = pickle.loads(pickle.dumps(error))
    assert (copied.reason, copied.detail) == (error.reason, error.detail)
    assert {
        "oversized",
        "not_utf8",
        "not_json",
        "not_object",
        "unknown_type",
        "wrong_topic",
        "schema",
    } == INVALID_REASONS


# --------------------------------------------------------------------------------------------
# Property: parse_inbound never raises anything but InvalidInput
# --------------------------------------------------------------------------------------------

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    st.sampled_from(["", "USD", "usd", "m-42", "2026-11-20T10:15:00Z", "2026-11-20T10:15:00"]),
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def mutated_examples(draw: st.DrawFn) -> bytes:
    """A valid example with one field replaced, removed or added."""
    doc = copy.deepcopy(draw(st.sampled_from(list(EXAMPLES.values()))))
    node: Any = doc
    while isinstance(node, dict) and node and draw(st.booleans()):
        child = node[draw(st.sampled_from(sorted(node)))]
        if not isinstance(child, dict):
            break
        node = child
    if isinstance(node, dict):
        action = draw(st.sampled_from(["replace", "remove", "add"]))
        if action == "add" or not node:
            node[draw(st.text(max_size=10))] = draw(json_values)
        else:
            key = draw(st.sampled_from(sorted(node)))
            if action == "remove":
                del node[key]
            else:
                node[key] = draw(json_values)
    return encode(doc)


def _spliced(parts: tuple[bytes, bytes, int]) -> bytes:
    raw, noise, at = parts
    at %= len(raw) + 1
    return raw[:at] + noise + raw[at:]


any_message = st.one_of(
    st.binary(max_size=300),
    json_values.map(lambda value: json.dumps(value).encode()),
    mutated_examples(),
    st.tuples(st.sampled_from([DESIGN_EXAMPLE]), st.binary(max_size=8), st.integers(0, 400)).map(
        _spliced
    ),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=any_message, topic=st.one_of(st.none(), st.sampled_from(sorted(EVENT_TYPES_BY_TOPIC))))
def test_any_bytes_parse_or_raise_invalid_input(raw: bytes, topic: str | None) -> None:
    try:
        event = parse_inbound(raw, topic=topic)
    except InvalidInput as error:
        rejected = error
    else:
        assert event.type in EVENT_TYPES
        assert event.occurred_at.utcoffset() is not None
        assert len(payload_digest(event)) == 64
        # What was accepted round-trips through its canonical JSON.
        assert parse_inbound(event.model_dump_json().encode()) == event
        return
    assert rejected.reason in INVALID_REASONS
    assert rejected.detail
