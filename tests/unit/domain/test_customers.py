from __future__ import annotations

import dataclasses

import pytest

from domain.customers import MAX_NAME, Customer, normalize_email, register_customer, update_customer
from domain.errors import InvalidCommand, RuleViolation
from domain.events import AggregateType, DomainEvent
from tests.unit.domain.helpers import expect_error


def register(name: str = "Ada Lovelace", email: str = "ada@example.com", *, email_taken: bool = False):
    return register_customer("c-1", name, email, email_taken=email_taken)


# --- register ---------------------------------------------------------------------------------------------------

def test_register_returns_version_1_customer_and_registered_event():
    customer, event = register("Ada Lovelace", "ada@example.com")
    assert customer == Customer("c-1", "Ada Lovelace", "ada@example.com", version=1)
    assert event == DomainEvent(AggregateType.CUSTOMER, "c-1", 1, "CustomerRegistered",
                                {"name": "Ada Lovelace", "email": "ada@example.com"})


def test_register_normalizes_name_and_email_in_state_and_event():
    customer, event = register("  Ada \t  Lovelace\n", "  Ada.Lovelace@Example.COM \t")
    assert (customer.name, customer.email) == ("Ada Lovelace", "ada.lovelace@example.com")
    assert event.payload == {"name": "Ada Lovelace", "email": "ada.lovelace@example.com"}


@pytest.mark.parametrize("name", ["", " ", "   \t\n  "])
def test_register_rejects_blank_name(name):
    with expect_error(InvalidCommand, "validation_error", "name"):
        register(name=name)


def test_name_length_limit():
    assert register(name="x" * MAX_NAME)[0].name == "x" * MAX_NAME
    with expect_error(InvalidCommand, "validation_error", "name"):
        register(name="x" * (MAX_NAME + 1))


def test_name_length_counts_after_whitespace_collapsing():
    name = "a" + " " * 50 + "b" * (MAX_NAME - 2)
    assert register(name=name)[0].name == "a " + "b" * (MAX_NAME - 2)


@pytest.mark.parametrize(("raw", "normalized"), [
    ("ada@example.com", "ada@example.com"),
    ("ADA@EXAMPLE.COM", "ada@example.com"),
    ("  Ada@Example.com  ", "ada@example.com"),
    ("\tada@example.com\n", "ada@example.com"),
    ("first.last+tag@sub.example.co.uk", "first.last+tag@sub.example.co.uk"),
    ("O'Brien@Example.ie", "o'brien@example.ie"),
    ("user_name-1@my-domain.example", "user_name-1@my-domain.example"),
    ("x@a.io", "x@a.io"),
    ("a@" + "b" * 63 + ".com", "a@" + "b" * 63 + ".com"),
])
def test_valid_emails_are_trimmed_and_lower_cased(raw, normalized):
    assert normalize_email(raw) == normalized


@pytest.mark.parametrize("email", [
    "",
    "   ",
    "plainaddress",
    "@example.com",
    "ada@",
    "ada@example",              # the domain needs at least one dot
    "ada@@example.com",
    "ada@exa@mple.com",
    "ada lovelace@example.com",
    "ada@exa mple.com",
    "ada@-example.com",
    "ada@example-.com",
    "ada@example..com",
    "ada@.example.com",
    "ada@example.com.",
    "ada@example_domain.com",
    "ada(comment)@example.com",
    "ada@" + "b" * 64 + ".com",  # a DNS label is at most 63 characters
    "a" * 245 + "@example.com",  # 257 characters: longer than 254
    "ada@example.com\nx",
])
def test_invalid_emails_are_rejected(email):
    with expect_error(InvalidCommand, "validation_error", "email"):
        normalize_email(email)
    with expect_error(InvalidCommand, "validation_error", "email"):
        register(email=email)


def test_email_length_limit_is_254():
    at_limit = "a" * (254 - len("@example.com")) + "@example.com"
    assert len(at_limit) == 254
    assert normalize_email(at_limit) == at_limit
    with expect_error(InvalidCommand, "validation_error", "email"):
        normalize_email("a" + at_limit)


def test_register_rejects_duplicate_email():
    with expect_error(RuleViolation, "duplicate_email", "email") as info:
        register(email="Ada@Example.com", email_taken=True)
    assert "ada@example.com" in info.value.message


def test_invalid_email_is_reported_before_duplicate():
    with expect_error(InvalidCommand, "validation_error", "email"):
        register(email="not-an-email", email_taken=True)


# --- update -----------------------------------------------------------------------------------------------------

def test_update_name_emits_customer_updated_with_next_version():
    customer, _ = register()
    updated, events = update_customer(customer, name="Ada King")
    assert updated == Customer("c-1", "Ada King", "ada@example.com", version=2)
    assert events == [DomainEvent(AggregateType.CUSTOMER, "c-1", 2, "CustomerUpdated",
                                  {"name": "Ada King", "email": "ada@example.com"})]
    assert customer.version == 1 and customer.name == "Ada Lovelace"  # the input is untouched


def test_update_email_is_normalized():
    customer, _ = register()
    updated, events = update_customer(customer, email="  Countess@Example.ORG ")
    assert updated == Customer("c-1", "Ada Lovelace", "countess@example.org", version=2)
    assert events == [DomainEvent(AggregateType.CUSTOMER, "c-1", 2, "CustomerUpdated",
                                  {"name": "Ada Lovelace", "email": "countess@example.org"})]


def test_update_name_and_email_together_is_one_event():
    customer, _ = register()
    updated, events = update_customer(customer, name="Ada King", email="king@example.com")
    assert updated.version == 2
    assert [(e.event_type, e.sequence_number, e.payload) for e in events] == [
        ("CustomerUpdated", 2, {"name": "Ada King", "email": "king@example.com"})]


@pytest.mark.parametrize("changes", [
    {},
    {"name": None, "email": None},
    {"name": "Ada Lovelace"},
    {"name": "  Ada   Lovelace "},
    {"email": "ada@example.com"},
    {"email": " ADA@example.COM "},
    {"name": "Ada Lovelace", "email": "Ada@Example.com"},
])
def test_no_op_update_emits_nothing_and_keeps_version(changes):
    customer, _ = register()
    updated, events = update_customer(customer, **changes)
    assert events == []
    assert updated is customer
    assert updated.version == 1


def test_no_op_email_update_is_not_a_duplicate_even_if_taken():
    customer, _ = register()
    updated, events = update_customer(customer, email="ADA@example.com", email_taken=True)
    assert (updated, events) == (customer, [])


def test_update_to_taken_email_is_rejected():
    customer, _ = register()
    with expect_error(RuleViolation, "duplicate_email", "email"):
        update_customer(customer, email="taken@example.com", email_taken=True)


def test_email_taken_is_ignored_when_only_the_name_changes():
    customer, _ = register()
    updated, events = update_customer(customer, name="Ada King", email_taken=True)
    assert updated.email == "ada@example.com"
    assert [e.sequence_number for e in events] == [2]


@pytest.mark.parametrize(("changes", "field"), [
    ({"name": ""}, "name"),
    ({"name": "   "}, "name"),
    ({"name": "x" * (MAX_NAME + 1)}, "name"),
    ({"email": ""}, "email"),
    ({"email": "nope"}, "email"),
    ({"name": "Fine", "email": "a@b"}, "email"),
])
def test_update_validates_like_register(changes, field):
    customer, _ = register()
    with expect_error(InvalidCommand, "validation_error", field):
        update_customer(customer, **changes)


def test_successive_updates_have_consecutive_sequence_numbers():
    customer, registered = register()
    stream = [registered]
    for change in ({"name": "A"}, {"name": "A"}, {"email": "b@example.com"}, {}, {"name": "C", "email": "c@ex.io"}):
        customer, events = update_customer(customer, **change)
        stream.extend(events)
    assert [(e.event_type, e.sequence_number) for e in stream] == [
        ("CustomerRegistered", 1), ("CustomerUpdated", 2), ("CustomerUpdated", 3), ("CustomerUpdated", 4)]
    assert customer == Customer("c-1", "C", "c@ex.io", version=4)


def test_customer_is_immutable():
    customer, _ = register()
    with pytest.raises(dataclasses.FrozenInstanceError):
        customer.email = "x@example.com"  # type: ignore[misc]
