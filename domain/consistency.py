"""Consistency tokens: what a reader asks a view to reflect before it answers (read-your-writes).

A command's answer carries `Consistency-Token: order:<id>@<version>` for the order it changed; a reader
passes it back, joined with others by commas (`order:a@1,order:b@3`), and the query API waits, bounded,
until the view reflects at least those versions. Versions are the aggregates' sequence numbers.
"""
from __future__ import annotations

import re

from domain.errors import InvalidCommand

HEADER = "Consistency-Token"
MAX_ENTRIES = 50
ENTRY = re.compile(r"order:(?P<id>[A-Za-z0-9_.:-]{1,64})@(?P<version>[1-9][0-9]{0,9})")


def token_for(kind: str, aggregate_id: str, version: int) -> str:
    return f"{kind}:{aggregate_id}@{version}"


def parse_token(text: str | None) -> dict[str, int]:
    """Order id -> the least version the answer must reflect. A malformed token is refused (422), naming
    the header, rather than ignored: a reader relying on it would otherwise get no guarantee silently."""
    if text is None or not text.strip():
        return {}
    entries = [part.strip() for part in text.split(",")]
    if len(entries) > MAX_ENTRIES:
        raise InvalidCommand(f"a consistency token names at most {MAX_ENTRIES} aggregates", field=HEADER)
    wanted: dict[str, int] = {}
    for entry in entries:
        match = ENTRY.fullmatch(entry)
        if match is None:
            raise InvalidCommand(f"consistency token entry {entry[:80]!r} is not order:<id>@<version>", field=HEADER)
        order_id, version = match["id"], int(match["version"])
        wanted[order_id] = max(version, wanted.get(order_id, 0))
    return wanted
