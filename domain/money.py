"""Money is Decimal with two places, never float: totals are exact."""
from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation

CENT = Decimal("0.01")
MAX_MONEY = Decimal("9999999999.99")


def money(value: Decimal | int | str) -> Decimal:
    """Exact two-place Decimal; rejects floats so binary rounding never leaks into a total."""
    if isinstance(value, float):
        raise TypeError("money must not be a float")
    try:
        amount = Decimal(value)
    except InvalidOperation as exc:
        raise ValueError(f"not a decimal amount: {value!r}") from exc
    if not amount.is_finite():
        raise ValueError(f"not a finite amount: {value!r}")
    try:
        return amount.quantize(CENT, rounding=ROUND_HALF_EVEN)
    except InvalidOperation as exc:
        raise ValueError(f"amount out of range: {value!r}") from exc
