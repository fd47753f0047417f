"""One module per external system: a ready client and a fail-fast `check` for each."""
from __future__ import annotations

from dataclasses import dataclass


class ServiceUnavailable(RuntimeError):
    """Raised when a service cannot be reached; its message is one line naming service, address and reason."""

    def __init__(self, service: str, address: str, reason: str) -> None:
        self.service = service
        self.address = address
        self.reason = " ".join(str(reason).split())[:300]
        super().__init__(f"{service} unreachable at {address}: {self.reason}")


@dataclass(frozen=True)
class ServiceInfo:
    service: str
    address: str
    version: str
