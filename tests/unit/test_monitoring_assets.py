"""The monitoring assets in deploy/monitoring/ against what the code exports.

Every metric an alert expression or a dashboard query names must be one the code defines (with the
suffix its type is exposed with: counters `_total`, histograms `_bucket`/`_sum`/`_count`), every
label matcher must use a label that metric has, every alert carries a severity, a summary, a
description and a runbook naming a `cqrs` command that exists, and every dashboard panel queries
something. No services and no promtool needed (tests/integration/test_monitoring_rules.py runs
promtool)."""
from __future__ import annotations

import importlib
import json
import re
from pathlib import Path

import prometheus_client
import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "deploy" / "monitoring"
ALERTS = MONITORING / "alerts.yaml"
DASHBOARD = MONITORING / "grafana-dashboard.json"

SEVERITIES = {"info", "warning", "critical"}
# Labels Prometheus adds to every scraped series (target labels), besides a metric's own.
TARGET_LABELS = {"instance", "job", "namespace", "pod", "container", "service", "endpoint"}
METRIC_DEFINITION = re.compile(r"^\w+\s*=\s*(?:Counter|Gauge|Histogram|Summary)\(", re.MULTILINE)
KNOWN_METRIC_MODULES = {"agents.metrics", "app.commands.relay", "app.commands.api", "app.queries.api"}

# ---- what the code exports ------------------------------------------------------------------------------


def metric_modules() -> list[str]:
    """Every module under app/ and agents/ that defines a metric at module level."""
    found = []
    for package in ("app", "agents"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if METRIC_DEFINITION.search(path.read_text()):
                found.append(".".join(path.relative_to(ROOT).with_suffix("").parts))
    return found


def exported_metrics() -> dict[str, tuple[str, set[str]]]:
    """Exposed sample name -> (metric type, label names), from the metric objects of those modules."""
    exported: dict[str, tuple[str, set[str]]] = {}
    for module_name in metric_modules():
        module = importlib.import_module(module_name)
        for obj in vars(module).values():
            if not isinstance(obj, MetricWrapperBase):
                continue
            labels = set(obj._labelnames)
            for family in obj.describe():
                if family.type == "counter":
                    suffixes = ("_total", "_created")
                elif family.type == "histogram":
                    suffixes = ("_bucket", "_sum", "_count", "_created")
                elif family.type == "summary":
                    suffixes = ("", "_sum", "_count", "_created")
                else:
                    suffixes = ("",)
                for suffix in suffixes:
                    extra = {"le"} if suffix == "_bucket" else {"quantile"} if family.type == "summary" and not suffix \
                        else set()
                    exported[family.name + suffix] = (family.type, labels | extra)
    return exported


# ---- PromQL: the metric names and label matchers an expression uses ------------------------------------------

KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool",
            "offset", "atan2", "inf", "nan"}
STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
SELECTOR = re.compile(r"(?<![\w:$])([a-zA-Z_:][\w:]*)\s*\{([^}]*)\}")
MATCHER = re.compile(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)")
LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
IDENTIFIER = re.compile(r"(?<![\w:.$])([a-zA-Z_:][\w:]*)(\s*\()?")


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (Grafana variables allowed), without functions and keywords."""
    text = STRING.sub('""', expr)
    text = re.sub(r"\{[^}]*\}", "", text)          # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)         # range / subquery durations
    text = LABEL_LIST.sub("", text)                # by (...), on (...), group_left (...)
    text = re.sub(r"\$\{?\w+\}?", "", text)        # $projection, $__rate_interval, ${var}
    names = set()
    for match in IDENTIFIER.finditer(text):
        name, call = match.groups()
        if call or name.lower() in KEYWORDS:
            continue
        names.add(name)
    return names


def selectors(expr: str) -> list[tuple[str, set[str]]]:
    """(metric, label names matched) for each `metric{...}` selector."""
    text = STRING.sub('""', expr)
    return [(m.group(1), set(MATCHER.findall(m.group(2)))) for m in SELECTOR.finditer(text)]


def problems(expr: str, exported: dict[str, tuple[str, set[str]]]) -> list[str]:
    found = [f"unknown metric {name!r}" for name in sorted(metric_names(expr)) if name not in exported]
    for name, labels in selectors(expr):
        if name in exported:
            unknown = labels - exported[name][1] - TARGET_LABELS
            found += [f"{name} has no label {label!r}" for label in sorted(unknown)]
    return found


# ---- the assets --------------------------------------------------------------------------------------------


def load_rules() -> list[dict]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def load_dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def dashboard_panels(dashboard: dict) -> list[dict]:
    panels = []
    for panel in dashboard["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))  # collapsed rows keep theirs inside
    return panels


def dashboard_exprs(dashboard: dict) -> list[tuple[str, str]]:
    exprs = [(p["title"], t["expr"]) for p in dashboard_panels(dashboard) for t in p.get("targets", [])]
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            inner = re.fullmatch(r"label_values\((?:(.*),\s*)?(\w+)\)", query.strip())
            assert inner, f"variable {var['name']}: unexpected query {query!r}"
            exprs.append((f"variable {var['name']}", inner.group(1) or ""))
    return exprs


@pytest.fixture(scope="module")
def exported() -> dict[str, tuple[str, set[str]]]:
    return exported_metrics()


def test_metric_modules_are_discovered(exported):
    assert KNOWN_METRIC_MODULES <= set(metric_modules())
    for name in ("projection_events_total", "projection_lag_seconds", "projection_consumer_offset_lag",
                 "projection_sink_write_seconds_bucket", "outbox_events_published_total",
                 "outbox_publish_errors_total", "query_duration_seconds_count", "command_duration_seconds_bucket",
                 "query_cache_total"):
        assert name in exported, name
    assert "projection_events" not in exported  # counters are only exposed with _total
    assert "projection_lag_seconds_bucket" not in exported  # a gauge has no buckets


def test_exported_metrics_are_the_registered_ones(exported):
    """The objects read above are the ones the process registry serves at /metrics."""
    registered = {family.name for family in prometheus_client.REGISTRY.collect()}
    for name, (kind, _) in exported.items():
        base = re.sub(r"_(total|created|bucket|sum|count)$", "", name) if kind in ("counter", "histogram") else name
        assert base in registered, name


def test_checker_catches_misspelled_metrics_and_labels(exported):
    assert problems('sum by (projection) (rate(projection_events_total{outcome="applied"}[5m]))', exported) == []
    assert problems("rate(projection_event_total[5m])", exported) == ["unknown metric 'projection_event_total'"]
    assert problems("projection_events[5m]", exported) == ["unknown metric 'projection_events'"]
    assert problems('histogram_quantile(0.99, sum by (le) (rate(projection_lag_seconds_bucket[5m])))', exported) \
        == ["unknown metric 'projection_lag_seconds_bucket'"]
    assert problems('projection_lag_seconds{topic="order-events"}', exported) == \
        ["projection_lag_seconds has no label 'topic'"]
    assert metric_names('label_replace(up{job="x"}, "topic", "$1", "projection", "(.*)") > 1e3 and on (a) b_total') \
        == {"up", "b_total"}


def test_every_alert_expression_uses_exported_metrics(exported):
    failures = [f"{rule['alert']}: {p}" for rule in load_rules() for p in problems(rule["expr"], exported)]
    assert not failures, "\n".join(failures)
    assert all(metric_names(rule["expr"]) for rule in load_rules())


def test_every_dashboard_query_uses_exported_metrics(exported):
    exprs = dashboard_exprs(load_dashboard())
    failures = [f"{title}: {p}" for title, expr in exprs for p in problems(expr, exported)]
    assert not failures, "\n".join(failures)


def test_every_alert_is_labelled_and_annotated():
    rules = load_rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names)), "duplicate alert names"
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations", "keep_firing_for"}, rule["alert"]
        assert rule.get("labels", {}).get("severity") in SEVERITIES, rule["alert"]
        annotations = rule.get("annotations", {})
        for key in ("summary", "description", "runbook"):
            assert str(annotations.get(key, "")).strip(), f"{rule['alert']}: no {key}"
        assert "`cqrs " in annotations["runbook"], f"{rule['alert']}: runbook names no cqrs command"
        if "for" in rule:
            assert re.fullmatch(r"(\d+[smh])+", rule["for"]), rule["alert"]


def test_runbooks_name_cqrs_commands_that_exist():
    from app.cli import build_parser

    runbooks = " ".join(rule["annotations"]["runbook"] for rule in load_rules())
    for hint in ("`cqrs lag", "`cqrs dlq list", "`cqrs dlq replay"):
        assert hint in runbooks, hint
    commands = set(build_parser()._subparsers._group_actions[0].choices)
    used = set(re.findall(r"`cqrs ([a-z-]+)", runbooks))
    assert used <= commands, used - commands


def test_required_alerts_have_their_thresholds():
    rules = {rule["alert"]: rule for rule in load_rules()}
    lag = rules["ProjectionEventTimeLagHigh"]
    assert "projection_lag_seconds" in lag["expr"] and re.search(r">\s*60\b", lag["expr"]) and lag["for"] == "2m"
    assert "by (projection)" in lag["expr"]
    errors = rules["ProjectionErrorRateHigh"]
    assert re.search(r">\s*0\.001\b", errors["expr"]) and "[5m]" in errors["expr"]
    assert 'outcome=~"failed|dead_lettered"' in errors["expr"]
    throughput = rules["ProjectionThroughputBelowPublishRate"]
    assert throughput["for"] == "10m" and "outbox_events_published_total" in throughput["expr"]
    for name in ("ProjectionDeadLetters", "ProjectionOffsetLagGrowing", "ProjectionOffsetLagHigh",
                 "OutboxPublishErrors", "QueryApi5xxRateHigh"):
        assert name in rules


def test_dashboard_is_importable_and_every_panel_queries_something():
    dashboard = load_dashboard()
    assert dashboard["schemaVersion"] >= 36 and dashboard["uid"] and dashboard["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert variables["projection"]["type"] == "query"
    ids = [p["id"] for p in dashboard_panels(dashboard)]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    panels = [p for p in dashboard_panels(dashboard) if p["type"] != "row"]
    assert len(panels) >= 10
    for panel in panels:
        title = panel.get("title")
        assert title, panel["id"]
        assert panel["datasource"]["uid"] == "${datasource}", title
        targets = panel.get("targets", [])
        assert targets, f"panel {title!r} has no target"
        for target in targets:
            assert target.get("expr", "").strip(), f"panel {title!r}: empty query"
            assert target.get("datasource", panel["datasource"])["uid"] == "${datasource}", title
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["w"] > 0 and grid["h"] > 0, title
        if any("projection_" in t["expr"] for t in targets):
            assert all('projection=~"$projection"' in t["expr"] for t in targets if "projection_" in t["expr"]), \
                f"panel {title!r} ignores the projection variable"


def test_dashboard_covers_the_pipeline():
    exprs = " ".join(expr for _, expr in dashboard_exprs(load_dashboard()))
    for needle in ("projection_events_total", "projection_lag_seconds", "projection_consumer_offset_lag",
                   "projection_held_events", "projection_batch_size_bucket", "projection_sink_write_seconds_bucket",
                   "outbox_events_published_total", "outbox_publish_errors_total", "command_duration_seconds",
                   "query_duration_seconds", 'outcome=~"failed|dead_lettered'):
        assert needle in exprs, needle
    assert "histogram_quantile(" in exprs
