"""Domain failures. Each carries a machine-readable code; the HTTP layer maps classes to status codes."""
from __future__ import annotations


class DomainError(Exception):
    code = "domain_error"

    def __init__(self, message: str, *, code: str | None = None, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.code
        self.field = field


class InvalidCommand(DomainError):
    """The command is malformed: a field has a value no rule could accept (HTTP 422)."""

    code = "validation_error"


class NotFound(DomainError):
    """The aggregate the command names does not exist (HTTP 404)."""

    code = "not_found"


class RuleViolation(DomainError):
    """A business rule forbids the command in the aggregate's current state (HTTP 409)."""

    code = "rule_violation"


class VersionConflict(DomainError):
    """The client's expected version (If-Match) is not the aggregate's current version (HTTP 412)."""

    code = "version_conflict"


class Forbidden(DomainError):
    """The caller is known but may not do this, or not to this customer's data (HTTP 403)."""

    code = "forbidden"
