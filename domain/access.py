"""Who may do what: the callers' roles and the object-level rules both APIs apply.

Pure decisions on a `Principal` (who the verified token says the caller is) and, where the rule is about
one customer's data, the owning customer id. The HTTP layer turns `Forbidden` into 403; a caller
without a valid token never gets here (401).

- `customer`: acts for one customer (`customer_id`): places, changes and cancels that customer's orders,
  reads them and that customer's history, updates that customer's profile.
- `admin`: the catalogue, registering customers, shipping and delivery, any customer's orders, the
  dashboards and operations endpoints.
- `operator`: runs the pipeline: metrics, the operations page and its data, the sales dashboard; no
  customer data and no commands.
Product search is public: the catalogue is what the shop shows every visitor.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from domain.errors import Forbidden


class Role(str, Enum):
    customer = "customer"
    admin = "admin"
    operator = "operator"


@dataclass(frozen=True)
class Principal:
    """The verified caller: the token's subject, its known roles and, for a customer, whose data it is."""

    subject: str
    roles: frozenset[Role]
    customer_id: str | None = None

    def has(self, *roles: Role) -> bool:
        return any(role in self.roles for role in roles)


def principal_from_claims(subject: str, roles: list[str], customer_id: str | None) -> Principal:
    """Unknown role names are ignored (an identity provider may carry others); a `customer` role without
    a customer id grants nothing, so such a token is refused rather than half-trusted."""
    known = frozenset(Role(r) for r in roles if r in Role._value2member_map_)
    if Role.customer in known and not customer_id:
        raise ValueError("a customer token must carry customer_id")
    return Principal(subject=subject, roles=known, customer_id=customer_id if Role.customer in known else None)


def require_role(principal: Principal, *roles: Role) -> None:
    if not principal.has(*roles):
        raise Forbidden(f"this needs the role {' or '.join(r.value for r in roles)}", code="forbidden")


def is_owner(principal: Principal, customer_id: str) -> bool:
    return Role.customer in principal.roles and principal.customer_id == customer_id


def require_customer_access(principal: Principal, customer_id: str) -> None:
    """A customer's own data, or an admin. Used for reads and for changes a customer may make."""
    if principal.has(Role.admin) or is_owner(principal, customer_id):
        return
    if Role.customer in principal.roles:
        raise Forbidden("a customer may only act on their own orders and profile", code="not_owner",
                        field="customer_id")
    require_role(principal, Role.admin, Role.customer)


CATALOGUE = (Role.admin,)
FULFILMENT = (Role.admin,)
REGISTRATION = (Role.admin,)
DASHBOARDS = (Role.admin, Role.operator)
OPERATIONS = (Role.admin, Role.operator)
