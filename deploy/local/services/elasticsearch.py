"""Elasticsearch 8.x, single node, from the official distribution archive on Maven Central.

Install: a throwaway pom.xml pulls org.elasticsearch.distribution.integ-test-zip:elasticsearch (the
official server distribution Elastic publishes for integration testing: bin/, lib/, config/ and the
transport-netty4, x-pack-core, x-pack-security and apm modules, no bundled JDK); it is unpacked
into the cache. That archive leaves out modules/rest-root, so `GET /` (the client's info() and
ping()) would answer 405; a small plugin (elasticsearch_root_plugin), compiled against the unpacked
lib/, serves the same document from the node's own build and cluster metadata. Other modules of
the full distribution (analysis-common beyond the server's built-in analyzers, painless, reindex,
mapper-extras, aggregations, ingest-*) are not published on Maven Central and are absent.

Start: config (elasticsearch.yml, jvm options) is written into the data dir, then bin/elasticsearch
runs in the foreground as the service user on a JDK 17+ (ES_JAVA_HOME, else the `java` on PATH).
Security is off and HTTP binds to loopback only. bootstrap() installs a catch-all legacy template
with number_of_replicas 0 so a single node reports green. Probe: GET / and GET /_cluster/health.
"""
from __future__ import annotations

import json
import os
import shutil
import stat
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from deploy.local.base import StackError, StackPaths, chown_tree, run, spawn, which
from deploy.local.services import Health, Service
from deploy.local.services.elasticsearch_root_plugin import SHIM_NAME, install_root_plugin

# The GET / plugin (elasticsearch_root_plugin) is written against the 8.19 plugin API (PluginServices,
# getRestHandlers).
ES_VERSION = os.environ.get("ELASTICSEARCH_VERSION", "8.19.21")
DIST_GROUP = "org.elasticsearch.distribution.integ-test-zip"
DEPENDENCY_PLUGIN_VERSION = "3.8.1"

STAMP = ".installed"
CLUSTER_NAME = "cqrs-local"
NODE_NAME = "cqrs-es-1"
DEFAULTS_TEMPLATE = "cqrs-local-defaults"
HEAP_OPTS = ["-Xms512m", "-Xmx1g"]
# GC logging to stderr at warning level only (the stock options keep up to 2 GB of gc.log files),
# and no heap dumps into the logs directory.
JVM_OPTS = ["-Xlog:disable", "-Xlog:all=warning:stderr:utctime,level,tags", "-XX:-HeapDumpOnOutOfMemoryError"]

_POM = """<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0"
         xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
         xsi:schemaLocation="http://maven.apache.org/POM/4.0.0 https://maven.apache.org/xsd/maven-4.0.0.xsd">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.stack</groupId>
  <artifactId>elasticsearch-runtime</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>{group}</groupId>
      <artifactId>elasticsearch</artifactId>
      <version>{version}</version>
      <type>zip</type>
    </dependency>
  </dependencies>
  <build>
    <pluginManagement>
      <plugins>
        <plugin>
          <groupId>org.apache.maven.plugins</groupId>
          <artifactId>maven-dependency-plugin</artifactId>
          <version>{plugin}</version>
        </plugin>
      </plugins>
    </pluginManagement>
  </build>
</project>
"""

class Elasticsearch(Service):
    name = "elasticsearch"
    startup_timeout = 180.0

    def __init__(self) -> None:
        self.port = int(os.environ.get("ELASTICSEARCH_PORT", "9200"))
        self.transport_port = int(os.environ.get("ELASTICSEARCH_TRANSPORT_PORT", str(self.port + 100)))

    # ---- layout -------------------------------------------------------------------------------
    @staticmethod
    def _home(paths: StackPaths) -> Path:
        return paths.install_dir("elasticsearch") / f"elasticsearch-{ES_VERSION}"

    @staticmethod
    def _conf(paths: StackPaths) -> Path:
        return paths.data("elasticsearch") / "config"

    @staticmethod
    def _java_home() -> Path | None:
        """ES_JAVA_HOME if set, else the JDK that owns the `java` on PATH."""
        explicit = os.environ.get("ES_JAVA_HOME")
        if explicit:
            return Path(explicit)
        java = which("java")
        if not java:
            return None
        return Path(os.path.realpath(java)).parent.parent

    # ---- install ------------------------------------------------------------------------------
    def installed(self, paths: StackPaths) -> bool:
        root = paths.install_dir("elasticsearch")
        try:
            stamp = (root / STAMP).read_text().strip()
        except OSError:
            return False
        home = self._home(paths)
        return (stamp == ES_VERSION and (home / "bin" / "elasticsearch").is_file()
                and (home / "lib" / f"elasticsearch-{ES_VERSION}.jar").is_file()
                and (home / "plugins" / SHIM_NAME / f"{SHIM_NAME}.jar").is_file())

    def install(self, paths: StackPaths) -> None:
        if self.installed(paths):
            return
        java_home = self._java_home()
        if java_home is None or not (java_home / "bin" / "java").exists():
            raise StackError("install elasticsearch: no JDK found (set ES_JAVA_HOME or put java 17+ on PATH)")
        javac = java_home / "bin" / "javac"
        if not javac.exists():
            found = which("javac")
            if not found:
                raise StackError(f"install elasticsearch: javac not found in {java_home} or on PATH (need a JDK)")
            javac = Path(found)
        mvn = which("mvn")
        if not mvn:
            raise StackError("install elasticsearch: mvn not found on PATH (the archive comes from Maven Central)")
        log = paths.log("elasticsearch-install")
        root = paths.install_dir("elasticsearch")
        root.mkdir(parents=True, exist_ok=True)
        (root / STAMP).unlink(missing_ok=True)
        home = self._home(paths)
        shutil.rmtree(home, ignore_errors=True)
        download = root / "download"
        shutil.rmtree(download, ignore_errors=True)
        (root / "pom.xml").write_text(_POM.format(group=DIST_GROUP, version=ES_VERSION,
                                                  plugin=DEPENDENCY_PLUGIN_VERSION))
        run([mvn, "-q", "-B", "dependency:copy-dependencies", "-DincludeTypes=zip",
             f"-DoutputDirectory={download}"],
            what=f"install elasticsearch {ES_VERSION} (mvn dependency:copy-dependencies {DIST_GROUP})",
            cwd=root, timeout=900, log=log)
        archive = download / f"elasticsearch-{ES_VERSION}.zip"
        if not archive.is_file():
            raise StackError(f"install elasticsearch: {archive.name} missing from {download} after mvn (log: {log})")
        _unzip(archive, root)
        shutil.rmtree(download, ignore_errors=True)
        if not (home / "bin" / "elasticsearch").is_file():
            raise StackError(f"install elasticsearch: {home}/bin/elasticsearch missing after unpacking {archive.name}")
        install_root_plugin(paths, home, javac, log, ES_VERSION)
        for dirpath, dirnames, filenames in os.walk(root):
            os.chmod(dirpath, os.stat(dirpath).st_mode | 0o755)
            for fname in filenames:
                fpath = os.path.join(dirpath, fname)
                if not os.path.islink(fpath):
                    os.chmod(fpath, os.stat(fpath).st_mode | 0o444)
        (root / STAMP).write_text(ES_VERSION + "\n")

    # ---- start --------------------------------------------------------------------------------
    def _settings(self, paths: StackPaths) -> dict[str, object]:
        data = paths.data("elasticsearch")
        return {
            "cluster.name": CLUSTER_NAME,
            "node.name": NODE_NAME,
            "discovery.type": "single-node",
            "network.host": self.host,
            "http.port": self.port,
            "transport.port": self.transport_port,
            "path.data": str(data / "data"),
            "path.logs": str(data / "logs"),
            # Plain HTTP on loopback, no users.
            "xpack.security.enabled": False,
            # A full dev disk must not flip indices to read-only.
            "cluster.routing.allocation.disk.threshold_enabled": False,
        }

    def _write_config(self, paths: StackPaths) -> Path:
        conf = self._conf(paths)
        conf.mkdir(parents=True, exist_ok=True)
        stock = self._home(paths) / "config"
        for name in ("jvm.options", "log4j2.properties", "roles.yml", "role_mapping.yml", "users", "users_roles"):
            if (stock / name).is_file():
                shutil.copyfile(stock / name, conf / name)
        options = conf / "jvm.options.d"
        options.mkdir(exist_ok=True)
        (options / "cqrs-local.options").write_text("\n".join(HEAP_OPTS + JVM_OPTS) + "\n")
        lines = [f"{key}: {json.dumps(value)}" for key, value in self._settings(paths).items()]
        (conf / "elasticsearch.yml").write_text("\n".join(lines) + "\n")
        return conf

    def start(self, paths: StackPaths) -> None:
        if self.running(paths):
            return
        if not self.installed(paths):
            raise StackError(f"start elasticsearch: not installed in {paths.install_dir('elasticsearch')}; "
                             f"run install first")
        java_home = self._java_home()
        if java_home is None or not (java_home / "bin" / "java").exists():
            raise StackError("start elasticsearch: no JDK found (set ES_JAVA_HOME or put java 17+ on PATH)")
        data = paths.data("elasticsearch")
        for sub in ("data", "logs", "tmp"):
            (data / sub).mkdir(parents=True, exist_ok=True)
        conf = self._write_config(paths)
        chown_tree(data, paths.user)
        env = {
            "ES_JAVA_HOME": str(java_home),
            "ES_PATH_CONF": str(conf),
            "ES_TMPDIR": str(data / "tmp"),
        }
        spawn(paths, "elasticsearch", [str(self._home(paths) / "bin" / "elasticsearch")], env=env, cwd=data)

    def bootstrap(self, paths: StackPaths) -> None:
        """Once healthy: default new indices to 0 replicas, so a single node stays green.

        A legacy template with order 0 applies only where no composable (_index_template) template
        matches, and never blocks one, whatever its priority or patterns; creating a composable
        template answers with a Warning header naming it (the composable one takes precedence)."""
        body = {"index_patterns": ["*"], "order": 0, "settings": {"index": {"number_of_replicas": 0}}}
        try:
            _request("PUT", f"http://{self.address}/_template/{DEFAULTS_TEMPLATE}", body, timeout=10)
        except (OSError, ValueError) as exc:
            raise StackError(f"elasticsearch: could not install the {DEFAULTS_TEMPLATE} template on "
                             f"{self.address}: {exc}") from exc

    # ---- probe --------------------------------------------------------------------------------
    def probe(self, paths: StackPaths) -> Health:
        base = f"http://{self.address}"
        try:
            status, headers, health = _request("GET", f"{base}/_cluster/health", timeout=1.5)
        except urllib.error.HTTPError as exc:
            return Health(False, detail=f"GET /_cluster/health: HTTP {exc.code}")
        except Exception as exc:  # noqa: BLE001 - a probe reports, it never raises
            return Health(False, detail=f"GET {base}/_cluster/health: {_reason(exc)}")
        product = headers.get("X-Elastic-Product", "")
        state = health.get("status", "?") if isinstance(health, dict) else "?"
        version = "?"
        try:
            _, _, info = _request("GET", f"{base}/", timeout=1.2)
            version = str(info["version"]["number"])
        except Exception:  # noqa: BLE001 - version is informative only
            pass
        if product != "Elasticsearch":
            return Health(False, version=version, detail=f"X-Elastic-Product header is {product!r}")
        healthy = state in ("green", "yellow")
        return Health(healthy, version=version, detail=f"cluster {state}")


def _request(method: str, url: str, body: object | None = None, timeout: float = 3.0):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json", "Accept": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        raw = resp.read()
        return resp.status, resp.headers, json.loads(raw) if raw else None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError):
        exc = exc.reason if isinstance(exc.reason, BaseException) else exc
    return f"{type(exc).__name__}: {exc}"


def _unzip(archive: Path, dest: Path) -> None:
    """Extract keeping the Unix modes stored in the archive (zipfile itself drops them)."""
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            target = dest / info.filename
            if not str(target.resolve()).startswith(str(dest.resolve())):
                raise StackError(f"install elasticsearch: unsafe path {info.filename!r} in {archive.name}")
            mode = (info.external_attr >> 16) & 0o7777
            if stat.S_ISLNK(info.external_attr >> 16):
                target.parent.mkdir(parents=True, exist_ok=True)
                target.unlink(missing_ok=True)
                os.symlink(zf.read(info).decode(), target)
                continue
            zf.extract(info, dest)
            if mode:
                os.chmod(target, mode)
