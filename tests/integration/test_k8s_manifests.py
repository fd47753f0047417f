"""The Kubernetes manifests of deploy/k8s: rendered with kustomize, validated with kubeconform against the
Kubernetes and CRD schemas (deploy/k8s/tools.py), and checked for what the pipeline needs from them.

No cluster and no local stack are needed. The first run builds the tools into a cache (minutes);
later runs reuse it.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from app.settings import Settings
from agents.projections import PROJECTIONS, TOPICS

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
TOOLS = K8S / "tools.py"
BASE = K8S / "base"
LOCAL = K8S / "overlays" / "local"
FETCH_TIMEOUT_S = 2400  # first run: builds kustomize and kubeconform with Go
RUN_TIMEOUT_S = 600
WORKLOAD_KINDS = ("Deployment", "StatefulSet")
HTTP_COMPONENTS = {"command-gateway": 8000, "query-api": 8001}
DEFAULT_PARTITIONS = Settings.model_fields["topic_partitions"].default


@pytest.fixture(autouse=True)
def _needs_stack():
    """Overrides the integration suite's autouse fixture: these tests need no running services."""


def tool(*args: str, timeout: float = RUN_TIMEOUT_S) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TOOLS), *args], check=False, capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


@pytest.fixture(scope="module")
def tools_ready() -> None:
    proc = tool("fetch", timeout=FETCH_TIMEOUT_S)
    assert proc.returncode == 0, f"fetching the k8s tools failed: {proc.stderr.strip() or proc.stdout.strip()}"


def render(directory: Path) -> list[dict]:
    proc = tool("render", str(directory))
    assert proc.returncode == 0, proc.stderr
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


@pytest.fixture(scope="module")
def rendered(tools_ready) -> dict[str, list[dict]]:
    return {"base": render(BASE), "local": render(LOCAL)}


@pytest.fixture(params=["base", "local"])
def docs(request, rendered) -> list[dict]:
    return rendered[request.param]


def of_kind(docs: list[dict], *kinds: str) -> list[dict]:
    return [d for d in docs if d["kind"] in kinds]


def by_name(docs: list[dict], kind: str, name: str) -> dict:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def component(doc: dict) -> str:
    return doc["metadata"]["labels"]["app.kubernetes.io/component"]


def pod_labels(workload: dict) -> dict:
    return workload["spec"]["template"]["metadata"]["labels"]


def selects(selector: dict, labels: dict) -> bool:
    if not selector:
        return False
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        present, value = expr["key"] in labels, labels.get(expr["key"])
        op = expr["operator"]
        if op == "In" and value not in expr["values"] or op == "NotIn" and value in expr["values"] \
                or op == "Exists" and not present or op == "DoesNotExist" and present:
            return False
    return True


def partitions(docs: list[dict]) -> int:
    for cm in of_kind(docs, "ConfigMap"):
        if "TOPIC_PARTITIONS" in cm.get("data", {}):
            return int(cm["data"]["TOPIC_PARTITIONS"])
    return DEFAULT_PARTITIONS


# --- rendering and schema validation -------------------------------------------------------------------

def test_base_and_local_overlay_render_and_validate(tools_ready):
    proc = tool("validate")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    for label in ("deploy/k8s/base", "deploy/k8s/overlays/local"):
        assert f"ok   {label}:" in out, out
    summaries = [ln for ln in out.splitlines() if "Summary:" in ln]
    assert len(summaries) == 2, out
    for line in summaries:
        assert "Invalid: 0, Errors: 0, Skipped: 0" in line, line
        assert "Valid: 0," not in line, line


def test_unknown_field_in_a_deployment_fails_validation(tools_ready, tmp_path):
    (tmp_path / "kustomization.yaml").write_text("resources:\n  - deployment.yaml\n")
    (tmp_path / "deployment.yaml").write_text(textwrap.dedent("""\
        apiVersion: apps/v1
        kind: Deployment
        metadata:
          name: broken
        spec:
          replicas: 1
          selector:
            matchLabels: {app: broken}
          template:
            metadata:
              labels: {app: broken}
            spec:
              containers:
                - name: app
                  image: cqrs-pipeline:latest
                  readinessProbez:
                    tcpSocket: {port: 8000}
        """))
    proc = tool("validate", str(tmp_path))
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "Deployment broken is invalid" in out, out
    assert "readinessProbez" in out, out


def test_unknown_field_in_a_scaledobject_fails_validation(tools_ready, tmp_path):
    (tmp_path / "scaledobject.yaml").write_text(textwrap.dedent("""\
        apiVersion: keda.sh/v1alpha1
        kind: ScaledObject
        metadata:
          name: broken
        spec:
          scaleTargetRef: {apiVersion: apps/v1, kind: StatefulSet, name: w}
          maxReplicaCount: 2
          lagThresholdd: 10
          triggers:
            - type: kafka
              metadata: {consumerGroup: g, topic: t, lagThreshold: "10"}
        """))
    proc = tool("validate", str(tmp_path / "scaledobject.yaml"))
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "ScaledObject broken is invalid" in out and "lagThresholdd" in out, out


def test_more_workers_than_partitions_fails_validation(tools_ready, tmp_path):
    """An overlay that lets the autoscaler exceed TOPIC_PARTITIONS is rejected, schema-valid or not."""
    base = os.path.relpath(BASE, tmp_path)
    (tmp_path / "kustomization.yaml").write_text(textwrap.dedent(f"""\
        resources:
          - {base}
        patches:
          - target: {{group: keda.sh, kind: ScaledObject, name: cqrs-worker-sales-stats}}
            patch: |-
              - op: replace
                path: /spec/maxReplicaCount
                value: {DEFAULT_PARTITIONS + 2}
        """))
    proc = tool("validate", str(tmp_path))
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "Invalid: 0, Errors: 0" in out, out  # the schema allows it ...
    assert f"ScaledObject cqrs-worker-sales-stats: maxReplicaCount {DEFAULT_PARTITIONS + 2}" in out, out  # ... the rule not


def test_validator_reports_a_missing_directory(tools_ready, tmp_path):
    proc = tool("validate", str(tmp_path / "nowhere"))
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("k8s tools: validate") and "nowhere" in proc.stderr


# --- what the pipeline needs from the rendered manifests ---------------------------------------------------

def test_every_workload_has_probes_and_resources(docs):
    workloads = of_kind(docs, *WORKLOAD_KINDS)
    assert {component(w) for w in workloads} == {"command-gateway", "query-api", "outbox-relay", "projection-worker"}
    for w in workloads:
        spec = w["spec"]["template"]["spec"]
        assert spec.get("terminationGracePeriodSeconds", 0) > 0, w["metadata"]["name"]
        for c in spec.get("initContainers", []) + spec["containers"]:
            where = f"{w['kind']} {w['metadata']['name']} container {c['name']}"
            res = c.get("resources", {})
            for part in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(res.get(part, {})), f"{where}: resources.{part}"
            assert c["image"].startswith("cqrs-pipeline:"), where
        for c in spec["containers"]:
            where = f"{w['kind']} {w['metadata']['name']} container {c['name']}"
            assert c.get("livenessProbe"), f"{where}: no livenessProbe"
            assert c.get("readinessProbe"), f"{where}: no readinessProbe"


@pytest.mark.parametrize("name", sorted(HTTP_COMPONENTS))
def test_http_services_probe_healthz_and_readyz(docs, name):
    deployment = by_name(docs, "Deployment", f"cqrs-{name}")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    port = HTTP_COMPONENTS[name]
    assert container["command"][:2] == ["cqrs", name.replace("command-", "")]
    assert "--host" in container["command"] and container["command"][container["command"].index("--host") + 1] == "0.0.0.0"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": port}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    service = by_name(docs, "Service", f"cqrs-{name}")
    assert selects({"matchLabels": service["spec"]["selector"]}, pod_labels(deployment))
    assert service["spec"]["ports"][0]["port"] == port


def test_gateway_leaves_the_outbox_to_the_relay(docs):
    gateway = by_name(docs, "Deployment", "cqrs-command-gateway")["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "OUTBOX_RELAY_ENABLED", "value": "false"} in gateway["env"]
    relay = by_name(docs, "Deployment", "cqrs-outbox-relay")
    command = relay["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[:2] == ["cqrs", "relay"] and "--metrics-port" in command


def test_base_runs_two_relays(rendered):
    assert by_name(rendered["base"], "Deployment", "cqrs-outbox-relay")["spec"]["replicas"] == 2


@pytest.mark.parametrize("projection", PROJECTIONS)
def test_worker_statefulset_and_its_autoscaler(docs, projection):
    name = f"cqrs-worker-{projection}"
    sts = by_name(docs, "StatefulSet", name)
    spec = sts["spec"]
    limit = partitions(docs)
    assert spec["replicas"] <= limit
    pod = spec["template"]["spec"]
    container = pod["containers"][0]
    command = container["command"]
    assert command[:3] == ["cqrs", "worker", projection]
    assert command[command.index("--metrics-port") + 1] == "9100"
    assert command[command.index("--host") + 1] == "0.0.0.0"  # else /metrics binds 127.0.0.1 only
    assert pod["terminationGracePeriodSeconds"] >= 30
    # table state on a persistent volume per member
    claims = [t["metadata"]["name"] for t in spec["volumeClaimTemplates"]]
    assert claims and {m["name"] for m in container["volumeMounts"]} >= set(claims)
    # headless Service of the StatefulSet, exposing the metrics port
    service = by_name(docs, "Service", spec["serviceName"])
    assert service["spec"]["clusterIP"] == "None"
    assert selects({"matchLabels": service["spec"]["selector"]}, pod_labels(sts))
    assert [p["port"] for p in service["spec"]["ports"]] == [9100]
    # the autoscaler: lag of this projection's consumer group, never more replicas than partitions
    scaled = [s for s in of_kind(docs, "ScaledObject") if s["spec"]["scaleTargetRef"]["name"] == name]
    assert len(scaled) == 1, f"{name}: expected one ScaledObject"
    so = scaled[0]["spec"]
    assert so["scaleTargetRef"]["kind"] == "StatefulSet"
    assert 1 <= so["minReplicaCount"] <= so["maxReplicaCount"] <= limit <= DEFAULT_PARTITIONS
    (trigger,) = so["triggers"]
    assert trigger["type"] == "kafka"
    meta = trigger["metadata"]
    suffix = next(cm["data"].get("PROJECTION_GROUP_SUFFIX", "") for cm in of_kind(docs, "ConfigMap"))
    assert meta["consumerGroup"] == f"cqrs-{projection}{suffix}"
    assert meta["topic"] == TOPICS[projection][0]
    assert int(meta["lagThreshold"]) > 0
    assert meta.get("bootstrapServers") or meta.get("bootstrapServersFromEnv") == "KAFKA_BOOTSTRAP_SERVERS"


def test_every_workload_has_a_pod_disruption_budget(docs):
    pdbs = of_kind(docs, "PodDisruptionBudget")
    for w in of_kind(docs, *WORKLOAD_KINDS):
        matching = [p for p in pdbs if selects(p["spec"]["selector"], pod_labels(w))
                    and p["metadata"].get("namespace") == w["metadata"].get("namespace")]
        assert len(matching) == 1, f"{w['kind']} {w['metadata']['name']}: {len(matching)} PDBs select it"
        budget = matching[0]["spec"]
        assert budget.get("maxUnavailable") or budget.get("minAvailable") is not None


def test_servicemonitor_scrapes_gateway_query_api_and_workers(docs):
    (monitor,) = of_kind(docs, "ServiceMonitor")
    endpoints = {e["port"]: e for e in monitor["spec"]["endpoints"]}
    assert all(e["path"] == "/metrics" for e in endpoints.values())
    # the HTTP services' /metrics need an operator's token (a process port "metrics" is pod-internal)
    assert endpoints["http"]["authorization"] == {"type": "Bearer",
                                                  "credentials": {"name": "cqrs-secrets", "key": "metrics_token"}}
    scraped = set()
    for service in of_kind(docs, "Service"):
        if selects(monitor["spec"]["selector"], service["metadata"]["labels"]):
            port_names = {p["name"] for p in service["spec"]["ports"]}
            assert port_names & set(endpoints), f"Service {service['metadata']['name']}: no scraped port"
            scraped.add(service["metadata"]["name"])
    expected = {"cqrs-command-gateway", "cqrs-query-api"} | {f"cqrs-worker-{p}" for p in PROJECTIONS}
    assert expected <= scraped
    assert [p["port"] for s in of_kind(docs, "Service") if s["metadata"]["name"] in scraped
            and s["metadata"]["name"].startswith("cqrs-worker-") for p in s["spec"]["ports"]] == [9100] * 3


def test_settings_are_known_and_secrets_stay_secret(docs):
    known = {name.upper() for name in Settings.model_fields}
    (config,) = of_kind(docs, "ConfigMap")
    (secret,) = of_kind(docs, "Secret")
    secret_keys = set(secret.get("stringData", {})) | set(secret.get("data", {}))
    # files in the secrets dir, named after the settings they fill; API tokens are signed, not listed
    assert secret_keys == {"kafka_sasl_password", "schema_registry_password", "write_db_password",
                           "mongo_password", "elasticsearch_api_key", "redis_password", "auth_jwt_secret",
                           "metrics_token"}
    assert secret_keys - {"metrics_token"} <= set(Settings.model_fields)
    assert all("PLACEHOLDER" in v for v in secret["stringData"].values())
    assert set(config["data"]) <= known - {k.upper() for k in secret_keys}, set(config["data"]) - known
    assert not any(k in config["data"] for k in ("API_TOKENS", "AUTH_JWT_SECRET"))
    assert ":" not in config["data"]["WRITE_DB_URL"].split("://", 1)[1].split("@", 1)[0]  # no password in it
    secrets = {k: v for k, v in secret["stringData"].items() if k in Settings.model_fields}
    secrets["auth_jwt_secret"] = secrets["auth_jwt_secret"].ljust(32, "-")  # a placeholder; real keys are longer
    Settings(_secrets_dir=None, **{k.lower(): v for k, v in config["data"].items()}, **secrets)  # all parse
    for w in of_kind(docs, *WORKLOAD_KINDS):
        pod = w["spec"]["template"]["spec"]
        mounted = {v["name"] for v in pod["volumes"] if v.get("secret", {}).get("secretName")
                   == secret["metadata"]["name"]}
        assert mounted, w["metadata"]["name"]
        for c in pod["containers"] + pod.get("initContainers", []):
            refs = {next(iter(s.values()))["name"] for s in c["envFrom"]}
            assert refs == {config["metadata"]["name"]}, w["metadata"]["name"]  # no secret in the environment
            assert {"name": "CQRS_SECRETS_DIR", "value": "/run/secrets/cqrs"} in c["env"], c["name"]
            assert any(m["name"] in mounted and m["mountPath"] == "/run/secrets/cqrs" and m.get("readOnly")
                       for m in c["volumeMounts"]), c["name"]


def test_labels_are_consistent(docs):
    for doc in docs:
        if doc["kind"] == "Namespace":
            continue
        labels = doc["metadata"].get("labels", {})
        where = f"{doc['kind']} {doc['metadata']['name']}"
        assert labels.get("app.kubernetes.io/name") == "cqrs-pipeline", where
        assert labels.get("app.kubernetes.io/component"), where
        assert labels.get("app.kubernetes.io/part-of") == "cqrs-pipeline", where
    for w in of_kind(docs, *WORKLOAD_KINDS):
        assert pod_labels(w)["app.kubernetes.io/component"] == component(w)
        assert selects(w["spec"]["selector"], pod_labels(w))


def test_local_overlay_namespace_image_and_sizes(rendered):
    base, local = rendered["base"], rendered["local"]
    assert of_kind(local, "Namespace")[0]["metadata"]["name"] == "cqrs-local"
    assert all(d["metadata"].get("namespace") == "cqrs-local" for d in local if d["kind"] != "Namespace")
    for w in of_kind(local, *WORKLOAD_KINDS):
        b = by_name(base, w["kind"], w["metadata"]["name"])
        assert w["spec"]["replicas"] <= b["spec"]["replicas"]
        for c, cb in zip(w["spec"]["template"]["spec"]["containers"], b["spec"]["template"]["spec"]["containers"]):
            assert c["image"] == "cqrs-pipeline:local" and cb["image"] == "cqrs-pipeline:latest"
            assert c["resources"] != cb["resources"]
    assert by_name(local, "Deployment", "cqrs-outbox-relay")["spec"]["replicas"] < 2


def test_every_container_command_parses_with_the_cqrs_cli(docs):
    from app.cli import build_parser

    parser = build_parser()
    for w in of_kind(docs, *WORKLOAD_KINDS):
        spec = w["spec"]["template"]["spec"]
        for c in spec.get("initContainers", []) + spec["containers"]:
            assert c["command"][0] == "cqrs", c["command"]
            args = parser.parse_args(c["command"][1:])  # exits (SystemExit) on an unknown flag or projection
            assert getattr(args, "host", "0.0.0.0") == "0.0.0.0", f"{w['metadata']['name']}: binds loopback only"


@pytest.mark.parametrize("projection", ["order-views", "product-search", "sales-stats"])
def test_workers_probe_liveness_and_readiness_on_their_metrics_port(docs, projection):
    """Readiness follows the worker's store health (503 while it waits out an outage); liveness only
    asks whether the process serves, so an outage never restarts a worker."""
    pod = by_name(docs, "StatefulSet", f"cqrs-worker-{projection}")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
