import pytest


@pytest.fixture(autouse=True)
def _needs_stack(stack):
    """Every integration test runs against the real local stack."""
    return stack
