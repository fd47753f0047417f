"""Consistency tokens: what a command's answer gives a reader to pass back, and what is refused."""
from __future__ import annotations

import pytest

from domain.consistency import HEADER, MAX_ENTRIES, parse_token, token_for
from domain.errors import InvalidCommand


def test_a_token_names_orders_and_their_least_versions() -> None:
    token = ",".join([token_for("order", "o-1", 2), token_for("order", "ord:x.9", 1), "order:o-1@1"])
    assert parse_token(token) == {"o-1": 2, "ord:x.9": 1}
    assert parse_token(None) == {} and parse_token("  ") == {}
    assert parse_token(" order:a@3 , order:b@4 ") == {"a": 3, "b": 4}


@pytest.mark.parametrize("bad", ["order:a", "order:a@0", "order:a@-1", "customer:a@1", "order:a@1,,order:b@2",
                                 "order:" + "x" * 65 + "@1", "order:a b@1", "order:a@1x"])
def test_a_malformed_token_is_refused_naming_the_header(bad: str) -> None:
    with pytest.raises(InvalidCommand) as refused:
        parse_token(bad)
    assert refused.value.field == HEADER


def test_a_token_names_a_bounded_number_of_aggregates() -> None:
    parse_token(",".join(f"order:o{i}@1" for i in range(MAX_ENTRIES)))
    with pytest.raises(InvalidCommand, match=str(MAX_ENTRIES)):
        parse_token(",".join(f"order:o{i}@1" for i in range(MAX_ENTRIES + 1)))
