"""Projection metrics (prometheus-client). Names are documented in the README."""
from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

EVENTS = Counter("projection_events_total", "Events seen by a projection, by outcome "
                 "(applied, duplicate, stale, redelivered, failed, dead_lettered, gap_expired, lost_to_retention)", ["projection", "outcome"])
BATCH_SIZE = Histogram("projection_batch_size", "Events per processed batch", ["projection"],
                       buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 5000))
SINK_LATENCY = Histogram("projection_sink_write_seconds", "Bulk write latency per sink", ["projection", "sink"],
                         buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
LAG_SECONDS = Gauge("projection_lag_seconds", "Now minus occurred_at of the last applied event", ["projection"])
LAST_APPLIED = Gauge("projection_last_applied_timestamp_seconds", "occurred_at of the last applied event",
                     ["projection"])
OFFSET_LAG = Gauge("projection_consumer_offset_lag", "High watermark minus next offset to consume",
                   ["projection", "topic", "partition"])
HELD = Gauge("projection_held_events", "Events held back waiting for a missing sequence number", ["projection"])
REREADS = Counter("projection_source_rereads_total", "Times a worker sought a partition back to re-read records "
                  "the consumer skipped", ["projection"])
READY = Gauge("projection_worker_ready", "1 once the worker has restored its tables and consumes its topics",
              ["projection"])
STORE_UP = Gauge("projection_store_up", "0 while a store the worker writes or reads is unavailable (the worker "
                 "waits with its partitions paused), 1 once it answers again", ["projection", "store"])
