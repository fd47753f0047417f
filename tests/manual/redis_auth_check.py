"""By-hand check of the local stack's Redis ACL on a throwaway Redis, never the shared one.

    .venv/bin/python -m tests.manual.redis_auth_check [--state /tmp/cqrs-alt] [--port 16379] [--keep]

Starts Redis with the stack's own recipe (deploy/local/services/redis.py) under CQRS_STATE_DIR=<state> on
REDIS_PORT=<port>, which generates <state>/secrets, then checks that:
  1. a client without credentials gets NOAUTH (the `default` user is off);
  2. a wrong password is refused;
  3. connectors.redis's sync and async clients, with Settings() that find <state>/secrets by the
     default rule (CQRS_STATE_DIR, no CQRS_SECRETS_DIR), get PONG;
  4. the recipe's own probe (AUTH, PING, INFO) is healthy.
Stops that Redis afterwards and, unless --keep, deletes <state>. Exit status 0 when all hold.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--state", default="/tmp/cqrs-alt")
    parser.add_argument("--port", type=int, default=16379)
    parser.add_argument("--keep", action="store_true", help="keep the state dir")
    args = parser.parse_args(argv)
    if args.port == 6379:
        parser.error("6379 is the shared stack's Redis: use another port")
    os.environ["CQRS_STATE_DIR"] = args.state
    os.environ["REDIS_PORT"] = str(args.port)
    os.environ.pop("CQRS_SECRETS_DIR", None)
    os.environ.pop("REDIS_URL", None)

    import redis

    from app.settings import Settings
    from connectors import redis as redis_connector
    from deploy.local.base import StackPaths
    from deploy.local.services.redis import Redis

    paths = StackPaths.from_env()
    service = Redis()
    paths.ensure_layout()
    service.start(paths)
    failures: list[str] = []
    try:
        deadline = time.monotonic() + 30
        while not (health := service.probe(paths)).healthy and time.monotonic() < deadline:
            time.sleep(0.3)
        print(f"recipe probe: healthy={health.healthy} {health.version} {health.detail}")
        if not health.healthy:
            failures.append(f"probe: {health.detail}")

        anonymous = redis.Redis(host="127.0.0.1", port=args.port, socket_connect_timeout=2)
        try:
            anonymous.ping()
            failures.append("unauthenticated PING answered")
        except redis.AuthenticationError as exc:
            print(f"unauthenticated PING refused: {type(exc).__name__}: {exc}")
        except redis.ResponseError as exc:
            print(f"unauthenticated PING refused: {type(exc).__name__}: {exc}")
            if "NOAUTH" not in str(exc):
                failures.append(f"unexpected refusal: {exc}")
        finally:
            anonymous.close()

        url = f"redis://127.0.0.1:{args.port}/0"
        settings = Settings(redis_url=url)
        print(f"settings: redis_username={settings.redis_username} redis_password={settings.redis_password!r}")
        wrong = redis_connector.redis_client(settings.model_copy(update={"redis_password": "wrong"}))
        try:
            wrong.ping()
            failures.append("a wrong password was accepted")
        except redis.AuthenticationError as exc:
            print(f"wrong password refused: {exc}")
        finally:
            wrong.close()

        client = redis_connector.redis_client(settings)
        print(f"connectors.redis sync PING: {client.ping()}")
        client.close()

        async def ping() -> bool:
            aclient = redis_connector.async_redis_client(settings)
            try:
                return await aclient.ping()
            finally:
                await aclient.aclose()
        print(f"connectors.redis async PING: {asyncio.run(ping())}")
        print(f"connectors.redis check: {redis_connector.check(settings)}")
    except Exception as exc:  # noqa: BLE001 - reported as a failure
        failures.append(f"{type(exc).__name__}: {exc}")
    finally:
        service.stop(paths)
        if not args.keep:
            shutil.rmtree(args.state, ignore_errors=True)
    for failure in failures:
        print(f"FAIL {failure}")
    print("OK" if not failures else f"{len(failures)} failure(s)")
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
