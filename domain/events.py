"""Domain events as the aggregates emit them, before the envelope (ids, time, correlation) is added.

Every event carries the aggregate's new version as its sequence number, so per aggregate the
sequence is gapless and strictly increasing; consumers rely on that to detect gaps and duplicates.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class AggregateType(StrEnum):
    ORDER = "order"
    PRODUCT = "product"
    CUSTOMER = "customer"

    @property
    def topic(self) -> str:
        return f"{self.value}-events"


EVENT_TYPES: dict[AggregateType, tuple[str, ...]] = {
    AggregateType.ORDER: ("OrderCreated", "ItemAdded", "ItemRemoved", "OrderCancelled", "OrderShipped",
                          "OrderDelivered"),
    AggregateType.PRODUCT: ("ProductCreated", "ProductUpdated", "StockChanged"),
    AggregateType.CUSTOMER: ("CustomerRegistered", "CustomerUpdated"),
}


@dataclass(frozen=True)
class DomainEvent:
    aggregate_type: AggregateType
    aggregate_id: str
    sequence_number: int
    event_type: str
    payload: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.event_type not in EVENT_TYPES[self.aggregate_type]:
            raise ValueError(f"{self.event_type} is not an event of {self.aggregate_type.value}")
        if self.sequence_number < 1:
            raise ValueError("sequence numbers start at 1")
