"""Customer aggregate: a name and a unique, valid email."""
from __future__ import annotations

import re
from dataclasses import dataclass, replace

from domain.errors import InvalidCommand, RuleViolation
from domain.events import AggregateType, DomainEvent

EMAIL = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                   r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$")
MAX_NAME = 200


@dataclass(frozen=True)
class Customer:
    customer_id: str
    name: str
    email: str
    version: int


def _valid_name(name: str) -> str:
    cleaned = " ".join(name.split())
    if not cleaned:
        raise InvalidCommand("name must not be blank", field="name")
    if len(cleaned) > MAX_NAME:
        raise InvalidCommand(f"name longer than {MAX_NAME} characters", field="name")
    return cleaned


def normalize_email(email: str) -> str:
    """Emails compare case-insensitively; the stored form is trimmed and lower-cased."""
    cleaned = email.strip().lower()
    if len(cleaned) > 254 or not EMAIL.match(cleaned):
        raise InvalidCommand(f"not a valid email address: {email!r}", field="email")
    return cleaned


def _email_free(email: str, email_taken: bool) -> None:
    if email_taken:
        raise RuleViolation(f"email {email} is already registered", code="duplicate_email", field="email")


def register_customer(customer_id: str, name: str, email: str, *, email_taken: bool) -> tuple[Customer, DomainEvent]:
    customer = Customer(customer_id, _valid_name(name), normalize_email(email), version=1)
    _email_free(customer.email, email_taken)
    return customer, DomainEvent(AggregateType.CUSTOMER, customer_id, 1, "CustomerRegistered",
                                 {"name": customer.name, "email": customer.email})


def update_customer(customer: Customer, *, name: str | None = None, email: str | None = None,
                    email_taken: bool = False) -> tuple[Customer, list[DomainEvent]]:
    new_name = _valid_name(name) if name is not None else customer.name
    new_email = normalize_email(email) if email is not None else customer.email
    if (new_name, new_email) == (customer.name, customer.email):
        return customer, []
    if new_email != customer.email:
        _email_free(new_email, email_taken)
    updated = replace(customer, name=new_name, email=new_email, version=customer.version + 1)
    return updated, [DomainEvent(AggregateType.CUSTOMER, customer.customer_id, updated.version, "CustomerUpdated",
                                 {"name": new_name, "email": new_email})]
