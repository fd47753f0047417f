#!/usr/bin/env python3
"""Render and validate the Kubernetes manifests of deploy/k8s without a cluster (standard library and PyYAML).

    python deploy/k8s/tools.py fetch              # build/fetch every tool and schema once (idempotent)
    python deploy/k8s/tools.py validate [PATH...]  # render with kustomize, validate with kubeconform
    python deploy/k8s/tools.py render DIR          # print what kustomize renders for DIR

`validate` without PATH checks deploy/k8s/base and every overlay under deploy/k8s/overlays. A PATH is a
kustomization directory (rendered with kustomize) or a YAML file of rendered manifests (validated as is).
It exits 0 only if every document is valid against its schema (kubeconform -strict, no schema may be
missing) and the scaling rule holds: no worker StatefulSet and no ScaledObject may ask for more
replicas than TOPIC_PARTITIONS of the rendered ConfigMap (a consumer group never uses more members
than partitions).

Everything comes from package registries, built or unpacked into a cache outside the repository
(`$CQRS_CACHE_DIR/k8s-tools`; by default /var/cache/cqrs-pipeline/k8s-tools as root, else
~/.cache/cqrs-pipeline/k8s-tools):

- kustomize and kubeconform: `go install` of their Go modules (through the Go module proxy);
- the Kubernetes JSON schemas: the strict per-version schemas shipped in the PyPI wheel
  `kubernetes-validate` (`pip download`), with their references made local;
- the CRD schemas of KEDA's ScaledObject and the Prometheus Operator's ServiceMonitor: the CRD YAML
  files inside those projects' Go module zips (`go mod download`), their openAPIV3Schema turned into
  strict JSON schemas (additionalProperties: false wherever properties are listed).

Any step that fails prints one line naming it and exits 2; a validation failure exits 1.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))   # run as a file: make the project importable
from deploy.local.base import StackPaths  # noqa: E402

K8S_DIR = Path(__file__).resolve().parent
KUBERNETES_VERSION = "1.33.0"  # schema version validated against (any of 1.25.0 .. 1.37.0 is in the wheel)
KUSTOMIZE = ("sigs.k8s.io/kustomize/kustomize/v5", "v5.8.2")  # v5.8.3 needs Go >= 1.27
KUBECONFORM = ("github.com/yannh/kubeconform/cmd/kubeconform", "v0.8.0")
SCHEMA_WHEEL = ("kubernetes-validate", "1.37.0")
CRDS = (  # (module, version, file inside the module)
    ("github.com/kedacore/keda/v2", "v2.21.0", "config/crd/bases/keda.sh_scaledobjects.yaml"),
    ("github.com/prometheus-operator/prometheus-operator", "v0.85.0",
     "example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml"),
)
BUILD_TIMEOUT_S = 900
FETCH_TIMEOUT_S = 300
RUN_TIMEOUT_S = 120
CACHE_LAYOUT = "1"  # bump when the layout of the cache changes

class ToolError(Exception):
    """A step that failed; its message is the one line printed."""


def cache_dir() -> Path:
    """Under the stack's download cache (outside the repository, reused by CI and later runs)."""
    return StackPaths.from_env().cache / "k8s-tools"


def _tail(text: str | bytes | None, limit: int = 300) -> str:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    lines = [ln.strip() for ln in (text or "").strip().splitlines() if ln.strip()]
    return (lines[-1] if lines else "no output")[-limit:]


def run(step: str, cmd: list[str], timeout: float, **kwargs) -> subprocess.CompletedProcess:
    """Run a command of one step; any failure becomes a ToolError naming the step."""
    try:
        proc = subprocess.run(cmd, check=False, capture_output=True, timeout=timeout, **kwargs)
    except FileNotFoundError:
        raise ToolError(f"{step}: command not found: {cmd[0]}") from None
    except subprocess.TimeoutExpired:
        raise ToolError(f"{step}: timed out after {timeout:.0f} s: {' '.join(cmd)}") from None
    if proc.returncode != 0:
        raise ToolError(f"{step}: exit {proc.returncode}: {_tail(proc.stderr) if proc.stderr else _tail(proc.stdout)}")
    return proc


def go_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("GOFLAGS", "-buildvcs=false")
    env["GOTOOLCHAIN"] = "local"  # never download another Go toolchain
    return env


def require_go() -> str:
    go = shutil.which("go")
    if not go:
        raise ToolError("go: not found on PATH (needed to build kustomize and kubeconform)")
    return go


@contextlib.contextmanager
def locked(cache: Path):
    """One fetch at a time per cache (two test runs may start together)."""
    import fcntl

    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def go_install(cache: Path, name: str, module: str, version: str) -> Path:
    target = cache / "bin" / f"{name}-{version}" / name
    if target.is_file() and os.access(target, os.X_OK):
        return target
    go = require_go()
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=cache))
    try:
        run(f"build {name} ({module}@{version})", [go, "install", f"{module}@{version}"], BUILD_TIMEOUT_S,
            env={**go_env(), "GOBIN": str(staging)}, cwd=staging)
        built = staging / name
        if not built.is_file():
            raise ToolError(f"build {name}: go install produced no {name} binary")
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(built, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def yaml_to_json(text: str, what: str) -> list:
    """Every YAML document of text as plain data (JSON types), null documents dropped."""
    try:
        return [doc for doc in yaml.safe_load_all(text) if doc is not None]
    except yaml.YAMLError as exc:
        raise ToolError(f"parse {what}: {' '.join(str(exc).split())}") from None


def _local_refs(node):
    """The wheel's schemas refer to '/api/_definitions.json#...' under an https $id; make them file-relative."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "$id":
                continue
            if key == "$ref" and isinstance(value, str) and value.startswith("/api/_definitions.json#"):
                value = value[len("/api/"):]
            out[key] = _local_refs(value)
        return out
    if isinstance(node, list):
        return [_local_refs(v) for v in node]
    return node


def fetch_kubernetes_schemas(cache: Path) -> Path:
    """<root>/v<version>-local-strict/<kind>-<group>-<version>.json, from the kubernetes-validate wheel."""
    root = cache / "kubernetes-json-schema"
    dirname = f"v{KUBERNETES_VERSION}-local-strict"
    done = root / dirname / ".complete"
    if done.is_file():
        return root
    name, version = SCHEMA_WHEEL
    download = Path(tempfile.mkdtemp(prefix=".wheel-", dir=cache))
    try:
        run(f"download {name}=={version} from PyPI",
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
             "-q", "-d", str(download), f"{name}=={version}"], FETCH_TIMEOUT_S)
        wheels = list(download.glob("*.whl"))
        if not wheels:
            raise ToolError(f"download {name}=={version}: pip saved no wheel")
        prefix = f"kubernetes_validate/kubernetes-json-schema/{dirname}/"
        staging = root / f".{dirname}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        count = 0
        with zipfile.ZipFile(wheels[0]) as whl:
            for info in whl.infolist():
                if not info.filename.startswith(prefix) or not info.filename.endswith(".json"):
                    continue
                schema = _local_refs(json.loads(whl.read(info)))
                (staging / info.filename[len(prefix):]).write_text(json.dumps(schema))
                count += 1
        if count == 0 or not (staging / "_definitions.json").is_file():
            raise ToolError(f"unpack {name}=={version}: no schemas for Kubernetes {KUBERNETES_VERSION} in the wheel")
        (staging / ".complete").write_text(f"{name}=={version} {count} schemas\n")
        shutil.rmtree(root / dirname, ignore_errors=True)
        os.replace(staging, root / dirname)
    finally:
        shutil.rmtree(download, ignore_errors=True)
    return root


def strict_crd_schema(node, root: bool = True):
    """openAPIV3Schema -> JSON schema that rejects unknown fields (as the API server prunes/rejects them)."""
    if isinstance(node, list):
        return [strict_crd_schema(v, root=False) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: strict_crd_schema(v, root=False) for k, v in node.items()}
    if out.get("x-kubernetes-int-or-string") and "type" not in out and "anyOf" not in out:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if "properties" in out and "additionalProperties" not in out \
            and not out.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    if root:
        out.setdefault("properties", {})
        for field in ("apiVersion", "kind"):
            out["properties"].setdefault(field, {"type": "string"})
        out["properties"].setdefault("metadata", {"type": "object"})
    return out


def fetch_crd_schemas(cache: Path) -> Path:
    """<root>/<group>/<kind>_<version>.json for each CRD of CRDS."""
    root = cache / "crd-schemas"
    marker = root / ".complete"
    wanted = "\n".join(f"{m}@{v}/{f}" for m, v, f in CRDS) + "\n"
    if marker.is_file() and marker.read_text() == wanted:
        return root
    go = require_go()
    staging = Path(tempfile.mkdtemp(prefix=".crd-schemas-", dir=cache))
    try:
        for module, version, path in CRDS:
            step = f"download {module}@{version} from the Go module proxy"
            proc = run(step, [go, "mod", "download", "-json", f"{module}@{version}"], FETCH_TIMEOUT_S,
                       env=go_env(), cwd=staging)
            try:
                zip_path = json.loads(proc.stdout)["Zip"]
            except (ValueError, KeyError):
                raise ToolError(f"{step}: no module zip reported ({_tail(proc.stdout)})") from None
            member = f"{module}@{version}/{path}"
            try:
                with zipfile.ZipFile(zip_path) as mz:
                    text = mz.read(member).decode()
            except (KeyError, OSError, zipfile.BadZipFile) as exc:
                raise ToolError(f"read {member}: {exc}") from None
            written = 0
            for doc in yaml_to_json(text, member):
                if not isinstance(doc, dict) or doc.get("kind") != "CustomResourceDefinition":
                    continue
                spec = doc["spec"]
                for ver in spec.get("versions", []):
                    schema = ver.get("schema", {}).get("openAPIV3Schema")
                    if not schema:
                        continue
                    out = staging / spec["group"] / f"{spec['names']['kind'].lower()}_{ver['name']}.json"
                    out.parent.mkdir(parents=True, exist_ok=True)
                    out.write_text(json.dumps(strict_crd_schema(schema)))
                    written += 1
            if not written:
                raise ToolError(f"convert {member}: no CRD version with an openAPIV3Schema")
        (staging / ".complete").write_text(wanted)
        shutil.rmtree(root, ignore_errors=True)
        os.replace(staging, root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return root


def fetch_all() -> dict[str, Path]:
    cache = cache_dir()
    with locked(cache):
        layout = cache / ".layout"
        if layout.is_file() and layout.read_text().strip() != CACHE_LAYOUT:
            for sub in ("bin", "kubernetes-json-schema", "crd-schemas"):
                shutil.rmtree(cache / sub, ignore_errors=True)
        tools = {
            "kustomize": go_install(cache, "kustomize", *KUSTOMIZE),
            "kubeconform": go_install(cache, "kubeconform", *KUBECONFORM),
        }
        tools["kubernetes_schemas"] = fetch_kubernetes_schemas(cache)
        tools["crd_schemas"] = fetch_crd_schemas(cache)
        layout.write_text(CACHE_LAYOUT + "\n")
    return tools


def render(kustomize: Path, directory: Path) -> str:
    if not (directory / "kustomization.yaml").is_file():
        raise ToolError(f"render {directory}: no kustomization.yaml there")
    return run(f"kustomize build {directory}", [str(kustomize), "build", str(directory)], RUN_TIMEOUT_S).stdout.decode()


def _as_int(value, otherwise: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return otherwise  # a wrong type is kubeconform's to report


def scaling_problems(docs: list) -> list[str]:
    """Workers share a consumer group per projection: more members than partitions would idle."""
    partitions = 6  # app/settings.py default of TOPIC_PARTITIONS
    for doc in docs:
        if isinstance(doc, dict) and doc.get("kind") == "ConfigMap" and "TOPIC_PARTITIONS" in (doc.get("data") or {}):
            try:
                partitions = int(doc["data"]["TOPIC_PARTITIONS"])
            except ValueError:
                return [f"ConfigMap {doc['metadata']['name']}: TOPIC_PARTITIONS is not a number"]
    problems = []
    for doc in docs:
        if not isinstance(doc, dict):
            continue
        kind, name, spec = doc.get("kind"), doc.get("metadata", {}).get("name"), doc.get("spec") or {}
        if kind == "StatefulSet" and _as_int(spec.get("replicas", 1), 0) > partitions:
            problems.append(f"StatefulSet {name}: replicas {spec['replicas']} > TOPIC_PARTITIONS {partitions}")
        if kind == "ScaledObject" and (spec.get("scaleTargetRef") or {}).get("kind") == "StatefulSet":
            top = spec.get("maxReplicaCount")
            if _as_int(top, partitions + 1) > partitions:
                problems.append(f"ScaledObject {name}: maxReplicaCount {top} must be set and "
                                f"<= TOPIC_PARTITIONS {partitions}")
    return problems


def validate(paths: list[Path]) -> int:
    tools = fetch_all()
    schema_locations = [
        str(tools["kubernetes_schemas"]) + "/{{ .NormalizedKubernetesVersion }}-local{{ .StrictSuffix }}/"
                                           "{{ .ResourceKind }}{{ .KindSuffix }}.json",
        str(tools["crd_schemas"]) + "/{{ .Group }}/{{ .ResourceKind }}_{{ .ResourceAPIVersion }}.json",
    ]
    failed = False
    with tempfile.TemporaryDirectory(prefix="k8s-validate-") as tmp:
        for path in paths:
            label = str(path.relative_to(K8S_DIR.parents[1]) if path.is_relative_to(K8S_DIR.parents[1]) else path)
            if path.is_dir():
                text = render(tools["kustomize"], path)
            elif path.is_file():
                text = path.read_text()
            else:
                raise ToolError(f"validate {path}: no such file or directory")
            docs = yaml_to_json(text, label)
            if not docs:
                print(f"FAIL {label}: renders no resources")
                failed = True
                continue
            rendered = Path(tmp) / (label.replace("/", "_").strip("_") + ".yaml")
            rendered.write_text(text)
            cmd = [str(tools["kubeconform"]), "-strict", "-summary", "-kubernetes-version", KUBERNETES_VERSION]
            for location in schema_locations:
                cmd += ["-schema-location", location]
            try:
                proc = subprocess.run(cmd + [str(rendered)], check=False, capture_output=True, text=True,
                                      timeout=RUN_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                raise ToolError(f"kubeconform {label}: timed out after {RUN_TIMEOUT_S} s") from None
            output = (proc.stdout + proc.stderr).strip().replace(str(rendered), label)
            problems = scaling_problems(docs)
            ok = proc.returncode == 0 and not problems
            print(f"{'ok  ' if ok else 'FAIL'} {label}: {len(docs)} resources")
            if output:
                print("\n".join("    " + ln for ln in output.splitlines()))
            for problem in problems:
                print(f"    {label} - {problem}")
            failed |= not ok
    return 1 if failed else 0


def default_paths() -> list[Path]:
    overlays = sorted(p for p in (K8S_DIR / "overlays").glob("*") if (p / "kustomization.yaml").is_file())
    return [K8S_DIR / "base", *overlays]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tools.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("fetch", help="build/fetch kustomize, kubeconform and the schemas into the cache")
    p_val = sub.add_parser("validate", help="render with kustomize and validate with kubeconform")
    p_val.add_argument("paths", nargs="*", type=Path, help="kustomization dirs or rendered YAML files "
                                                             "(default: base and every overlay)")
    p_ren = sub.add_parser("render", help="print the kustomize rendering of a directory")
    p_ren.add_argument("directory", type=Path)
    sub.add_parser("where", help="print the cache directory")
    args = parser.parse_args(argv)
    try:
        if args.command == "where":
            print(cache_dir())
            return 0
        if args.command == "fetch":
            for name, path in fetch_all().items():
                print(f"{name:<19} {path}")
            return 0
        if args.command == "render":
            sys.stdout.write(render(fetch_all()["kustomize"], args.directory.resolve()))
            return 0
        return validate([p.resolve() for p in args.paths] or default_paths())
    except (ToolError, OSError) as exc:
        print(f"k8s tools: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
