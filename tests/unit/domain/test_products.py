from __future__ import annotations

import dataclasses
from decimal import Decimal

import pytest

from domain.errors import InvalidCommand, RuleViolation
from domain.events import AggregateType, DomainEvent
from domain.money import MAX_MONEY
from domain.products import MAX_TAGS, Product, change_stock, create_product, update_product
from tests.unit.domain.helpers import assert_cents, expect_error

DEFAULTS = dict(name="Widget", category="Tools", price=Decimal("19.99"), description="A widget",
                subcategory="Hand tools", tags=["metal", "small"], image_url="https://img.example/w.png", stock=10)


def make(**overrides) -> tuple[Product, DomainEvent]:
    return create_product("p-1", **{**DEFAULTS, **overrides})


def details(product: Product) -> dict:
    return {"name": product.name, "category": product.category, "subcategory": product.subcategory,
            "description": product.description, "tags": list(product.tags), "price": product.price,
            "image_url": product.image_url}


# --- create -----------------------------------------------------------------------------------------------------

def test_create_returns_version_1_product_and_created_event_with_details_and_stock():
    product, event = make()
    assert product == Product("p-1", "Widget", "Tools", "Hand tools", "A widget", ("metal", "small"),
                              Decimal("19.99"), "https://img.example/w.png", 10, version=1)
    assert event == DomainEvent(AggregateType.PRODUCT, "p-1", 1, "ProductCreated", {
        "name": "Widget", "category": "Tools", "subcategory": "Hand tools", "description": "A widget",
        "tags": ["metal", "small"], "price": Decimal("19.99"), "image_url": "https://img.example/w.png",
        "stock": 10})
    assert product.details() == {k: v for k, v in event.payload.items() if k != "stock"}


def test_create_with_only_required_fields_uses_defaults():
    product, event = create_product("p-2", name="Bolt", category="Hardware", price=Decimal("0.05"))
    assert product == Product("p-2", "Bolt", "Hardware", None, "", (), Decimal("0.05"), None, 0, version=1)
    assert event.payload["stock"] == 0 and event.payload["tags"] == []


def test_create_normalizes_text_fields():
    product, _ = make(name="  Big   Widget ", category=" Power\ttools ", subcategory="  Drills ",
                      description="  sharp  ", image_url="  https://img.example/x.png ")
    assert (product.name, product.category, product.subcategory, product.description, product.image_url) == \
        ("Big Widget", "Power tools", "Drills", "sharp", "https://img.example/x.png")


@pytest.mark.parametrize("blank", [None, "", "   "])
def test_create_turns_blank_optional_text_into_none(blank):
    product, event = make(subcategory=blank, image_url=blank)
    assert (product.subcategory, product.image_url) == (None, None)
    assert (event.payload["subcategory"], event.payload["image_url"]) == (None, None)


@pytest.mark.parametrize("field", ["name", "category"])
@pytest.mark.parametrize("blank", ["", "   ", "\t\n", None])
def test_create_requires_name_and_category(field, blank):
    with expect_error(InvalidCommand, "validation_error", field):
        make(**{field: blank})


@pytest.mark.parametrize(("price", "expected"), [
    (Decimal("0.01"), "0.01"), ("19.9", "19.90"), (5, "5.00"), (Decimal("1.005"), "1.00"),
    (MAX_MONEY, "9999999999.99"),
])
def test_create_price_is_exact_cents(price, expected):
    product, event = make(price=price)
    assert_cents(product.price, expected)
    assert_cents(event.payload["price"], expected)


@pytest.mark.parametrize("price", [
    Decimal("0"), Decimal("-0.01"), Decimal("-10"), "0.004",  # rounds to 0.00
    MAX_MONEY + Decimal("0.01"), Decimal("1e12"), Decimal("1e30"),
    "abc", "NaN", "Infinity",
])
def test_create_rejects_invalid_price(price):
    with expect_error(InvalidCommand, "validation_error", "price"):
        make(price=price)


def test_create_rejects_float_price():
    with pytest.raises(TypeError):
        make(price=19.99)


def test_create_stock_must_not_be_negative():
    assert make(stock=0)[0].stock == 0
    with expect_error(InvalidCommand, "validation_error", "stock"):
        make(stock=-1)


def test_tags_are_trimmed_lower_cased_deduplicated_in_first_seen_order():
    product, event = make(tags=[" Red ", "red", "BLUE", "", "   ", "Green", "blue"])
    assert product.tags == ("red", "blue", "green")
    assert event.payload["tags"] == ["red", "blue", "green"]


def test_tag_limit_counts_distinct_normalized_tags():
    assert len(make(tags=[f"t{i}" for i in range(MAX_TAGS)])[0].tags) == MAX_TAGS
    assert len(make(tags=[f"t{i}" for i in range(MAX_TAGS)] + ["T0", " t1 "])[0].tags) == MAX_TAGS
    with expect_error(InvalidCommand, "validation_error", "tags"):
        make(tags=[f"t{i}" for i in range(MAX_TAGS + 1)])


# --- update -----------------------------------------------------------------------------------------------------

def test_update_price_emits_product_updated_with_full_details_and_changed_list():
    product, _ = make()
    updated, events = update_product(product, price=Decimal("24.5"))
    assert updated == dataclasses.replace(product, price=Decimal("24.50"), version=2)
    assert_cents(updated.price, "24.50")
    assert events == [DomainEvent(AggregateType.PRODUCT, "p-1", 2, "ProductUpdated",
                                  {**details(updated), "changed": ["price"]})]
    assert events[0].payload["price"] == Decimal("24.50")
    assert "stock" not in events[0].payload


def test_update_several_fields_lists_only_the_changed_ones_sorted():
    product, _ = make()
    updated, events = update_product(product, name="Gadget", tags=["Small", "metal", "new"], category="Tools",
                                     description="A gadget", image_url=None)
    assert (updated.name, updated.tags, updated.description, updated.image_url, updated.version) == \
        ("Gadget", ("small", "metal", "new"), "A gadget", None, 2)
    assert len(events) == 1
    assert events[0].payload == {**details(updated), "changed": ["description", "image_url", "name", "tags"]}
    assert events[0].sequence_number == 2


@pytest.mark.parametrize("changes", [
    {},
    {"stock": None},
    {"name": "Widget"},
    {"name": "  Widget  "},
    {"category": "Tools"},
    {"price": Decimal("19.99")},
    {"price": "19.990"},
    {"description": " A widget "},
    {"subcategory": "Hand tools "},
    {"tags": ["METAL", "small", "metal"]},
    {"image_url": "https://img.example/w.png"},
    {"stock": 10},
    {**{k: v for k, v in DEFAULTS.items()}},
])
def test_no_op_update_emits_nothing_and_keeps_version(changes):
    product, _ = make()
    updated, events = update_product(product, **changes)
    assert events == []
    assert updated is product
    assert updated.version == 1


def test_update_with_the_same_raw_values_as_create_is_a_no_op():
    raw = dict(name=" Widget ", category="Tools", subcategory=" Hand tools ", description=" d ",
               tags=[" X "], image_url=" https://img.example/w.png ", price="3.5")
    product, _ = make(**raw)
    assert update_product(product, **raw) == (product, [])


@pytest.mark.parametrize(("field", "blank", "stored"), [
    ("subcategory", "", None), ("subcategory", None, None), ("image_url", "  ", None),
    ("description", None, ""), ("description", "  ", ""), ("tags", None, ()), ("tags", [], ()),
])
def test_update_clears_optional_fields(field, blank, stored):
    product, _ = make()
    updated, events = update_product(product, **{field: blank})
    assert getattr(updated, field) == stored
    assert events[0].payload["changed"] == [field]


def test_update_stock_only_emits_stock_changed_adjusted():
    product, _ = make(stock=10)
    updated, events = update_product(product, stock=4)
    assert updated == dataclasses.replace(product, stock=4, version=2)
    assert events == [DomainEvent(AggregateType.PRODUCT, "p-1", 2, "StockChanged",
                                  {"stock": 4, "delta": -6, "reason": "adjusted"})]


def test_update_stock_can_go_up_and_to_zero():
    product, _ = make(stock=10)
    up, up_events = update_product(product, stock=25)
    assert up_events[0].payload == {"stock": 25, "delta": 15, "reason": "adjusted"}
    zero, zero_events = update_product(up, stock=0)
    assert zero.stock == 0 and zero.version == 3
    assert zero_events[0].payload == {"stock": 0, "delta": -25, "reason": "adjusted"}
    assert zero_events[0].sequence_number == 3


def test_update_details_and_stock_emit_two_events_with_consecutive_versions():
    product, _ = make(stock=10)
    product = dataclasses.replace(product, version=7)
    updated, events = update_product(product, price=Decimal("9.99"), stock=12)
    assert (updated.price, updated.stock, updated.version) == (Decimal("9.99"), 12, 9)
    assert events == [
        DomainEvent(AggregateType.PRODUCT, "p-1", 8, "ProductUpdated",
                    {**details(updated), "changed": ["price"]}),
        DomainEvent(AggregateType.PRODUCT, "p-1", 9, "StockChanged", {"stock": 12, "delta": 2, "reason": "adjusted"}),
    ]


def test_update_negative_stock_is_rejected_even_with_other_changes():
    product, _ = make()
    with expect_error(InvalidCommand, "validation_error", "stock"):
        update_product(product, stock=-1)
    with expect_error(InvalidCommand, "validation_error", "stock"):
        update_product(product, name="Other", stock=-5)


@pytest.mark.parametrize(("changes", "field"), [
    ({"colour": "red"}, "colour"),
    ({"version": 5}, "version"),
    ({"product_id": "p-2"}, "product_id"),
    ({"zeta": 1, "alpha": 2, "name": "ok"}, "alpha"),
])
def test_update_rejects_unknown_fields(changes, field):
    product, _ = make()
    with expect_error(InvalidCommand, "validation_error", field):
        update_product(product, **changes)


@pytest.mark.parametrize(("changes", "field"), [
    ({"name": ""}, "name"), ({"name": None}, "name"), ({"category": "  "}, "category"),
    ({"price": Decimal("0")}, "price"), ({"price": Decimal("-1")}, "price"), ({"price": "1e30"}, "price"),
    ({"tags": [f"t{i}" for i in range(MAX_TAGS + 1)]}, "tags"),
])
def test_update_validates_like_create(changes, field):
    product, _ = make()
    with expect_error(InvalidCommand, "validation_error", field):
        update_product(product, **changes)


def test_update_rejects_float_price():
    product, _ = make()
    with pytest.raises(TypeError):
        update_product(product, price=1.5)


# --- change_stock -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("delta", "reason", "level"), [(-3, "reserved", 7), (-10, "reserved", 0), (5, "released", 15)])
def test_change_stock_emits_new_level_delta_reason_and_next_version(delta, reason, level):
    product, _ = make(stock=10)
    product = dataclasses.replace(product, version=4)
    updated, event = change_stock(product, delta, reason=reason)
    assert updated == dataclasses.replace(product, stock=level, version=5)
    assert event == DomainEvent(AggregateType.PRODUCT, "p-1", 5, "StockChanged",
                                {"stock": level, "delta": delta, "reason": reason})
    assert product.stock == 10 and product.version == 4  # the input is untouched


@pytest.mark.parametrize(("stock", "delta"), [(10, -11), (0, -1), (3, -100)])
def test_change_stock_never_goes_negative(stock, delta):
    product, _ = make(stock=stock)
    with expect_error(RuleViolation, "insufficient_stock", "items") as info:
        change_stock(product, delta, reason="reserved")
    assert f"{stock} available, {-delta} requested" in info.value.message


def test_product_is_immutable():
    product, _ = make()
    with pytest.raises(dataclasses.FrozenInstanceError):
        product.stock = 0  # type: ignore[misc]
