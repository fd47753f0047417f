"""The live operations dashboard of the query API: `GET /dashboard` (one self-contained HTML page) and
`GET /api/ops/pipeline` (the JSON it polls).

Per projection the JSON gives the totals `cqrs lag` computes (app/lag.py `LagReader`, reused here):
committed offsets, end offsets, offset lag and event-time lag, plus a throughput in events/s. The
throughput is the change of the group's position (end minus offset lag, summed over its partitions)
between the two most recent samples, divided by the seconds between them; it is null until a second
sample exists and never negative (a group that was deleted and started again reads 0).

Samples live in a ring in this process (`Samples`): at most one per `MIN_SAMPLE_INTERVAL_S`, none older
than `WINDOW_S`, so memory is bounded whoever polls. A call within `MIN_SAMPLE_INTERVAL_S` of the last
sample is answered with that sample, so many open pages cost Kafka one sample a second at most.

Dead letters (`DeadLetterTally`) are counted per projection from the `dlq.projection` header,
incrementally: each call reads on from where the previous one stopped, at most `DLQ_MAX_RECORDS_PER_CALL`
records and `connect_timeout_s` seconds; `pending` says how many are still to be counted. `total` is
what the topic holds now; the per-projection counts include letters retention has deleted since they
were counted.

Rebuilds in progress are the consumer groups named `cqrs-<projection>-rebuild*` that exist in Kafka,
each with its lag on the projection's source topics.

Every Kafka call is bounded by `connect_timeout_s` and runs in a worker thread; an unreachable Kafka
(or schema registry) answers 503 `service_unavailable` naming the service, missing topics 503
`not_set_up`, and the page then shows a banner instead of numbers it does not have. Like /readyz, both
routes are operational and left out of the OpenAPI document, which describes the read-model queries.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import html
import json
import time
import uuid
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Annotated, Any

import orjson
from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient
from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from agents.dead_letters import DLQ_TOPIC, describe
from app.http.errors import error_body
from app.lag import LagError, LagReader, LagRow, LagTotal, totals
from app.projections import PROJECTIONS, consumer_group
from app.settings import Settings
from connectors import ServiceUnavailable, kafka

WINDOW_S = 600.0
MIN_SAMPLE_INTERVAL_S = 1.0
DLQ_MAX_RECORDS_PER_CALL = 20_000
DEFAULT_REFRESH_S = 2
UNKNOWN_PROJECTION = "?"

router = APIRouter()


# ---- samples --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Point:
    """One projection at one sample: totals over its partitions and the throughput since the sample before."""

    t: float
    position: int
    committed: int
    end: int
    offset_lag: int
    event_time_lag_s: float | None
    throughput_eps: float | None


def position_of(rows: Iterable[LagRow]) -> int:
    """Records the group is past, summed over its partitions (end minus offset lag: a partition without a
    commit counts from its earliest retained offset)."""
    return sum(r.end - r.offset_lag for r in rows)


def throughput(previous: Point | None, position: int, t: float) -> float | None:
    """Events/s between `previous` and now; None without a previous sample or elapsed time, never negative."""
    if previous is None or t <= previous.t:
        return None
    return max(0, position - previous.position) / (t - previous.t)


def make_point(rows: list[LagRow], total: LagTotal, previous: Point | None, t: float) -> Point:
    position = position_of(rows)
    return Point(t, position, sum(r.committed or 0 for r in rows), sum(r.end for r in rows), total.offset_lag,
                 total.event_time_lag_s, throughput(previous, position, t))


class Samples:
    """A bounded ring of samples: one per `min_interval_s` at most, none older than `window_s`."""

    def __init__(self, window_s: float = WINDOW_S, min_interval_s: float = MIN_SAMPLE_INTERVAL_S) -> None:
        self.window_s = window_s
        self.min_interval_s = min_interval_s
        self.ring: deque[dict[str, Point]] = deque(maxlen=int(window_s / min_interval_s) + 1)

    def latest(self) -> dict[str, Point] | None:
        return self.ring[-1] if self.ring else None

    def due(self, t: float) -> bool:
        """Whether a sample taken at `t` may be added (the last one is at least `min_interval_s` old)."""
        last = self.latest()
        return last is None or t - next(iter(last.values())).t >= self.min_interval_s

    def add(self, rows: list[LagRow], t: float) -> dict[str, Point]:
        """Append the sample of `rows` taken at `t` and drop those older than the window."""
        previous = self.latest() or {}
        sample = {total.projection: make_point([r for r in rows if r.projection == total.projection], total,
                                               previous.get(total.projection), t)
                  for total in totals(rows)}
        self.ring.append(sample)
        while self.ring and t - next(iter(self.ring[0].values())).t > self.window_s:
            self.ring.popleft()
        return sample

    def series(self, projection: str) -> list[Point]:
        return [s[projection] for s in self.ring if projection in s]


# ---- dead letters ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class DeadLetterCounts:
    topic: str
    total: int
    pending: int
    by_projection: dict[str, int]


def tally_headers(counts: dict[str, int], headers: list[tuple[str, bytes]] | None) -> None:
    """Count one dead letter under its `dlq.projection` header (UNKNOWN_PROJECTION without one)."""
    projection = describe(headers).get("projection") or UNKNOWN_PROJECTION
    counts[projection] = counts.get(projection, 0) + 1


@dataclass
class DeadLetterTally:
    """Counts of the dead-letter topic per projection, read on from where the last refresh stopped."""

    settings: Settings
    topic: str = DLQ_TOPIC
    max_records: int = DLQ_MAX_RECORDS_PER_CALL
    positions: dict[int, int] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=lambda: {p: 0 for p in PROJECTIONS})
    admin: AdminClient | None = None   # kept between refreshes; made here when not given

    def __post_init__(self) -> None:
        self.admin = self.admin or kafka.admin_client(self.settings)

    def refresh(self) -> DeadLetterCounts:
        """Read what was appended since the last refresh (bounded) and return the counts; a missing topic
        holds nothing. Raises KafkaException or TimeoutError when Kafka does not answer in time."""
        timeout = self.settings.connect_timeout_s
        meta = self.admin.list_topics(timeout=timeout).topics.get(self.topic)
        if meta is None or meta.error is not None:
            return DeadLetterCounts(self.topic, 0, 0, dict(self.counts))
        tps = [(self.topic, p) for p in sorted(meta.partitions)]
        low = {p: o for (_, p), o in kafka.earliest_offsets(self.settings, tps, timeout, self.admin).items()}
        high = {p: o for (_, p), o in kafka.end_offsets(self.settings, tps, timeout, self.admin).items()}
        starts = {p: max(self.positions.get(p, 0), low[p]) for p in high}
        wanted = {p: s for p, s in starts.items() if s < high[p]}
        self.positions.update(starts)
        if wanted:
            self._read(wanted, high)
        pending = sum(max(0, high[p] - self.positions[p]) for p in high)
        return DeadLetterCounts(self.topic, sum(high[p] - low[p] for p in high), pending, dict(self.counts))

    def _read(self, starts: dict[int, int], high: dict[int, int]) -> None:
        """Consume from `starts` towards `high`, at most `max_records` and `connect_timeout_s` seconds."""
        consumer = Consumer({**kafka.base_config(self.settings), "group.id": f"cqrs-ops-dlq-{uuid.uuid4()}",
                             "enable.auto.commit": False, "enable.partition.eof": False, "fetch.wait.max.ms": 50})
        deadline = time.monotonic() + self.settings.connect_timeout_s
        read = 0
        try:
            consumer.assign([TopicPartition(self.topic, p, o) for p, o in starts.items()])
            while read < self.max_records and time.monotonic() < deadline and any(
                    self.positions[p] < high[p] for p in starts):
                for msg in consumer.consume(min(500, self.max_records - read), timeout=0.5):
                    if msg.error() or msg.offset() < self.positions[msg.partition()]:
                        continue
                    tally_headers(self.counts, msg.headers())
                    self.positions[msg.partition()] = msg.offset() + 1
                    read += 1
        finally:
            consumer.close()


# ---- rebuilds -------------------------------------------------------------------------------------

def rebuild_projection(group: str) -> str | None:
    """The projection a consumer group named `cqrs-<projection>-rebuild*` rebuilds; None for other groups."""
    return next((p for p in PROJECTIONS if group.startswith(f"{consumer_group(p)}-rebuild")), None)


def list_groups(settings: Settings, admin: AdminClient) -> list[tuple[str, str]]:
    """(group id, state) of every consumer group Kafka knows."""
    timeout = settings.connect_timeout_s
    found = admin.list_consumer_groups(request_timeout=timeout).result(timeout)
    return sorted((g.group_id, g.state.name.lower() if g.state is not None else "unknown") for g in found.valid)


# ---- the monitor ----------------------------------------------------------------------------------

def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


class PipelineMonitor:
    """The per-process state behind /api/ops/pipeline: lag reader, sample ring, dead-letter tally."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.reader = LagReader(settings, settings.projection_group_suffix)
        self.samples = Samples()
        self.tally = DeadLetterTally(settings, admin=self.reader.admin)
        self.lock = asyncio.Lock()
        self.last: dict[str, Any] | None = None
        self.last_at = float("-inf")

    async def document(self) -> dict[str, Any]:
        """The latest sample as a JSON-ready document, taking a new one if the last is old enough."""
        async with self.lock:
            if self.last is None or time.monotonic() - self.last_at >= self.samples.min_interval_s:
                self.last = await asyncio.to_thread(self.sample)
                self.last_at = time.monotonic()
            return self.last

    def sample(self) -> dict[str, Any]:
        """Read Kafka once (every call bounded) and add a sample; raises ServiceUnavailable or LagError."""
        rows = self.reader.collect(PROJECTIONS)
        try:
            dead = self.tally.refresh()
            rebuilds = self._rebuilds()
        except (KafkaException, concurrent.futures.TimeoutError) as exc:
            raise kafka.unavailable(self.settings, exc) from None
        t = time.time()
        if self.samples.due(t):
            self.samples.add(rows, t)
        return self._document(t, dead, rebuilds)

    def _rebuilds(self) -> list[dict[str, Any]]:
        found = [(g, state, p) for g, state in list_groups(self.settings, self.reader.admin)
                 if (p := rebuild_projection(g))]
        result = []
        for group, state, projection in found:
            rows = self.reader.collect((projection,), group_suffix=group[len(consumer_group(projection)):])
            total = totals(rows)[0]
            result.append({"group": group, "projection": projection, "state": state,
                           "committed": sum(r.committed or 0 for r in rows), "end": sum(r.end for r in rows),
                           "offset_lag": total.offset_lag, "event_time_lag_s": _round(total.event_time_lag_s)})
        return result

    def _document(self, t: float, dead: DeadLetterCounts, rebuilds: list[dict[str, Any]]) -> dict[str, Any]:
        latest = self.samples.latest() or {}
        series = {p: self.samples.series(p) for p in PROJECTIONS}
        times = [round(s.t, 3) for s in series[PROJECTIONS[0]]]
        return {
            "sampled_at": datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "topic_prefix": self.settings.topic_prefix,
            "group_suffix": self.settings.projection_group_suffix,
            "window_s": self.samples.window_s,
            "history_t": times,
            "projections": [self._projection(p, latest[p], series[p]) for p in PROJECTIONS if p in latest],
            "dead_letters": {"topic": dead.topic, "total": dead.total, "pending": dead.pending,
                             "by_projection": dead.by_projection},
            "rebuilds": rebuilds,
        }

    def _projection(self, projection: str, point: Point, series: list[Point]) -> dict[str, Any]:
        return {
            "projection": projection,
            "group": consumer_group(projection, self.settings.projection_group_suffix),
            "committed": point.committed, "end": point.end, "offset_lag": point.offset_lag,
            "event_time_lag_s": _round(point.event_time_lag_s), "throughput_eps": _round(point.throughput_eps),
            "history": {"throughput_eps": [_round(s.throughput_eps) for s in series],
                        "offset_lag": [s.offset_lag for s in series],
                        "event_time_lag_s": [_round(s.event_time_lag_s) for s in series]},
        }


def monitor(request: Request) -> PipelineMonitor:
    """The process's one monitor, made on first use from the app's settings."""
    state = request.app.state
    if getattr(state, "pipeline_monitor", None) is None:
        state.pipeline_monitor = PipelineMonitor(state.settings)
    return state.pipeline_monitor


# ---- routes ---------------------------------------------------------------------------------------

@router.get("/api/ops/pipeline", name="PipelineStatus", include_in_schema=False,
            summary="Per projection offsets, lag and throughput; dead letters; rebuilds in progress")
async def pipeline_status(request: Request) -> Response:
    try:
        doc = await monitor(request).document()
    except ServiceUnavailable as exc:
        return JSONResponse(error_body("service_unavailable", str(exc), service=exc.service), status_code=503,
                            headers={"Retry-After": "1"})
    except LagError as exc:
        return JSONResponse(error_body("not_set_up", str(exc), service=kafka.SERVICE), status_code=503,
                            headers={"Retry-After": "5"})
    return Response(orjson.dumps(doc), media_type="application/json", headers={"Cache-Control": "no-store"})


@router.get("/dashboard", name="Dashboard", response_class=HTMLResponse, include_in_schema=False,
            summary="Live operations page (polls /api/ops/pipeline)")
async def dashboard(refresh: Annotated[int, Query(ge=1, le=60, description="Refresh interval in seconds (1-60)")]
                    = DEFAULT_REFRESH_S) -> HTMLResponse:
    return HTMLResponse(render_page(PROJECTIONS, refresh), headers={"Cache-Control": "no-store"})


# ---- the page -------------------------------------------------------------------------------------

METRICS = (("throughput_eps", "throughput", "events/s"), ("offset_lag", "offset lag", "records"),
           ("event_time_lag_s", "event-time lag", "s"), ("committed", "committed", "offsets"),
           ("end", "end", "offsets"))
CHARTS = (("throughput_eps", "throughput, events/s"), ("offset_lag", "offset lag, records"),
          ("event_time_lag_s", "event-time lag, s"))


def render_card(projection: str) -> str:
    """A projection's card: a value element per metric and an empty chart per series, all carrying
    `data-projection`; the script fills them in."""
    name = html.escape(projection, quote=True)
    metrics = "".join(
        f'<div class="metric"><span class="label">{label}</span>'
        f'<span class="value" id="{name}-{key}" data-projection="{name}" data-metric="{key}">–</span>'
        f'<span class="unit">{unit}</span></div>' for key, label, unit in METRICS)
    charts = "".join(
        f'<figure><figcaption>{label} <span class="peak" data-projection="{name}" data-peak="{key}"></span>'
        f'</figcaption><svg viewBox="0 0 300 60" preserveAspectRatio="none" id="{name}-chart-{key}" '
        f'data-projection="{name}" data-chart="{key}" data-points="0" data-max="0"></svg></figure>'
        for key, label in CHARTS)
    return (f'<section class="card" data-projection="{name}"><h2>{name}</h2>'
            f'<div class="group" data-projection="{name}" data-metric="group"></div>'
            f'<div class="metrics">{metrics}</div>{charts}</section>')


def render_page(projections: Iterable[str], refresh_s: int) -> str:
    projections = tuple(projections)
    dlq_rows = "".join(f'<tr><td>{html.escape(p)}</td><td class="num" data-dlq-projection="{html.escape(p, True)}">'
                       f'–</td></tr>' for p in projections)
    return (PAGE.replace("__CARDS__", "".join(render_card(p) for p in projections))
            .replace("__DLQ_ROWS__", dlq_rows)
            .replace("__REFRESH_S__", str(refresh_s))
            .replace("__PROJECTIONS__", json.dumps(list(projections)).replace("<", "\\u003c")))


PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>CQRS pipeline operations</title>
<style>
  :root { --bg: #f5f6f8; --card: #fff; --ink: #1d2430; --muted: #6b7380; --line: #2f6fdd; --bad: #b42318;
          --warn-bg: #fdecea; --ok: #18794e; }
  * { box-sizing: border-box; }
  body { margin: 0; font: 14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; background: var(--bg);
         color: var(--ink); }
  header { display: flex; align-items: baseline; gap: 1rem; flex-wrap: wrap; padding: .8rem 1.2rem;
           background: var(--ink); color: #fff; }
  header h1 { font-size: 1.1rem; margin: 0; }
  header .meta { color: #c9ced6; font-size: .85rem; }
  #banner { display: none; margin: .8rem 1.2rem 0; padding: .7rem 1rem; border: 1px solid var(--bad);
            background: var(--warn-bg); color: var(--bad); font-weight: 600; border-radius: 6px; }
  body[data-state="error"] #banner { display: block; }
  body[data-state="error"] .value { color: var(--muted); }
  main { padding: 1rem 1.2rem; display: grid; gap: 1rem; grid-template-columns: repeat(auto-fill, minmax(320px, 1fr)); }
  .card, .panel { background: var(--card); border-radius: 8px; padding: .8rem 1rem; box-shadow: 0 1px 2px #0002; }
  .card h2, .panel h2 { font-size: 1rem; margin: 0 0 .2rem; }
  .group { color: var(--muted); font-size: .8rem; margin-bottom: .5rem; }
  .metrics { display: grid; grid-template-columns: repeat(3, 1fr); gap: .4rem; margin-bottom: .5rem; }
  .metric { display: flex; flex-direction: column; }
  .label, .unit { color: var(--muted); font-size: .75rem; }
  .value { font-size: 1.25rem; font-variant-numeric: tabular-nums; font-weight: 600; }
  figure { margin: .3rem 0 0; }
  figcaption { color: var(--muted); font-size: .75rem; display: flex; justify-content: space-between; }
  svg { width: 100%; height: 60px; background: #f0f3f8; border-radius: 4px; display: block; }
  svg polyline { fill: none; stroke: var(--line); stroke-width: 1.5; vector-effect: non-scaling-stroke; }
  table { border-collapse: collapse; width: 100%; }
  td, th { padding: .25rem .4rem; text-align: left; border-bottom: 1px solid #e4e7ec; }
  th { color: var(--muted); font-weight: 500; font-size: .8rem; }
  .num { text-align: right; font-variant-numeric: tabular-nums; }
  .none { color: var(--ok); }
</style>
</head>
<body data-state="loading">
<header>
  <h1>CQRS pipeline operations</h1>
  <span class="meta">last updated <time id="updated" data-updated="">never</time></span>
  <span class="meta">refresh every <span id="refresh">__REFRESH_S__</span> s</span>
  <span class="meta" id="scope"></span>
</header>
<div id="banner" role="alert"></div>
<main>
__CARDS__
<section class="panel" id="dead-letters">
  <h2>Dead letters</h2>
  <div class="group">held on <span id="dlq-topic">–</span>: <strong id="dlq-total" data-dlq="total">–</strong>,
    not yet counted: <span id="dlq-pending" data-dlq="pending">–</span></div>
  <table><thead><tr><th>projection</th><th class="num">dead letters</th></tr></thead>
  <tbody id="dlq-rows">__DLQ_ROWS__</tbody></table>
</section>
<section class="panel" id="rebuilds-panel">
  <h2>Rebuilds in progress</h2>
  <table><thead><tr><th>group</th><th>state</th><th class="num">committed</th><th class="num">offset lag</th>
  <th class="num">event-time lag s</th></tr></thead><tbody id="rebuilds"></tbody></table>
  <div id="rebuilds-none" class="none">none</div>
</section>
</main>
<script>
"use strict";
const REFRESH_S = __REFRESH_S__;
const PROJECTIONS = __PROJECTIONS__;
const SVG = "http://www.w3.org/2000/svg";

function show(value, digits) {
  if (value === null || value === undefined) return "–";
  return digits ? Number(value).toFixed(digits) : String(value);
}

function setText(selector, text) {
  for (const el of document.querySelectorAll(selector)) el.textContent = text;
}

function drawChart(svg, times, values) {
  const points = [];
  const known = values.filter(v => v !== null);
  const max = known.length ? Math.max(...known) : 0;
  const t0 = times.length ? times[0] : 0, t1 = times.length ? times[times.length - 1] : 1;
  const span = Math.max(t1 - t0, 1e-9), top = max > 0 ? max : 1;
  values.forEach((v, i) => {
    if (v === null) return;
    const x = times.length > 1 ? ((times[i] - t0) / span) * 300 : 300;
    points.push(x.toFixed(1) + "," + (58 - (v / top) * 56).toFixed(1));
  });
  svg.replaceChildren();
  const line = document.createElementNS(SVG, "polyline");
  line.setAttribute("points", points.join(" "));
  svg.appendChild(line);
  svg.dataset.points = String(points.length);
  svg.dataset.max = String(max);
  return max;
}

function renderProjection(p, times) {
  const sel = '[data-projection="' + p.projection + '"]';
  setText(sel + '[data-metric="throughput_eps"]', show(p.throughput_eps, 1));
  setText(sel + '[data-metric="offset_lag"]', show(p.offset_lag));
  setText(sel + '[data-metric="event_time_lag_s"]', show(p.event_time_lag_s, 1));
  setText(sel + '[data-metric="committed"]', show(p.committed));
  setText(sel + '[data-metric="end"]', show(p.end));
  setText(sel + '[data-metric="group"]', "group " + p.group);
  for (const svg of document.querySelectorAll("svg" + sel)) {
    const key = svg.dataset.chart;
    const max = drawChart(svg, times, p.history[key] || []);
    setText(sel + '[data-peak="' + key + '"]', "max " + show(max, key === "offset_lag" ? 0 : 1));
  }
}

function renderDeadLetters(d) {
  setText("#dlq-topic", d.topic);
  setText("#dlq-total", show(d.total));
  setText("#dlq-pending", show(d.pending));
  const body = document.getElementById("dlq-rows");
  for (const [projection, count] of Object.entries(d.by_projection)) {
    let cell = body.querySelector('[data-dlq-projection="' + CSS.escape(projection) + '"]');
    if (!cell) {
      const row = body.insertRow();
      row.insertCell().textContent = projection;
      cell = row.insertCell();
      cell.className = "num";
      cell.dataset.dlqProjection = projection;
    }
    cell.textContent = show(count);
  }
}

function renderRebuilds(rebuilds) {
  const body = document.getElementById("rebuilds");
  body.replaceChildren();
  for (const r of rebuilds) {
    const row = body.insertRow();
    row.dataset.group = r.group;
    row.dataset.projection = r.projection;
    for (const [text, num] of [[r.group, false], [r.state, false], [show(r.committed), true],
                               [show(r.offset_lag), true], [show(r.event_time_lag_s, 1), true]]) {
      const cell = row.insertCell();
      cell.textContent = text;
      if (num) cell.className = "num";
    }
  }
  document.getElementById("rebuilds-none").style.display = rebuilds.length ? "none" : "block";
}

function render(doc) {
  for (const p of doc.projections) renderProjection(p, doc.history_t);
  renderDeadLetters(doc.dead_letters);
  renderRebuilds(doc.rebuilds);
  const scope = [doc.topic_prefix ? "topic prefix " + doc.topic_prefix : "",
                 doc.group_suffix ? "group suffix " + doc.group_suffix : ""].filter(Boolean).join(", ");
  setText("#scope", scope);
  const updated = document.getElementById("updated");
  updated.textContent = new Date(doc.sampled_at).toLocaleTimeString();
  updated.dataset.updated = doc.sampled_at;
  updated.setAttribute("datetime", doc.sampled_at);
}

function fail(message) {
  document.body.dataset.state = "error";
  document.getElementById("banner").textContent = message;
}

function problem(status, body) {
  if (body && body.service === "kafka" && body.code === "service_unavailable") {
    return "Kafka unreachable: " + body.message + " (showing the last values received)";
  }
  if (body && body.message) return body.message + " (HTTP " + status + ")";
  return "The query API answered HTTP " + status;
}

async function refresh() {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), Math.max(15, REFRESH_S * 3) * 1000);
  try {
    const response = await fetch("api/ops/pipeline", {cache: "no-store", signal: controller.signal});
    const body = await response.json().catch(() => null);
    if (!response.ok || !body) {
      fail(problem(response.status, body));
      return;
    }
    render(body);
    document.body.dataset.state = "ok";
    document.getElementById("banner").textContent = "";
  } catch (err) {
    fail("Query API unreachable: " + (err && err.message ? err.message : err));
  } finally {
    clearTimeout(timer);
  }
}

async function loop() {
  await refresh();
  setTimeout(loop, REFRESH_S * 1000);
}

loop();
</script>
</body>
</html>
"""
