"""The HTML of `GET /dashboard`: templates/dashboard.html (one self-contained page whose script polls
`/api/ops/pipeline`), filled in with `string.Template`: `$cards` (one card per projection), `$dlq_rows`
(one dead-letter row per projection), `$refresh_s` (seconds between polls) and `$projections` (their
names as a JSON array, safe inside <script>).
"""
from __future__ import annotations

import html
import json
from collections.abc import Iterable
from importlib.resources import files
from string import Template

PAGE = Template((files("app.operations.templates") / "dashboard.html").read_text(encoding="utf-8"))

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
    return PAGE.substitute(cards="".join(render_card(p) for p in projections), dlq_rows=dlq_rows,
                           refresh_s=str(refresh_s),
                           projections=json.dumps(list(projections)).replace("<", "\\u003c"))
