"""The knobs of one chaos run, the long and short presets, and the command-line flags that set them.

Every duration here is a bound: a run with these settings ends by itself, whatever the pipeline does.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field, replace
from pathlib import Path

FAILPOINTS = ("after-sink-write:0.2", "order-views.between-writes:0.3", "sales-stats.between-writes:0.3")
STORES = ("ferretdb", "elasticsearch", "redis")
FAULT_KINDS = ("kill", "failpoint", "kafka-restart", "outage")


@dataclass(frozen=True)
class ChaosConfig:
    """One run: traffic, the faults, and the limits the verdict uses."""

    duration_s: float = 330.0          # command traffic (extended while the last fault is still running)
    rate: float = 40.0                 # commands per second, open loop
    read_share: float = 0.15           # extra query-API reads, as a share of the command rate
    max_in_flight: int = 64            # requests without an answer yet; beyond it a due request is shed
    outage_s: float = 40.0             # how long each read store stays down
    kills: int = 6                     # plain SIGKILLs of a random worker
    failpoints: tuple[str, ...] = FAILPOINTS
    combine_failpoints: bool = False   # one armed incarnation with every point (short) or one fault each
    kafka_restarts: int = 1
    stores: tuple[str, ...] = STORES
    only: tuple[str, ...] = ()         # fault kinds to run (empty: all); for development runs
    seed: int = 1
    workers_per_projection: int = 2
    customers: int = 60
    products: int = 40
    warmup_s: float = 15.0             # traffic before the first fault
    gap_s: float = 5.0                 # quiet time between one fault's recovery and the next fault
    restart_delay_s: tuple[float, float] = (1.0, 3.0)   # a supervisor restarts an exited worker after this
    failpoint_window_s: float = 45.0   # how long an armed worker may take to fire (it joins its group first)
    recovery_timeout_s: float = 120.0  # past it, a fault is reported "not recovered"
    recovery_limit_s: float = 15.0     # the verdict: every store's or Kafka's recovery at most this
    settle_timeout_s: float = 180.0    # final catch-up after traffic stopped
    upkeep_s: float = 30.0             # time allowed for periodic copies (dirty products) before counting
    sample_orders: int = 300           # orders read twice through the query API (0: all)
    sample_customers: int = 60         # customers whose history is read twice (0: all)
    redis_db: int | None = None        # isolated Redis database (None: the first empty one of 10-15)
    run_dir: Path | None = None
    short: bool = False
    extra_env: dict[str, str] = field(default_factory=dict)   # added to every worker's environment

    @property
    def label(self) -> str:
        return "short" if self.short else "long"


LONG = ChaosConfig()
# Short: half the rate (2 cores also restart Elasticsearch and Kafka during the run); no plain kills: the failpoint
# fault SIGKILLs a worker under traffic and restarts it armed with every point.
SHORT = ChaosConfig(duration_s=30.0, rate=20.0, outage_s=8.0, kills=0, combine_failpoints=True, warmup_s=6.0,
                    gap_s=1.0, customers=30, products=25, recovery_timeout_s=60.0,
                    settle_timeout_s=90.0, upkeep_s=20.0, sample_orders=150, sample_customers=30, short=True)


def parse_args(argv: list[str] | None = None) -> ChaosConfig:
    parser = argparse.ArgumentParser(
        prog="python -m tests.chaos",
        description="Fault-injection run: open-loop traffic while workers die, Kafka restarts and each read store "
                    "goes away; then every read model is compared with the write model. Exit 0 only if nothing "
                    "differs, no command got a 5xx, no worker exited by itself during a store outage and every "
                    "fault recovered within the limit.")
    parser.add_argument("--short", action="store_true",
                        help="preset: 30 s of traffic at 20/s (extended while faults run), 8 s outages, one worker "
                             "SIGKILLed and restarted armed with every failpoint")
    parser.add_argument("--duration", type=float, help="seconds of command traffic (long default 330)")
    parser.add_argument("--rate", type=float, help="commands per second (long 40, short 20)")
    parser.add_argument("--outage-s", type=float, help="seconds each read store stays down (long 40, short 8)")
    parser.add_argument("--kills", type=int, help="plain SIGKILLs of a random worker (long 6, short 0)")
    parser.add_argument("--seed", type=int, help="seed of the catalogue, the traffic and the fault plan")
    parser.add_argument("--only", help=f"comma-separated fault kinds to run, of {', '.join(FAULT_KINDS)}")
    parser.add_argument("--stores", help=f"comma-separated stores to take down, of {', '.join(STORES)}")
    parser.add_argument("--redis-db", type=int, help="isolated Redis database (default: first empty of 10-15)")
    parser.add_argument("--run-dir", type=Path, help="where process logs go (default: a new temporary directory)")
    args = parser.parse_args(argv)
    config = SHORT if args.short else LONG
    changes: dict = {}
    for flag, name in (("duration", "duration_s"), ("rate", "rate"), ("outage_s", "outage_s"), ("kills", "kills"),
                       ("seed", "seed"), ("redis_db", "redis_db"), ("run_dir", "run_dir")):
        if getattr(args, flag) is not None:
            changes[name] = getattr(args, flag)
    if args.only:
        kinds = tuple(k.strip() for k in args.only.split(",") if k.strip())
        unknown = [k for k in kinds if k not in FAULT_KINDS]
        if unknown:
            parser.error(f"--only: unknown fault kind(s) {', '.join(unknown)}; known: {', '.join(FAULT_KINDS)}")
        changes["only"] = kinds
    if args.stores:
        stores = tuple(s.strip() for s in args.stores.split(",") if s.strip())
        if any(s not in STORES for s in stores):
            parser.error(f"--stores: choose from {', '.join(STORES)}")
        changes["stores"] = stores
    if changes.get("rate", 1) <= 0 or changes.get("duration_s", 1) <= 0 or changes.get("outage_s", 1) <= 0:
        parser.error("--rate, --duration and --outage-s must be positive")
    return replace(config, **changes)
