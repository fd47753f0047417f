"""`cqrs token issue`: a signed bearer token for local use (demo, scripts, the dashboard page).

Signed with AUTH_JWT_SECRET, the key the local services verify with; with AUTH_JWKS_URL configured the
identity provider issues tokens and this command refuses. The token goes to stdout alone, so
`TOKEN=$(cqrs token issue --role admin)` works; nothing else is printed.
"""
from __future__ import annotations

import argparse
import re
import sys

from app.http.identity import MAX_TTL_S, issue_token
from app.settings import Settings
from domain.access import Role

TTL = re.compile(r"^([0-9]+)([smhd]?)$")
UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


class TokenArgumentError(ValueError):
    """A one-line reason the token cannot be issued."""


def parse_ttl(text: str) -> int:
    found = TTL.match(text.strip())
    if not found:
        raise TokenArgumentError(f"--ttl {text!r}: use a number with s, m, h or d, e.g. 1h")
    seconds = int(found.group(1)) * UNIT_S[found.group(2)]
    if not 0 < seconds <= MAX_TTL_S:
        raise TokenArgumentError(f"--ttl {text!r}: must be between 1s and {MAX_TTL_S // 86400}d")
    return seconds


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["issue"])
    parser.add_argument("--role", action="append", required=True, choices=[r.value for r in Role],
                        help="a role of the caller (repeat for several)")
    parser.add_argument("--customer-id", help="the customer a `customer` token acts for")
    parser.add_argument("--subject", help="the token's subject (default: customer:<id>, or the role)")
    parser.add_argument("--ttl", default="1h", help="lifetime, e.g. 30m, 1h, 7d (default 1h; at most 30d)")


def main(args: argparse.Namespace, settings: Settings) -> int:
    try:
        roles = [Role(r) for r in args.role]
        if Role.customer in roles and not args.customer_id:
            raise TokenArgumentError("--role customer needs --customer-id")
        if args.customer_id and Role.customer not in roles:
            raise TokenArgumentError("--customer-id is only for --role customer")
        subject = args.subject or (f"customer:{args.customer_id}" if args.customer_id else
                                   "+".join(r.value for r in roles))
        token = issue_token(settings, roles, subject=subject, customer_id=args.customer_id,
                            ttl_s=parse_ttl(args.ttl))
    except (TokenArgumentError, RuntimeError) as exc:
        print(f"cqrs token: {exc}", file=sys.stderr)
        return 2
    print(token)
    return 0
