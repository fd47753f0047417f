from __future__ import annotations

from decimal import Decimal

import pytest

from domain.money import CENT, MAX_MONEY, money
from tests.unit.domain.helpers import assert_cents


@pytest.mark.parametrize(("value", "expected"), [
    (Decimal("19.99"), "19.99"),
    ("19.99", "19.99"),
    ("19.9", "19.90"),
    ("  7.5 ", "7.50"),
    (5, "5.00"),
    (0, "0.00"),
    ("-3.1", "-3.10"),
    ("1e2", "100.00"),
    (Decimal("0.1") + Decimal("0.2"), "0.30"),
    (MAX_MONEY, "9999999999.99"),
])
def test_money_is_an_exact_two_place_decimal(value, expected):
    assert_cents(money(value), expected)


@pytest.mark.parametrize(("value", "expected"), [
    ("1.005", "1.00"),   # half-even: tie goes to the even cent
    ("1.015", "1.02"),
    ("1.025", "1.02"),
    ("2.675", "2.68"),   # the classic float trap (2.675 is 2.67499... as a float)
    ("0.004", "0.00"),
    ("0.006", "0.01"),
    ("1.0049", "1.00"),
    ("1.0051", "1.01"),
    ("-1.015", "-1.02"),
])
def test_money_rounds_to_cents_half_even(value, expected):
    assert_cents(money(value), expected)


def test_cent_constant():
    assert CENT == Decimal("0.01")
    assert_cents(MAX_MONEY, "9999999999.99")


def test_money_sums_without_float_drift():
    assert 0.1 * 3 != 0.3 and 0.1 + 0.2 != 0.3  # what the float path would get wrong
    assert money("0.10") * 3 == Decimal("0.30")
    assert money("0.10") + money("0.20") == Decimal("0.30")
    assert_cents(money(money("0.10") * 3 + money("0.20")), "0.50")
    assert_cents(money(sum((money("0.01") for _ in range(1000)), Decimal(0))), "10.00")


@pytest.mark.parametrize("value", [0.1, 1.0, 0.0, 19.99, float("nan"), float("inf")])
def test_money_rejects_floats(value):
    with pytest.raises(TypeError, match="float"):
        money(value)


@pytest.mark.parametrize("value", ["NaN", "-NaN", "sNaN", "Infinity", "-Infinity", "inf",
                                   Decimal("NaN"), Decimal("Infinity"), Decimal("-Infinity")])
def test_money_rejects_non_finite_amounts(value):
    with pytest.raises(ValueError, match="not a finite amount"):
        money(value)


@pytest.mark.parametrize("value", ["", "abc", "1,00", "1.2.3", "$5", "five"])
def test_money_rejects_non_decimal_strings(value):
    with pytest.raises(ValueError, match="not a decimal amount"):
        money(value)


@pytest.mark.parametrize("value", ["1e26", "1e30", Decimal("-1e40")])
def test_money_rejects_amounts_too_large_to_hold_in_cents_with_value_error(value):
    with pytest.raises(ValueError, match="out of range"):
        money(value)
