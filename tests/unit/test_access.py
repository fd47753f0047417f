"""Who may do what (domain/access.py): the rules both APIs apply, without HTTP."""
from __future__ import annotations

import pytest

from domain.access import (CATALOGUE, DASHBOARDS, Principal, Role, is_owner, principal_from_claims,
                           require_customer_access, require_role)
from domain.errors import Forbidden

ADA = Principal("customer:ada", frozenset({Role.customer}), "ada")
ADMIN = Principal("staff", frozenset({Role.admin}))
OPERATOR = Principal("ops", frozenset({Role.operator}))


def test_a_customer_reaches_only_their_own_data():
    require_customer_access(ADA, "ada")
    with pytest.raises(Forbidden) as refused:
        require_customer_access(ADA, "bob")
    assert refused.value.code == "not_owner" and refused.value.field == "customer_id"


def test_an_admin_reaches_every_customer_and_an_operator_none():
    require_customer_access(ADMIN, "bob")
    with pytest.raises(Forbidden) as refused:
        require_customer_access(OPERATOR, "bob")
    assert refused.value.code == "forbidden" and "admin or customer" in refused.value.message


@pytest.mark.parametrize("principal, allowed", [(ADA, False), (ADMIN, True), (OPERATOR, False)])
def test_only_admins_change_the_catalogue(principal: Principal, allowed: bool):
    if allowed:
        require_role(principal, *CATALOGUE)
    else:
        with pytest.raises(Forbidden):
            require_role(principal, *CATALOGUE)


@pytest.mark.parametrize("principal, allowed", [(ADA, False), (ADMIN, True), (OPERATOR, True)])
def test_dashboards_are_for_admins_and_operators(principal: Principal, allowed: bool):
    assert principal.has(*DASHBOARDS) is allowed


def test_claims_unknown_roles_are_ignored_and_a_customer_needs_an_id():
    assert principal_from_claims("x", ["auditor", "operator"], None).roles == frozenset({Role.operator})
    assert principal_from_claims("x", ["auditor"], None).roles == frozenset()
    with pytest.raises(ValueError, match="customer_id"):
        principal_from_claims("x", ["customer"], None)


def test_a_customer_id_without_the_customer_role_grants_nothing():
    admin = principal_from_claims("x", ["admin"], "ada")
    assert admin.customer_id is None and not is_owner(admin, "ada")
