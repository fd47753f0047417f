"""`python -m tests.chaos [--short] [--duration S] [--rate R] [--outage-s S] [--seed N]`: one chaos run,
its table on stdout, exit status 0 only if it passed (see tests.chaos.report)."""
from __future__ import annotations

import signal
import sys

from tests.chaos.config import parse_args
from tests.chaos.run import run_chaos


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM ends the run like Ctrl-C: through its `finally`, which restores the stack."""
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    result = run_chaos(config)
    print(result.render(), flush=True)
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main())
