"""Confluent-compatible Avro schema registry: Apicurio Registry through its ccompat API.

Apicurio publishes the packaged Quarkus fast-jar on Maven Central as
io.apicurio:apicurio-registry-app:<version>:tar.gz:all, so Maven fetches it and
`java -jar quarkus-run.jar` runs it; no container is involved. Clients use the
Confluent REST dialect under /apis/ccompat/v7, so
confluent_kafka.schema_registry.SchemaRegistryClient works unchanged with
SCHEMA_REGISTRY_URL=http://127.0.0.1:8081/apis/ccompat/v7.

Storage is persistent by default: an embedded H2 database file under the data
directory, so schema ids (which Kafka records carry in their 5-byte header)
survive restarts. REGISTRY_DB_URL switches to another JDBC store, e.g.
jdbc:postgresql://127.0.0.1:5432/schema_registry (that database must exist;
Apicurio creates its own tables), with REGISTRY_DB_USER / REGISTRY_DB_PASSWORD.
A jdbc:h2:mem: URL gives throwaway in-memory storage.

Environment:
  SCHEMA_REGISTRY_PORT        HTTP port on 127.0.0.1 (8081)
  REGISTRY_MANAGEMENT_PORT    Quarkus management interface (health, metrics) on 127.0.0.1 (9081)
  REGISTRY_DB_URL             JDBC URL (default: H2 file in the data directory)
  REGISTRY_DB_USER            JDBC user (postgres for PostgreSQL, sa for H2)
  REGISTRY_DB_PASSWORD        JDBC password (PGPASSWORD or empty for PostgreSQL, sa for H2)
  REGISTRY_DEFAULT_COMPATIBILITY  global compatibility level (BACKWARD, as Confluent's default)
  REGISTRY_JAVA_HOME          a Java >= 21 to run it with (otherwise JAVA_HOME, /usr/lib/jvm/*, PATH)
  REGISTRY_HEAP               maximum heap (512m)
"""
from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

from deploy.local.base import StackError, StackPaths, chown_tree, run, spawn, which
from deploy.local.services import Health, Service

APICURIO_VERSION = "3.3.3"
APICURIO_GROUP = "io.apicurio"
APICURIO_ARTIFACT = "apicurio-registry-app"
APICURIO_CLASSIFIER = "all"
APICURIO_PACKAGING = "tar.gz"
# The 3.3.x application classes are compiled for Java 21 (class file 65).
MIN_JAVA = 21
DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.6.1"
CCOMPAT_PATH = "/apis/ccompat/v7"
JVM_SEARCH_DIR = Path("/usr/lib/jvm")


def _java_major(java_home: Path) -> int | None:
    """Major version of the Java at java_home, from its `release` file or else `java -version`."""
    version = None
    try:
        match = re.search(r'^JAVA_VERSION="([^"]+)"', (java_home / "release").read_text(errors="replace"),
                          re.MULTILINE)
        version = match.group(1) if match else None
    except OSError:
        pass
    if version is None:
        try:
            proc = subprocess.run([str(java_home / "bin" / "java"), "-version"], capture_output=True, text=True,
                                  timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            return None
        match = re.search(r'version "([^"]+)"', proc.stderr + proc.stdout)
        version = match.group(1) if match else None
    match = re.match(r"(\d+)(?:\.(\d+))?", version or "")
    if not match:
        return None
    major = int(match.group(1))
    if major == 1 and match.group(2):
        major = int(match.group(2))
    return major


def find_java(min_major: int = MIN_JAVA) -> tuple[Path, int]:
    """Return (java binary, major version) of the first suitable Java; raise StackError if none."""
    candidates: list[Path] = []
    for var in ("REGISTRY_JAVA_HOME", "JAVA_HOME"):
        if os.environ.get(var):
            candidates.append(Path(os.environ[var]))
    if JVM_SEARCH_DIR.is_dir():
        found = []
        for home in JVM_SEARCH_DIR.iterdir():
            if home.is_dir() and not home.is_symlink() and (home / "bin" / "java").exists():
                found.append((_java_major(home) or 0, home))
        candidates.extend(home for _, home in sorted(found, key=lambda item: -item[0]))
    on_path = which("java")
    if on_path:
        candidates.append(Path(os.path.realpath(on_path)).parent.parent)
    seen: list[str] = []
    for home in candidates:
        java = home / "bin" / "java"
        if not os.access(java, os.X_OK):
            continue
        major = _java_major(home)
        seen.append(f"{home} ({major or '?'})")
        if major is not None and major >= min_major:
            return java, major
    raise StackError(
        f"registry: Apicurio Registry {APICURIO_VERSION} needs Java >= {min_major}; found "
        f"{', '.join(seen) or 'none'}; set REGISTRY_JAVA_HOME to a newer JDK")


class SchemaRegistry(Service):
    name = "registry"
    startup_timeout = 180.0

    def __init__(self) -> None:
        self.port = int(os.environ.get("SCHEMA_REGISTRY_PORT", "8081"))
        self.management_port = int(os.environ.get("REGISTRY_MANAGEMENT_PORT", "9081"))

    @property
    def url(self) -> str:
        """The base URL for SchemaRegistryClient (SCHEMA_REGISTRY_URL)."""
        return f"http://{self.address}{CCOMPAT_PATH}"

    # ----- install -----------------------------------------------------------------------------

    def _home(self, paths: StackPaths) -> Path:
        return paths.install_dir(self.name) / f"apicurio-registry-{APICURIO_VERSION}"

    def _stamp(self, paths: StackPaths) -> Path:
        return paths.install_dir(self.name) / f".installed-apicurio-{APICURIO_VERSION}"

    def installed(self, paths: StackPaths) -> bool:
        return self._stamp(paths).is_file() and (self._home(paths) / "quarkus-run.jar").is_file()

    def install(self, paths: StackPaths) -> None:
        if self.installed(paths):
            return
        mvn = which("mvn")
        if not mvn:
            raise StackError("registry: Maven (mvn) is needed to fetch Apicurio Registry from Maven Central")
        root = paths.install_dir(self.name)
        root.mkdir(parents=True, exist_ok=True)
        log = paths.log(self.name)
        download = root / ".download"
        staging = root / f".staging-{APICURIO_VERSION}"
        for leftover in (download, staging):
            shutil.rmtree(leftover, ignore_errors=True)
        download.mkdir()
        coords = f"{APICURIO_GROUP}:{APICURIO_ARTIFACT}:{APICURIO_VERSION}:{APICURIO_PACKAGING}:{APICURIO_CLASSIFIER}"
        run([mvn, "-B", "-q", f"{DEPENDENCY_PLUGIN}:copy", f"-Dartifact={coords}",
             f"-DoutputDirectory={download}", f"-Dmaven.repo.local={download / 'm2'}"],
            what=f"registry: fetch {coords} from Maven Central", cwd=download, timeout=1800, log=log)
        archives = sorted(download.glob(f"{APICURIO_ARTIFACT}-*.{APICURIO_PACKAGING}"))
        if not archives:
            raise StackError(f"registry: Maven reported success but no {APICURIO_PACKAGING} is in {download}")
        staging.mkdir()
        run(["tar", "-xzf", str(archives[0]), "-C", str(staging), "--no-same-owner"],
            what="registry: unpack Apicurio Registry", log=log, timeout=600)
        if not (staging / "quarkus-run.jar").is_file():
            raise StackError(f"registry: quarkus-run.jar missing after unpacking {archives[0].name} (log: {log})")
        home = self._home(paths)
        shutil.rmtree(home, ignore_errors=True)
        staging.rename(home)
        shutil.rmtree(download, ignore_errors=True)
        for path in (root, home):
            os.chmod(path, 0o755)
        self._stamp(paths).write_text(f"{APICURIO_GROUP}:{APICURIO_ARTIFACT}:{APICURIO_VERSION}\n")

    # ----- run ---------------------------------------------------------------------------------

    def storage(self, paths: StackPaths) -> tuple[str, str, str, str]:
        """(sql kind, JDBC URL, user, password) for Apicurio's SQL storage."""
        url = os.environ.get("REGISTRY_DB_URL", "").strip()
        if not url:
            url = f"jdbc:h2:file:{paths.data(self.name) / 'registry'}"
        match = re.match(r"jdbc:([a-z0-9]+):", url)
        kind = match.group(1) if match else ""
        if kind == "sqlserver":
            kind = "mssql"
        if kind not in ("h2", "postgresql", "mysql", "mssql"):
            raise StackError(f"registry: unsupported REGISTRY_DB_URL {url!r} (use jdbc:h2:, jdbc:postgresql:, "
                             "jdbc:mysql: or jdbc:sqlserver:)")
        if kind == "h2":
            user = os.environ.get("REGISTRY_DB_USER", "sa")
            password = os.environ.get("REGISTRY_DB_PASSWORD", "sa")
        else:
            user = os.environ.get("REGISTRY_DB_USER", os.environ.get("PGUSER", "postgres"))
            password = os.environ.get("REGISTRY_DB_PASSWORD", os.environ.get("PGPASSWORD", ""))
        return kind, url, user, password

    def command(self, paths: StackPaths) -> list[str]:
        java, major = find_java()
        heap = os.environ.get("REGISTRY_HEAP", "512m")
        tmp = paths.data(self.name) / "tmp"
        compatibility = os.environ.get("REGISTRY_DEFAULT_COMPATIBILITY", "BACKWARD").upper()
        cmd = [str(java), "-Xms128m", f"-Xmx{heap}", "-XX:+UseSerialGC", "-XX:+ExitOnOutOfMemoryError",
               f"-Djava.io.tmpdir={tmp}"]
        if major >= 22:
            cmd.append("--enable-native-access=ALL-UNNAMED")
        if major >= 24:
            cmd.append("--sun-misc-unsafe-memory-access=allow")
        cmd += [
            f"-Dquarkus.http.host={self.host}",
            f"-Dquarkus.http.port={self.port}",
            f"-Dquarkus.management.host={self.host}",
            f"-Dquarkus.management.port={self.management_port}",
            "-Dquarkus.log.category.\"io.quarkus.http.access-log\".level=WARN",
            "-Dapicurio.storage.kind=sql",
            f"-Dapicurio.storage.snapshot.location={tmp}",
            f"-Dapicurio.import.work-dir={tmp}",
            "-Dapicurio.datasource.jdbc.initial-size=2",
            "-Dapicurio.datasource.jdbc.min-size=2",
            "-Dapicurio.datasource.jdbc.max-size=20",
            # Look up subject versions by canonical form, as Confluent does, so a reformatted
            # copy of a registered schema resolves to the existing id instead of a new version.
            "-Dapicurio.ccompat.use-canonical-hash=true",
            f"-Dapicurio.rules.global.compatibility={compatibility}",
            "-jar", str(self._home(paths) / "quarkus-run.jar"),
        ]
        return cmd

    def start(self, paths: StackPaths) -> None:
        if not self.installed(paths):
            raise StackError(f"registry: not installed in {paths.install_dir(self.name)}; run install first")
        data = paths.data(self.name)
        (data / "tmp").mkdir(parents=True, exist_ok=True)
        chown_tree(data, paths.user)
        kind, url, user, password = self.storage(paths)
        env = {
            # Passed through the environment so credentials stay out of the process list.
            "APICURIO_STORAGE_SQL_KIND": kind,
            "APICURIO_DATASOURCE_URL": url,
            "APICURIO_DATASOURCE_USERNAME": user,
            "APICURIO_DATASOURCE_PASSWORD": password,
        }
        spawn(paths, self.name, self.command(paths), env=env, cwd=data)

    # ----- health ------------------------------------------------------------------------------

    def _get_json(self, path: str, timeout: float) -> tuple[int, object]:
        """GET once more if the registry closed the connection without an answer (seen once in a suite run
        while the server was busy): one dropped connection is not an unhealthy server; a refused one or a
        timeout still fails at once."""
        req = urllib.request.Request(f"http://{self.address}{path}", headers={"Accept": "application/json"})
        for attempt in (1, 2):
            try:
                with urllib.request.urlopen(req, timeout=timeout) as resp:
                    return resp.status, json.loads(resp.read().decode("utf-8") or "null")
            except urllib.error.HTTPError as exc:
                return exc.code, None
            except (http.client.RemoteDisconnected, ConnectionResetError):
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def probe(self, paths: StackPaths) -> Health:
        try:
            status, subjects = self._get_json(f"{CCOMPAT_PATH}/subjects", timeout=1.5)
            if status != 200 or not isinstance(subjects, list):
                return Health(False, detail=f"GET {CCOMPAT_PATH}/subjects -> HTTP {status}")
            version, name = "?", ""
            for api in ("v3", "v2"):
                status, info = self._get_json(f"/apis/registry/{api}/system/info", timeout=1.2)
                if status == 200 and isinstance(info, dict):
                    version, name = str(info.get("version", "?")), str(info.get("name", ""))
                    break
            if version == "?":
                return Health(False, detail=f"{self.address} answers ccompat but no Apicurio system info")
            return Health(True, version=version,
                          detail=f"{name or 'Apicurio Registry'} at {self.url}, {len(subjects)} subject(s)")
        except Exception as exc:  # noqa: BLE001 - a probe reports, never raises
            return Health(False, detail=f"{type(exc).__name__}: {exc}")
