"""The program file: loading, the content-hash version, and errors that name the field."""

from __future__ import annotations

import hashlib
import re
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.ledger.adapters.program_file import ProgramFileError, load_program, parse_program
from services.ledger.domain.program import (
    ActivityLimit,
    ExpiryRounding,
    Program,
    ReturnPolicy,
    Rounding,
    Weekday,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "services" / "ledger" / "examples"
VERSION = re.compile(r"^(?P<id>[a-z0-9][a-z0-9._-]*)@(?P<hash>[0-9a-f]{12})$")

MINIMAL = """\
id: shop
name: Shop
currencies:
  USD: {minor_units: 2, points_per_unit: "1"}
"""

# The same program twice: different key order, comments, quoting and layout,
# and defaults written out in one of them only.
RULES_A = """\
# A small program.
id: cafe
name: Cafe
timezone: Europe/Paris
currencies:
  EUR: {minor_units: 2, points_per_unit: "1.5"}
  USD: {minor_units: 2, points_per_unit: "1"}
earn:
  rounding: half_up
  pending_days: 3
  promotions:
    - {id: happy-monday, multiplier: "2", weekdays: [monday]}
expiry: {months_after_earn: 12, round_to: end_of_month}
rewards:
  cake: {name: Cake, points: 40}
"""

RULES_B = """\
rewards:
  cake:
    points: 40      # the price
    name: 'Cake'
expiry:
  round_to: end_of_month
  months_after_earn: 12
earn:
  promotions:
    - weekdays:
        - monday
      multiplier: '2'
      id: happy-monday
  pending_days: 3
  rounding: half_up
  caps: {}
currencies:
  USD:
    points_per_unit: "1"
    minor_units: 2
  EUR:
    points_per_unit: "1.5"
    minor_units: 2
timezone: "Europe/Paris"
auto_enrol: true
returns: {policy: within_balance}
name: Cafe
id: cafe
"""


def problem(text: str) -> str:
    with pytest.raises(ProgramFileError) as excinfo:
        parse_program(text, name="test.yaml")
    return str(excinfo.value)


def _reordered(value: Any) -> Any:
    """The same data with every mapping's keys in reverse order."""
    if isinstance(value, dict):
        return {k: _reordered(value[k]) for k in reversed(list(value))}
    if isinstance(value, list):
        return [_reordered(v) for v in value]
    return value


# ---------------------------------------------------------------- the examples


@pytest.mark.parametrize(
    ("file", "program_id"), [("coffee.yaml", "bean-points"), ("retailer.yaml", "northwind")]
)
def test_example_programs_load_with_a_version(file: str, program_id: str) -> None:
    program = load_program(EXAMPLES / file)
    match = VERSION.match(program.version)
    assert match is not None, program.version
    assert match["id"] == program_id == program.id
    digest = hashlib.sha256(program.canonical_json().encode()).hexdigest()
    assert match["hash"] == digest[:12]


def test_coffee_example_content() -> None:
    program = load_program(EXAMPLES / "coffee.yaml")
    assert program.timezone == "America/New_York"
    assert program.currencies["USD"].points_per_unit == Decimal(1)
    assert program.earn.rounding is Rounding.FLOOR
    assert program.earn.pending_days == 2
    assert [(p.id, p.multiplier, p.weekdays) for p in program.earn.promotions] == [
        ("double-tuesday", Decimal(2), (Weekday.TUESDAY,))
    ]
    assert program.earn.caps.per_member_per_day == 200
    assert program.activities["birthday"].limit is ActivityLimit.PER_YEAR
    assert program.expiry.months_after_earn == 6
    assert program.expiry.round_to is ExpiryRounding.END_OF_MONTH
    assert program.rewards["free-drink"].points == 50
    assert program.returns.policy is ReturnPolicy.WITHIN_BALANCE
    assert [(t.id, t.threshold, t.earn_multiplier) for t in program.tiers] == [
        ("green", 0, Decimal(1)),
        ("gold", 50, Decimal(2)),
    ]
    assert program.entry_tier is not None
    assert program.entry_tier.id == "green"
    q = program.tier_qualification
    assert (q.basis, q.window, q.rolling_months, q.grace_days, q.downgrade) == (
        "points",
        "calendar_year",
        None,
        30,
        "one_level",
    )


def test_retailer_example_content() -> None:
    program = load_program(EXAMPLES / "retailer.yaml")
    assert sorted(program.currencies) == ["EUR", "GBP"]
    assert program.currencies["EUR"].points_per_unit == Decimal("1.5")
    assert program.earn.promotions[0].starts_on == date(2026, 12, 1)
    assert program.earn.promotions[0].ends_on == date(2026, 12, 24)
    assert program.earn.caps.per_order == 5000
    assert program.partners["skyway-air"].points_per_unit == Decimal(1)
    assert [(t.id, t.threshold, t.earn_multiplier) for t in program.tiers] == [
        ("explorer", 0, Decimal(1)),
        ("trailblazer", 5000, Decimal("1.25")),
        ("summit", 20000, Decimal("1.5")),
    ]
    entry = program.entry_tier
    assert entry is not None
    assert entry.id == "explorer"
    summit = program.tier("summit")
    assert summit is not None
    assert summit.perks == ("free shipping", "early access")
    assert program.tier("gold") is None
    assert program.tier(None) is None
    assert program.returns.policy is ReturnPolicy.UNLIMITED
    assert program.zone.key == "Europe/London"


def test_the_two_examples_have_different_versions() -> None:
    coffee = load_program(EXAMPLES / "coffee.yaml")
    retailer = load_program(EXAMPLES / "retailer.yaml")
    assert coffee.version != retailer.version


# ------------------------------------------------------------------- versions


def test_the_same_rules_written_differently_have_the_same_version() -> None:
    a = parse_program(RULES_A)
    b = parse_program(RULES_B)
    assert a == b
    assert a.version == b.version
    assert a.canonical_json() == b.canonical_json()


@pytest.mark.parametrize("file", ["coffee.yaml", "retailer.yaml"])
def test_example_rewritten_without_comments_in_another_key_order_keeps_its_version(
    file: str,
) -> None:
    text = (EXAMPLES / file).read_text(encoding="utf-8")
    rewritten = yaml.safe_dump(_reordered(yaml.safe_load(text)), sort_keys=False)
    assert "#" not in rewritten
    assert rewritten != text
    assert parse_program(rewritten).version == parse_program(text).version


def test_the_version_is_the_same_each_time() -> None:
    assert parse_program(RULES_A).version == parse_program(RULES_A).version
    assert VERSION.match(parse_program(RULES_A).version)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (
            'EUR: {minor_units: 2, points_per_unit: "1.5"}',
            'EUR: {minor_units: 2, points_per_unit: "2"}',
        ),
        ("rounding: half_up", "rounding: floor"),
        ("pending_days: 3", "pending_days: 4"),
        ('multiplier: "2", weekdays: [monday]', 'multiplier: "3", weekdays: [monday]'),
        ("weekdays: [monday]", "weekdays: [tuesday]"),
        ("months_after_earn: 12", "months_after_earn: 18"),
        ("round_to: end_of_month", "round_to: end_of_year"),
        ("cake: {name: Cake, points: 40}", "cake: {name: Cake, points: 45}"),
        ("timezone: Europe/Paris", "timezone: Europe/Berlin"),
        ("id: cafe", "id: cafe2"),
    ],
)
def test_the_version_changes_when_a_rule_changes(old: str, new: str) -> None:
    assert old in RULES_A
    changed = parse_program(RULES_A.replace(old, new))
    assert changed.version != parse_program(RULES_A).version
    assert VERSION.match(changed.version)


def test_adding_a_rule_changes_the_version() -> None:
    base = parse_program(MINIMAL)
    with_activity = parse_program(MINIMAL + "activities:\n  signup: {points: 10}\n")
    with_policy = parse_program(MINIMAL + "returns: {policy: unlimited}\n")
    assert len({base.version, with_activity.version, with_policy.version}) == 3


def test_written_out_defaults_do_not_change_the_version() -> None:
    explicit = MINIMAL + (
        "timezone: UTC\nauto_enrol: true\n"
        "earn: {rounding: floor, pending_days: 0, multipliers: [], promotions: []}\n"
        "returns: {policy: within_balance}\nexpiry: {round_to: none}\n"
    )
    assert parse_program(explicit).version == parse_program(MINIMAL).version


@pytest.mark.parametrize("spelling", ['"1.0"', "1", "1.0", '"1.000"', '"1e0"', "'01'"])
def test_equal_numbers_spelled_differently_have_the_same_version(spelling: str) -> None:
    one = parse_program(MINIMAL)
    other = parse_program(MINIMAL.replace('points_per_unit: "1"', f"points_per_unit: {spelling}"))
    assert one.currencies == other.currencies  # Decimal("1") == Decimal("1.0")
    assert one.version == other.version


@pytest.mark.parametrize(("a", "b"), [('"1.5"', '"1.50"'), ('"10"', '"1E+1"'), ('"0.1"', '".1"')])
def test_equal_rates_have_the_same_version(a: str, b: str) -> None:
    first = parse_program(MINIMAL.replace('"1"', a))
    second = parse_program(MINIMAL.replace('"1"', b))
    assert first.version == second.version


# --------------------------------------------------------------------- errors


def test_invalid_value_names_the_field_path() -> None:
    message = problem(MINIMAL.replace('points_per_unit: "1"', 'points_per_unit: "0"'))
    assert message.startswith("test.yaml: invalid program:")
    assert "currencies.USD.points_per_unit: Input should be greater than 0" in message


def test_not_a_number_names_the_field_path() -> None:
    message = problem(MINIMAL.replace('points_per_unit: "1"', "points_per_unit: lots"))
    assert "currencies.USD.points_per_unit: Input should be a valid decimal" in message


@pytest.mark.parametrize(
    ("extra", "path"),
    [
        ("colour: blue\n", "colour"),
        ("earn: {bogus: 1}\n", "earn.bogus"),
        ("rewards:\n  cake: {name: Cake, points: 4, price: 9}\n", "rewards.cake.price"),
    ],
)
def test_unknown_fields_are_refused(extra: str, path: str) -> None:
    assert f"{path}: Extra inputs are not permitted" in problem(MINIMAL + extra)


def test_tiers_must_increase() -> None:
    message = problem(
        MINIMAL
        + "tiers:\n"
        + "  - {id: a, name: A, threshold: 0}\n"
        + "  - {id: b, name: B, threshold: 500}\n"
        + "  - {id: c, name: C, threshold: 100}\n"
    )
    assert "tiers must be listed by strictly increasing threshold" in message


def test_tier_thresholds_must_differ() -> None:
    message = problem(
        MINIMAL + "tiers:\n  - {id: a, name: A, threshold: 0}\n  - {id: b, name: B, threshold: 0}\n"
    )
    assert "tiers must be listed by strictly increasing threshold" in message


def test_first_tier_threshold_must_be_zero() -> None:
    message = problem(MINIMAL + "tiers:\n  - {id: a, name: A, threshold: 10}\n")
    assert "the first tier is the entry tier and needs threshold 0" in message


def test_tier_ids_must_be_unique() -> None:
    message = problem(
        MINIMAL + "tiers:\n  - {id: a, name: A, threshold: 0}\n  - {id: a, name: B, threshold: 5}\n"
    )
    assert "tier ids must be unique" in message


def test_unknown_time_zone() -> None:
    message = problem(MINIMAL + "timezone: Mars/Olympus\n")
    assert "timezone: Value error, unknown time zone 'Mars/Olympus'" in message


@pytest.mark.parametrize("zone", ["", "/etc/localtime", "../UTC"])
def test_malformed_time_zone(zone: str) -> None:
    assert "timezone: Value error, unknown time zone" in problem(MINIMAL + f"timezone: '{zone}'\n")


def test_duplicate_key_names_its_line() -> None:
    text = "id: shop\nname: Shop\nname: Other\n" + MINIMAL.split("\n", 2)[2]
    message = problem(text)
    assert "line 3: duplicate key 'name'" in message


def test_duplicate_nested_key_names_its_line() -> None:
    text = MINIMAL + "rewards:\n  cake: {name: Cake, points: 40}\n  cake: {name: Pie, points: 50}\n"
    assert "line 7: duplicate key 'cake'" in problem(text)


def test_duplicate_key_error_names_the_file() -> None:
    assert problem(MINIMAL + "id: again\n") == (
        "test.yaml: line 5: duplicate key 'id' (each key may appear once)"
    )


@pytest.mark.parametrize("text", ["id: [shop\n", "id: shop\n  name: : :\n", "\tid: shop\n"])
def test_not_yaml(text: str) -> None:
    assert problem(text).startswith("test.yaml: not valid YAML:")


@pytest.mark.parametrize("text", ["- id: shop\n", "just a string\n", "42\n", "", "# nothing\n"])
def test_top_level_must_be_a_mapping(text: str) -> None:
    assert problem(text) == "test.yaml: expected a mapping of program settings at the top"


def test_every_problem_is_listed() -> None:
    text = 'id: "Shop!"\nname: ""\ncurrencies:\n  USD: {minor_units: 9, points_per_unit: "1"}\n'
    lines = problem(text).splitlines()
    assert lines[0] == "test.yaml: invalid program:"
    assert [line.split(":")[0].strip() for line in lines[1:]] == [
        "id",
        "name",
        "currencies.USD.minor_units",
    ]


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (
            "earn:\n  promotions:\n"
            "    - {id: x, multiplier: '2', starts_on: 2026-02-01, ends_on: 2026-01-01}\n",
            "earn.promotions.0: Value error, ends_on is before starts_on",
        ),
        (
            "earn:\n  multipliers:\n    - {id: x, multiplier: '2'}\n",
            "earn.multipliers.0: Value error, a multiplier needs at least one of categories",
        ),
        (
            "earn:\n  promotions:\n    - {id: x, multiplier: '2', weekdays: [funday]}\n",
            "earn.promotions.0.weekdays.0: Input should be 'monday'",
        ),
        (
            "earn: {pending_days: -1}\n",
            "earn.pending_days: Input should be greater than or equal to 0",
        ),
        ("expiry: {months_after_earn: 0}\n", "expiry.months_after_earn: Input should be greater"),
        ("returns: {policy: never}\n", "returns.policy: Input should be"),
        (
            "rewards:\n  cake: {name: Cake, points: 0}\n",
            "rewards.cake.points: Input should be greater",
        ),
    ],
)
def test_nested_problems_name_their_path(extra: str, expected: str) -> None:
    assert expected in problem(MINIMAL + extra)


def test_currency_codes_are_three_capitals() -> None:
    text = MINIMAL.replace("USD:", "usd:")
    assert "currencies.usd.[key]: String should match pattern" in problem(text)


def test_at_least_one_currency() -> None:
    text = "id: shop\nname: Shop\ncurrencies: {}\n"
    assert "currencies: Dictionary should have at least 1 item" in problem(text)


def test_missing_required_fields() -> None:
    message = problem("timezone: UTC\n")
    for field in ("id", "name", "currencies"):
        assert f"\n  {field}: Field required" in message


def test_load_program_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(MINIMAL + "colour: blue\n", encoding="utf-8")
    with pytest.raises(ProgramFileError, match=re.escape(f"{path}: invalid program")):
        load_program(path)


def test_load_program_of_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ProgramFileError, match="cannot read program file"):
        load_program(tmp_path / "missing.yaml")


def test_program_file_error_is_a_value_error() -> None:
    assert issubclass(ProgramFileError, ValueError)


def test_programs_are_immutable() -> None:
    program = parse_program(MINIMAL)
    with pytest.raises(ValueError, match="frozen"):
        program.name = "Other"  # type: ignore[misc]


def test_model_validate_refuses_the_same_things() -> None:
    with pytest.raises(ValueError, match="unknown time zone"):
        Program.model_validate(
            {"id": "p", "name": "P", "timezone": "Nowhere/Town", "currencies": {}}
        )


# -------------------------------------------------------------------- weekday


def test_weekday_numbering_matches_date_weekday() -> None:
    assert [w.number for w in Weekday] == [0, 1, 2, 3, 4, 5, 6]
    assert Weekday.MONDAY.number == 0
    assert Weekday.SUNDAY.number == 6
    monday = date(2026, 11, 16)
    for offset in range(7):
        day = monday + timedelta(days=offset)
        weekday = Weekday(day.strftime("%A").lower())
        assert weekday.number == day.weekday()


def test_a_copied_program_with_other_rules_has_its_own_version() -> None:
    """The version is computed once per program; a copy with changes must not inherit it."""
    program = load_program(EXAMPLES / "coffee.yaml")
    first = program.version
    changed = program.model_copy(update={"name": "Bean Points II"})
    assert changed.version != first
    assert changed.version == Program.model_validate(changed.model_dump()).version
    assert program.model_copy().version == first
