from __future__ import annotations

import dataclasses

import pytest

from domain.errors import DomainError, InvalidCommand, NotFound, RuleViolation, VersionConflict
from domain.events import EVENT_TYPES, AggregateType, DomainEvent


@pytest.mark.parametrize(("aggregate", "value", "topic"), [
    (AggregateType.ORDER, "order", "order-events"),
    (AggregateType.PRODUCT, "product", "product-events"),
    (AggregateType.CUSTOMER, "customer", "customer-events"),
])
def test_aggregate_type_values_and_topics(aggregate, value, topic):
    assert aggregate.value == value
    assert aggregate == value
    assert aggregate.topic == topic


def test_event_types_per_aggregate():
    assert EVENT_TYPES == {
        AggregateType.ORDER: ("OrderCreated", "ItemAdded", "ItemRemoved", "OrderCancelled", "OrderShipped",
                              "OrderDelivered"),
        AggregateType.PRODUCT: ("ProductCreated", "ProductUpdated", "StockChanged"),
        AggregateType.CUSTOMER: ("CustomerRegistered", "CustomerUpdated"),
    }


@pytest.mark.parametrize(("aggregate", "event_type"),
                         [(a, t) for a, types in EVENT_TYPES.items() for t in types])
def test_every_declared_event_type_is_accepted_for_its_aggregate(aggregate, event_type):
    event = DomainEvent(aggregate, "id-1", 1, event_type, {"k": "v"})
    assert (event.aggregate_type, event.aggregate_id, event.sequence_number, event.event_type, event.payload) == \
        (aggregate, "id-1", 1, event_type, {"k": "v"})


@pytest.mark.parametrize(("aggregate", "event_type"),
                         [(a, t) for a in AggregateType for other, types in EVENT_TYPES.items() if other != a
                          for t in types])
def test_event_type_of_another_aggregate_is_rejected(aggregate, event_type):
    with pytest.raises(ValueError, match=f"{event_type} is not an event of {aggregate.value}"):
        DomainEvent(aggregate, "id-1", 1, event_type)


@pytest.mark.parametrize("event_type", ["", "Unknown", "ordercreated", "ORDERCREATED", "OrderCreated "])
def test_unknown_event_type_is_rejected(event_type):
    with pytest.raises(ValueError, match="is not an event of order"):
        DomainEvent(AggregateType.ORDER, "o-1", 1, event_type)


@pytest.mark.parametrize("sequence_number", [0, -1, -100])
def test_sequence_numbers_start_at_one(sequence_number):
    with pytest.raises(ValueError, match="sequence numbers start at 1"):
        DomainEvent(AggregateType.ORDER, "o-1", sequence_number, "OrderCreated")


@pytest.mark.parametrize("sequence_number", [1, 2, 10_000])
def test_positive_sequence_numbers_are_accepted(sequence_number):
    assert DomainEvent(AggregateType.ORDER, "o-1", sequence_number, "OrderShipped").sequence_number == sequence_number


def test_payload_defaults_to_a_fresh_empty_dict():
    first = DomainEvent(AggregateType.ORDER, "o-1", 1, "OrderDelivered")
    second = DomainEvent(AggregateType.ORDER, "o-2", 1, "OrderDelivered")
    assert first.payload == {} and second.payload == {}
    assert first.payload is not second.payload


def test_events_are_immutable_and_compare_by_value():
    event = DomainEvent(AggregateType.CUSTOMER, "c-1", 3, "CustomerUpdated", {"name": "A"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.sequence_number = 4  # type: ignore[misc]
    assert event == DomainEvent(AggregateType.CUSTOMER, "c-1", 3, "CustomerUpdated", {"name": "A"})
    assert event != DomainEvent(AggregateType.CUSTOMER, "c-1", 4, "CustomerUpdated", {"name": "A"})


@pytest.mark.parametrize(("cls", "code"), [
    (DomainError, "domain_error"),
    (InvalidCommand, "validation_error"),
    (NotFound, "not_found"),
    (RuleViolation, "rule_violation"),
    (VersionConflict, "version_conflict"),
])
def test_error_default_codes(cls, code):
    error = cls("went wrong")
    assert isinstance(error, DomainError)
    assert (error.code, error.field, error.message, str(error)) == (code, None, "went wrong", "went wrong")


def test_error_code_and_field_can_be_specialised_per_instance():
    error = RuleViolation("too small", code="below_minimum_total", field="items")
    assert (error.code, error.field, error.message) == ("below_minimum_total", "items", "too small")
    assert RuleViolation.code == "rule_violation"  # the class default is untouched
    assert RuleViolation("other").code == "rule_violation"
