"""The operations dashboard (`GET /dashboard`, `GET /api/ops/pipeline`) in a real headless Chromium,
against a query API on isolated topics and consumer groups: the page shows every projection with
numbers once its script ran, the numbers move when a worker processes new events, rebuild groups are
listed, and an unreachable Kafka gives 503 and a banner instead of a broken page. Chromium is Debian's
`chromium` package, installed with the local stack's apt helper when missing."""
from __future__ import annotations

import functools
import re
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from app.operations import processes
from agents.projections import PROJECTIONS, consumer_group
from app.operations.dashboard import DeadLetterTally
from app.settings import Settings
from app.http.identity import issue_token
from domain.access import Role
from app.operations.setup import prepare_event_codecs
from connectors import kafka, mongo
from deploy.local.base import StackError, StackPaths, apt_install
from tests.e2e.conftest import (TEST_TOKEN_TTL_S, create_customer, create_order, create_product, deadline, gateway_spawner,
                                make_client)

INSTALL_TIMEOUT_S = 900.0
BROWSER_TIMEOUT_S = 60.0
PUBLISH_TIMEOUT_S = 60.0
CATCH_UP_TIMEOUT_S = 120.0
VOID_TAGS = frozenset({"meta", "link", "br", "img", "input", "hr", "source", "wbr", "col", "area", "base"})
NUMBER = re.compile(r"-?[0-9]+(\.[0-9]+)?")


# ---- the browser ----------------------------------------------------------------------------------

def install_chromium(timeout: float = INSTALL_TIMEOUT_S) -> str:
    """The chromium binary, installed from the Debian mirrors if missing; fails with one line otherwise."""
    found = shutil.which("chromium")
    if found:
        return found
    errors: list[str] = []

    def install() -> None:
        try:
            apt_install(["chromium"], paths=StackPaths.from_env(), what="chromium for the dashboard tests",
                        log=Path("/tmp/cqrs-dashboard-chromium-install.log"))
        except StackError as exc:
            errors.append(str(exc))

    worker = threading.Thread(target=install, daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        pytest.fail(f"chromium could not be installed: apt-get still running after {timeout:.0f}s", pytrace=False)
    if errors or not shutil.which("chromium"):
        pytest.fail(f"chromium could not be installed: {errors[0] if errors else 'not on PATH after install'}",
                    pytrace=False)
    return shutil.which("chromium") or "chromium"


@pytest.fixture(scope="module")
def chromium() -> str:
    return install_chromium()


class Element:
    def __init__(self, tag: str, attrs: dict[str, str]) -> None:
        self.tag, self.attrs, self.text = tag, attrs, ""


class Dom(HTMLParser):
    """Every element of a dumped page with its attributes and its own text."""

    def __init__(self, markup: str) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[Element] = []
        self.open: list[Element] = []
        self.feed(markup)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = Element(tag, {k: v or "" for k, v in attrs})
        self.elements.append(element)
        if tag not in VOID_TAGS:
            self.open.append(element)

    def handle_endtag(self, tag: str) -> None:
        while self.open:
            if self.open.pop().tag == tag:
                break

    def handle_data(self, data: str) -> None:
        if self.open:
            self.open[-1].text += data

    def find(self, tag: str | None = None, **attrs: str) -> list[Element]:
        wanted = {k.replace("_", "-"): v for k, v in attrs.items()}
        return [e for e in self.elements if (tag is None or e.tag == tag)
                and all(e.attrs.get(k) == v for k, v in wanted.items())]

    def one(self, tag: str | None = None, **attrs: str) -> Element:
        found = self.find(tag, **attrs)
        assert len(found) == 1, f"{len(found)} elements {tag or ''} {attrs}"
        return found[0]

    def metric(self, projection: str, metric: str) -> float:
        """The number a card shows; fails naming the element when it shows none."""
        text = self.one(data_projection=projection, data_metric=metric).text.strip()
        assert NUMBER.fullmatch(text), f"{projection} {metric} shows {text!r}, not a number"
        return float(text)


@functools.lru_cache(maxsize=1)
def operator_token() -> str:
    return issue_token(Settings(), [Role.operator], subject="e2e-operator", ttl_s=TEST_TOKEN_TTL_S)


def ops_get(base_url: str, path: str = "/api/ops/pipeline") -> httpx.Response:
    return httpx.get(f"{base_url}{path}", timeout=30, headers={"Authorization": f"Bearer {operator_token()}"})


def dump_dom(chromium: str, url: str, profile: Path, budget_ms: int = 4000, signed_in: bool = True) -> Dom:
    """The DOM after the page's script ran for `budget_ms` of virtual time (network waits do not count),
    opened as an operator does (the token in the address's fragment) unless `signed_in` is false."""
    if signed_in:
        url = f"{url}#token={operator_token()}"
    proc = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                           f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}", "--dump-dom", url],
                          capture_output=True, text=True, timeout=BROWSER_TIMEOUT_S, check=False)
    assert proc.returncode == 0 and "<body" in proc.stdout, \
        f"chromium exited {proc.returncode}: {proc.stderr.strip().splitlines()[-3:]}"
    return Dom(proc.stdout)


# ---- the isolated pipeline ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def isolated(setup_done: None, settings: Settings, token: str, spawn_query_api,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """Own topics, group suffix and read-model database; a gateway and a query API on them. Everything
    created (topics, consumer groups, database, worker data) is removed afterwards."""
    name = f"db{uuid.uuid4().hex[:6]}"
    prefix, suffix = f"{name}-", f"-{name}"
    log_dir = tmp_path_factory.mktemp("dashboard")
    env = {"TOPIC_PREFIX": prefix, "PROJECTION_GROUP_SUFFIX": suffix}
    groups = [consumer_group(p, suffix) for p in PROJECTIONS] + [f"{consumer_group('order-views')}-rebuild{suffix}"]
    prepare_event_codecs(Settings(topic_prefix=prefix))
    try:
        with gateway_spawner(log_dir) as spawn:
            gateway = spawn("dashboard", TOPIC_PREFIX=prefix)
            gateway.wait_ready(leader=None)
            api = spawn_query_api(name, ready_path="/healthz", **env)
            yield {"name": name, "prefix": prefix, "suffix": suffix, "env": env, "log_dir": log_dir,
                   "gateway": gateway, "api": api, "token": token, "groups": groups,
                   "settings": Settings(topic_prefix=prefix, projection_group_suffix=suffix),
                   "profile": tmp_path_factory.mktemp("chromium-profile")}
    finally:
        remove_everything(settings, name, groups)


def remove_everything(settings: Settings, name: str, groups: list[str]) -> None:
    """Delete the topics, groups, database and worker data of this module; every step is tried, and
    the first failure is reported after all of them ran."""
    failures: list[str] = []
    for step in (lambda: delete_topics_named(settings, name), lambda: delete_groups(settings, groups),
                 lambda: drop_database(settings, f"cqrs_{name}")):
        try:
            step()
        except Exception as exc:  # later steps still run; the failure is reported below
            failures.append(f"{type(exc).__name__}: {exc}")
    for group in groups:
        shutil.rmtree(Path(settings.worker_data_dir) / group, ignore_errors=True)
    assert not failures, f"cleanup of {name} incomplete: {failures}"


def delete_topics_named(settings: Settings, name: str) -> None:
    topics = kafka.admin_client(settings).list_topics(timeout=10).topics
    kafka.delete_topics(settings, [t for t in topics if t.startswith(f"{name}-")])


def delete_groups(settings: Settings, groups: list[str]) -> None:
    admin = kafka.admin_client(settings)
    for fut in admin.delete_consumer_groups(groups, request_timeout=10).values():
        try:
            fut.result(10)
        except KafkaException as exc:
            if exc.args[0].name() != "GROUP_ID_NOT_FOUND":
                raise


def drop_database(settings: Settings, database: str) -> None:
    client = mongo.mongo_client(settings)
    try:
        client.drop_database(database)
    finally:
        client.close()


def pipeline_json(base_url: str) -> dict:
    r = ops_get(base_url)
    assert r.status_code == 200, r.text
    return r.json()


def by_projection(doc: dict) -> dict[str, dict]:
    return {p["projection"]: p for p in doc["projections"]}


def wait_for(base_url: str, what: str, done, timeout: float) -> dict:
    """Poll /api/ops/pipeline (a sample a second) until done(doc) holds; bounded. A 503 is polled again:
    reading a group's offsets may time out while a worker joins it."""
    end = deadline(timeout)
    last: object = None
    while True:
        r = ops_get(base_url)
        assert r.status_code in (200, 503), r.text
        if r.status_code == 200:
            last = by_projection(r.json())
            if done(r.json()):
                return r.json()
        else:
            last = r.json()
        assert time.monotonic() < end, f"{what} not seen within {timeout:.0f}s: {last}"
        time.sleep(1.0)


def produce_orders(isolated: dict, orders: int) -> None:
    with make_client(isolated["gateway"].url, isolated["token"]) as client:
        customer = create_customer(client, name="Dashboard customer")
        products = [create_product(client, stock=1000, name=f"Dashboard product {i}") for i in range(2)]
        for i in range(orders):
            create_order(client, customer, [(products[i % 2], 1)])


# ---- tests ----------------------------------------------------------------------------------------

def test_the_page_is_one_self_contained_document(isolated: dict):
    r = httpx.get(f"{isolated['api'].base_url}/dashboard", timeout=10)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "<title>CQRS pipeline operations</title>" in r.text
    assert not re.search(r"<script[^>]+src=|<link[^>]+href=|@import|url\(|https?://(?!www\.w3\.org/2000/svg)",
                         r.text), "the page loads something from elsewhere"
    assert 'const REFRESH_S = 2;' in r.text
    assert 'const REFRESH_S = 7;' in httpx.get(f"{isolated['api'].base_url}/dashboard?refresh=7", timeout=10).text
    for bad in ("0", "61", "x"):
        refused = httpx.get(f"{isolated['api'].base_url}/dashboard?refresh={bad}", timeout=10)
        assert refused.status_code == 422 and refused.json()["field"] == "refresh", refused.text


def test_without_a_token_the_page_asks_to_sign_in_and_shows_no_numbers(isolated: dict, chromium: str):
    """The page itself holds no figures (it is served without a token); its data needs an operator."""
    dom = dump_dom(chromium, f"{isolated['api'].base_url}/dashboard", isolated["profile"], signed_in=False)
    assert dom.one("body").attrs["data-state"] == "error"
    assert dom.one(id="banner").text.startswith("Sign in"), dom.one(id="banner").text
    assert "HTTP 401" in dom.one(id="banner").text
    cards = dom.find(data_metric="offset_lag")
    assert cards and not any(NUMBER.fullmatch(e.text.strip()) for e in cards), "figures without a token"


def test_the_page_shows_every_projection_with_numbers(isolated: dict, chromium: str):
    dom = dump_dom(chromium, f"{isolated['api'].base_url}/dashboard", isolated["profile"])
    body = dom.one("body")
    assert body.attrs["data-state"] == "ok", dom.one(id="banner").text
    assert dom.one("title").text == "CQRS pipeline operations"
    assert dom.one(id="updated").attrs.get("data-updated"), "no last-updated time"
    for projection in PROJECTIONS:
        assert any(e.text == projection for e in dom.find("h2")), f"{projection} not shown"
        for metric in ("committed", "end", "offset_lag", "event_time_lag_s"):
            dom.metric(projection, metric)
        assert dom.one(data_projection=projection, data_metric="group").text == \
            f"group {consumer_group(projection, isolated['suffix'])}"
        assert dom.one("svg", data_projection=projection, data_chart="throughput_eps")
        assert dom.one(data_dlq_projection=projection).text.isdigit()
    assert dom.one(data_dlq="total").text.isdigit()


def test_the_pipeline_json_has_the_documented_shape(isolated: dict):
    base_url = isolated["api"].base_url
    first = pipeline_json(base_url)
    time.sleep(1.1)
    doc = pipeline_json(base_url)
    assert set(doc) >= {"sampled_at", "window_s", "history_t", "projections", "dead_letters", "rebuilds"}
    assert doc["topic_prefix"] == isolated["prefix"] and doc["group_suffix"] == isolated["suffix"]
    assert doc["sampled_at"] > first["sampled_at"] and len(doc["history_t"]) >= 2
    assert [p["projection"] for p in doc["projections"]] == list(PROJECTIONS)
    for p in doc["projections"]:
        assert p["group"] == consumer_group(p["projection"], isolated["suffix"])
        assert all(isinstance(p[k], int) and p[k] >= 0 for k in ("committed", "end", "offset_lag")), p
        assert p["offset_lag"] <= p["end"]
        assert isinstance(p["event_time_lag_s"], float | None)
        assert isinstance(p["throughput_eps"], float) and p["throughput_eps"] >= 0, p
        assert {k: len(v) for k, v in p["history"].items()} == \
            {k: len(doc["history_t"]) for k in ("throughput_eps", "offset_lag", "event_time_lag_s")}
    dead = doc["dead_letters"]
    assert dead["topic"] == "cqrs-dead-letters"
    assert isinstance(dead["total"], int) and isinstance(dead["pending"], int)
    assert set(dead["by_projection"]) >= set(PROJECTIONS)
    assert all(isinstance(n, int) and n >= 0 for n in dead["by_projection"].values())
    assert isinstance(doc["rebuilds"], list)


def test_numbers_move_when_a_worker_processes_new_events(isolated: dict, chromium: str):
    base_url, url = isolated["api"].base_url, f"{isolated['api'].base_url}/dashboard?refresh=1"
    before = dump_dom(chromium, url, isolated["profile"])
    committed_before = before.metric("order-views", "committed")
    end_before = pipeline_json(base_url)["projections"][0]["end"]

    produce_orders(isolated, orders=6)
    wait_for(base_url, "the new order events", lambda d: by_projection(d)["order-views"]["end"] >= end_before + 6,
             PUBLISH_TIMEOUT_S)
    env = {**isolated["env"], "MONGO_DATABASE": f"cqrs_{isolated['name']}", "PROJECTION_START": "earliest",
           "PROJECTION_BATCH_WAIT_S": "0.1", "PYTHONUNBUFFERED": "1"}
    worker = processes.start(f"dashboard-order-views-{uuid.uuid4().hex[:4]}", ["worker", "order-views"],
                             log_dir=isolated["log_dir"], env=env, ready_path=None)
    try:
        def caught_up(doc: dict) -> bool:
            assert worker.proc.poll() is None, f"worker exited: {worker.log_tail()}"
            p = by_projection(doc)["order-views"]
            return p["end"] > 0 and p["committed"] == p["end"] and p["offset_lag"] == 0

        done = wait_for(base_url, "order-views caught up", caught_up, CATCH_UP_TIMEOUT_S)
        after = dump_dom(chromium, url, isolated["profile"])
    finally:
        worker.stop()
    committed_after = after.metric("order-views", "committed")
    assert committed_after > committed_before, (committed_before, committed_after)
    assert committed_after >= by_projection(done)["order-views"]["committed"]
    assert after.metric("order-views", "offset_lag") == 0
    chart = after.one("svg", data_projection="order-views", data_chart="throughput_eps")
    assert float(chart.attrs["data-max"]) > 0 and int(chart.attrs["data-points"]) >= 2, chart.attrs
    assert after.metric("order-views", "throughput_eps") >= 0
    assert after.metric("product-search", "committed") == before.metric("product-search", "committed") == 0


def test_a_rebuild_group_is_listed_with_its_lag(isolated: dict, chromium: str):
    group = f"{consumer_group('order-views')}-rebuild{isolated['suffix']}"
    topic = isolated["prefix"] + "order-events"
    settings: Settings = isolated["settings"]
    consumer = Consumer({**kafka.base_config(settings), "group.id": group, "enable.auto.commit": False})
    try:
        partitions = sorted(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
        consumer.commit(offsets=[TopicPartition(topic, p, 0) for p in partitions], asynchronous=False)
    finally:
        consumer.close()
    end = sum(kafka.end_offsets(settings, [(topic, p) for p in partitions], 10).values())
    assert end > 0, "the earlier test produced no order events"

    doc = wait_for(isolated["api"].base_url, f"rebuild group {group}",
                   lambda d: any(r["group"] == group for r in d["rebuilds"]), 30)
    rebuild = next(r for r in doc["rebuilds"] if r["group"] == group)
    assert rebuild["projection"] == "order-views"
    assert (rebuild["committed"], rebuild["end"], rebuild["offset_lag"]) == (0, end, end), rebuild
    assert rebuild["event_time_lag_s"] is None or rebuild["event_time_lag_s"] > 0

    dom = dump_dom(chromium, f"{isolated['api'].base_url}/dashboard", isolated["profile"])
    row = dom.one("tr", data_group=group)
    assert row.attrs["data-projection"] == "order-views"
    assert dom.one(id="rebuilds-none").attrs.get("style", "").replace(" ", "") == "display:none;"


def test_unreachable_kafka_answers_503_and_the_page_shows_a_banner(isolated: dict, spawn_query_api,
                                                                    chromium: str):
    api = spawn_query_api(f"{isolated['name']}-nokafka", ready_path="/healthz",
                          KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:9", CONNECT_TIMEOUT_S="2", **isolated["env"])
    started = time.monotonic()
    r = ops_get(api.base_url)
    elapsed = time.monotonic() - started
    assert r.status_code == 503, r.text
    body = r.json()
    assert body["code"] == "service_unavailable" and body["service"] == "kafka", body
    assert "127.0.0.1:9" in body["message"]
    assert elapsed < 10, f"took {elapsed:.1f}s"

    page = httpx.get(f"{api.base_url}/dashboard", timeout=10)
    assert page.status_code == 200
    dom = dump_dom(chromium, f"{api.base_url}/dashboard", isolated["profile"], budget_ms=3000)
    assert dom.one("body").attrs["data-state"] == "error"
    assert dom.one(id="banner").text.startswith("Kafka unreachable"), dom.one(id="banner").text
    for projection in PROJECTIONS:
        assert any(e.text == projection for e in dom.find("h2")), f"{projection} not shown"
        assert dom.one(data_projection=projection, data_metric="committed").text == "–"


def test_dead_letters_are_tallied_incrementally_and_bounded_per_call(isolated: dict):
    """Each refresh reads at most `max_records` new letters and goes on where the last one stopped. A
    refresh Kafka does not answer in time raises (the page shows it as Kafka slow) and reads nothing, so
    the test asks again; how many letters one refresh reads on a busy machine is bounded, not fixed."""
    settings: Settings = isolated["settings"]
    topic = f"{isolated['name']}-dead-letters"
    kafka.ensure_topics(settings, [kafka.TopicSpec(topic, 2)])
    producer = Producer(kafka.base_config(settings))

    def letters(*projections: str | None) -> None:
        for i, projection in enumerate(projections):
            headers = [("dlq.projection", projection.encode())] if projection else []
            producer.produce(topic, key=f"k{i}".encode(), value=b"v", headers=headers)
        assert producer.flush(10) == 0

    def refresh():
        for attempt in range(5):
            try:
                return tally.refresh()
            except (TimeoutError, KafkaException):
                if attempt == 4:
                    raise

    def drained(seen: int):
        """Refreshes until nothing is pending; each one reads at most 2 letters."""
        for _ in range(10):
            counts = refresh()
            read = sum(counts.by_projection.values()) - seen
            assert read <= 2, counts
            seen += read
            if counts.pending == 0:
                return counts
        raise AssertionError(f"letters still pending after 10 refreshes: {counts}")

    tally = DeadLetterTally(settings, topic=topic, max_records=2)
    letters("order-views", "order-views", "sales-stats")
    first = refresh()
    assert first.total == 3 and sum(first.by_projection.values()) <= 2
    assert first.pending == 3 - sum(first.by_projection.values()), first
    second = drained(sum(first.by_projection.values()))
    assert second.by_projection == {"order-views": 2, "product-search": 0, "sales-stats": 1}
    letters("product-search", None)
    third = drained(3)
    assert third.total == 5
    assert third.by_projection == {"order-views": 2, "product-search": 1, "sales-stats": 1, "?": 1}
