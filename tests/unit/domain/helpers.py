"""Assertion helpers shared by the domain unit tests."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal

import pytest

from domain.errors import DomainError


@contextmanager
def expect_error(cls: type[DomainError], code: str, field: str | None) -> Iterator[pytest.ExceptionInfo]:
    """The block raises exactly `cls` (not a subclass or sibling) with this code and field."""
    with pytest.raises(DomainError) as info:
        yield info
    assert type(info.value) is cls, f"expected {cls.__name__}, got {type(info.value).__name__}: {info.value}"
    assert info.value.code == code
    assert info.value.field == field
    assert str(info.value) == info.value.message


def assert_cents(amount: Decimal, expected: str) -> None:
    """Exactly this two-place Decimal, digit for digit (Decimal('10.5') == Decimal('10.50') is not enough)."""
    assert isinstance(amount, Decimal)
    assert str(amount) == expected
    assert amount.as_tuple().exponent == -2
