"""The query API's response documents, as its OpenAPI document describes them."""
from __future__ import annotations

from enum import Enum

from pydantic import BaseModel, Field

from domain.freshness import DESCRIPTION as FRESHNESS_DESCRIPTION
from domain.freshness import State

LAG_DESCRIPTION = ("Upper bound, in seconds, of the age of the oldest event the view may miss; 0 or null when "
                   "`current`; null when `lagging` with an unknown lag or when read from the write model.")


class ViewFreshness(str, Enum):
    """What an answer drawn from a view says of it (an answer from the write model is `write-model`)."""

    current = State.current.value
    lagging = State.lagging.value


class FromView(BaseModel):
    """An answer drawn from a view, saying how fresh it is."""

    freshness: ViewFreshness = Field(description=FRESHNESS_DESCRIPTION)
    lag_s: float | None = Field(description=LAG_DESCRIPTION)


class Error(BaseModel):
    code: str
    message: str
    field: str | None = None


class OrderItem(BaseModel):
    product_id: str
    product_name: str | None
    product_image: str | None
    quantity: int
    unit_price: str = Field(description="Decimal string, e.g. \"79.99\"")


class OrderView(BaseModel):
    order_id: str
    customer_id: str
    customer_name: str | None
    customer_email: str | None
    items: list[OrderItem]
    total: str = Field(description="Decimal string")
    status: str
    tracking_number: str | None
    created_at: str = Field(description="ISO-8601 UTC, e.g. 2024-05-01T10:00:00.000Z")
    updated_at: str | None
    last_seq: int | None = Field(description="Sequence number of the last order event reflected")
    freshness: State = Field(description=FRESHNESS_DESCRIPTION)
    lag_s: float | None = Field(description=LAG_DESCRIPTION)


class HistoryProduct(BaseModel):
    product_id: str
    name: str | None
    price: str
    image_url: str | None
    quantity: int


class HistoryOrder(BaseModel):
    order_id: str
    date: str
    total: str
    status: str
    products: list[HistoryProduct]
    last_seq: int | None


class CustomerOrders(FromView):
    customer_id: str
    orders: list[HistoryOrder]
    page: int
    size: int
    total: int


class ProductHit(BaseModel):
    product_id: str
    name: str
    category: str
    price: float
    price_text: str
    rating: float | None
    in_stock: bool
    image_url: str | None
    purchase_count: int


class SearchResults(FromView):
    results: list[ProductHit]
    total: int
    took_ms: int
    page: int
    size: int


class HourSales(BaseModel):
    hour: str = Field(description="00-23 (UTC)")
    orders: int
    revenue: str


class SalesDay(FromView):
    day: str
    orders: int
    revenue: str
    hours: list[HourSales]


class Sort(str, Enum):
    relevance = "relevance"
    price_asc = "price_asc"
    price_desc = "price_desc"
    rating = "rating"
    newest = "newest"
    popular = "popular"


RETRY_AFTER = {"Retry-After": {"description": "Seconds until a retry may succeed", "schema": {"type": "integer"}}}
ERRORS = {401: {"model": Error, "description": "A bearer token was sent but is malformed, expired, wrongly signed "
                                              "or not for this service"},
          422: {"model": Error, "description": "Invalid parameter (`field` names it)"},
          429: {"model": Error, "headers": RETRY_AFTER,
                "description": "The caller made more requests than RATE_LIMIT_PER_S / RATE_LIMIT_BURST allow"},
          503: {"model": Error, "headers": RETRY_AFTER,
                "description": "The query API is overloaded (`overloaded`), or a store the query needs is "
                               "unavailable (`service_unavailable`)"}}
PROTECTED = {**ERRORS,
             401: {"model": Error, "description": "No bearer token, or one that is malformed, expired, wrongly "
                                                 "signed or not for this service"},
             403: {"model": Error, "description": "The token's roles do not allow this read, or the data is "
                                                 "another customer's"}}
NOT_FOUND = {404: {"model": Error}}
