"""Apache Kafka 4.x, single KRaft node (broker + controller), assembled from Maven Central jars.

Install: a throwaway pom.xml pulls org.apache.kafka:kafka_2.13 plus the log4j2 SLF4J binding the
official distribution ships, and `mvn dependency:copy-dependencies` lays the jars out in libs/,
the same layout as the release tarball. Start: write server.properties into the data dir, format
the storage once (kafka.tools.StorageTool, what kafka-storage.sh runs), then run kafka.Kafka (what
kafka-server-start.sh runs). Probe: an ApiVersions request over the Kafka wire protocol.
"""
from __future__ import annotations

import base64
import os
import re
import shutil
import socket
import struct
import time
import uuid
from pathlib import Path

from deploy.local.base import StackError, StackPaths, chown_tree, run, spawn, which
from deploy.local.services import Health, Service

KAFKA_VERSION = os.environ.get("KAFKA_VERSION", "4.4.0")
SCALA_BINARY = "2.13"
# log4j2 line that kafka-server 4.4.0 itself depends on; the BOM keeps api/core/binding aligned.
LOG4J2_VERSION = os.environ.get("KAFKA_LOG4J2_VERSION", "2.25.5")
DEPENDENCY_PLUGIN_VERSION = "3.8.1"

NODE_ID = 1
STAMP = ".installed"
HEAP_OPTS = ["-Xms256m", "-Xmx768m"]
JVM_OPTS = [
    "-server", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-XX:InitiatingHeapOccupancyPercent=35",
    "-XX:+ExplicitGCInvokesConcurrent", "-XX:MaxInlineLevel=15", "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
]

_POM = """<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0"
         xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
         xsi:schemaLocation="http://maven.apache.org/POM/4.0.0 https://maven.apache.org/xsd/maven-4.0.0.xsd">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.stack</groupId>
  <artifactId>kafka-runtime</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencyManagement>
    <dependencies>
      <dependency>
        <groupId>org.apache.logging.log4j</groupId>
        <artifactId>log4j-bom</artifactId>
        <version>{log4j}</version>
        <type>pom</type>
        <scope>import</scope>
      </dependency>
    </dependencies>
  </dependencyManagement>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_{scala}</artifactId>
      <version>{kafka}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-core</artifactId>
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

# Console only: the spawned process's stdout is the service log file.
_LOG4J2_XML = """<?xml version="1.0" encoding="UTF-8"?>
<Configuration status="WARN" shutdownHook="disable">
  <Appenders>
    <Console name="STDOUT" target="SYSTEM_OUT">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
    </Console>
  </Appenders>
  <Loggers>
    <Root level="INFO"><AppenderRef ref="STDOUT"/></Root>
    <Logger name="kafka.request.logger" level="WARN"/>
    <Logger name="state.change.logger" level="WARN"/>
    <Logger name="kafka.log.LogCleaner" level="WARN"/>
    <Logger name="org.apache.kafka.storage.internals.log" level="WARN"/>
    <Logger name="kafka.cluster.Partition" level="WARN"/>
    <Logger name="kafka.server.metadata" level="WARN"/>
    <Logger name="org.apache.kafka.clients" level="WARN"/>
    <Logger name="org.apache.kafka.common.config" level="WARN"/>
    <Logger name="org.apache.kafka.common.utils.AppInfoParser" level="WARN"/>
    <Logger name="org.apache.kafka.common.metrics" level="WARN"/>
    <Logger name="org.apache.kafka.coordinator" level="WARN"/>
  </Loggers>
</Configuration>
"""


def _cluster_id() -> str:
    """A random Kafka Uuid in its string form (url-safe base64, no padding, not starting with '-')."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):
            return text


class Kafka(Service):
    name = "kafka"
    startup_timeout = 120.0

    def __init__(self) -> None:
        self.port = int(os.environ.get("KAFKA_PORT", "9092"))
        self.controller_port = self.port + 1

    # ---- layout -------------------------------------------------------------------------------
    @staticmethod
    def _libs(paths: StackPaths) -> Path:
        return paths.install_dir("kafka") / "libs"

    @staticmethod
    def _log4j_config(paths: StackPaths) -> Path:
        return paths.install_dir("kafka") / "log4j2.xml"

    @staticmethod
    def _log_dir(paths: StackPaths) -> Path:
        return paths.data("kafka") / "kafka-logs"

    @staticmethod
    def _config(paths: StackPaths) -> Path:
        return paths.data("kafka") / "server.properties"

    def _version(self, paths: StackPaths) -> str:
        pattern = re.compile(rf"^kafka_{re.escape(SCALA_BINARY)}-(\d[\w.\-]*)\.jar$")
        try:
            for entry in os.listdir(self._libs(paths)):
                match = pattern.match(entry)
                if match:
                    return match.group(1)
        except OSError:
            pass
        return "?"

    # ---- install ------------------------------------------------------------------------------
    def installed(self, paths: StackPaths) -> bool:
        root = paths.install_dir("kafka")
        try:
            stamp = (root / STAMP).read_text().strip()
        except OSError:
            return False
        return (stamp == KAFKA_VERSION and self._version(paths) == KAFKA_VERSION
                and self._log4j_config(paths).is_file())

    def install(self, paths: StackPaths) -> None:
        if self.installed(paths):
            return
        if not which("java"):
            raise StackError("install kafka: java not found on PATH (Kafka 4 needs Java 17+)")
        mvn = which("mvn")
        if not mvn:
            raise StackError("install kafka: mvn not found on PATH (jars come from Maven Central)")
        root = paths.install_dir("kafka")
        root.mkdir(parents=True, exist_ok=True)
        (root / STAMP).unlink(missing_ok=True)
        libs = self._libs(paths)
        shutil.rmtree(libs, ignore_errors=True)
        (root / "pom.xml").write_text(_POM.format(kafka=KAFKA_VERSION, scala=SCALA_BINARY,
                                                  log4j=LOG4J2_VERSION, plugin=DEPENDENCY_PLUGIN_VERSION))
        run([mvn, "-q", "-B", "dependency:copy-dependencies", "-DincludeScope=runtime",
             f"-DoutputDirectory={libs}"],
            what=f"install kafka {KAFKA_VERSION} (mvn dependency:copy-dependencies)",
            cwd=root, timeout=900, log=paths.log("kafka-install"))
        if self._version(paths) != KAFKA_VERSION:
            raise StackError(f"install kafka: kafka_{SCALA_BINARY}-{KAFKA_VERSION}.jar missing from {libs} "
                             f"after mvn (log: {paths.log('kafka-install')})")
        self._log4j_config(paths).write_text(_LOG4J2_XML)
        for path in [root, libs, *libs.iterdir()]:
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
        (root / STAMP).write_text(KAFKA_VERSION + "\n")

    # ---- start --------------------------------------------------------------------------------
    def _server_properties(self, paths: StackPaths) -> str:
        host, port, cport = self.host, self.port, self.controller_port
        props = {
            "process.roles": "broker,controller",
            "node.id": NODE_ID,
            "controller.quorum.voters": f"{NODE_ID}@{host}:{cport}",
            "controller.listener.names": "CONTROLLER",
            "listeners": f"PLAINTEXT://{host}:{port},CONTROLLER://{host}:{cport}",
            "advertised.listeners": f"PLAINTEXT://{host}:{port}",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(self._log_dir(paths)),
            # Topics are created explicitly by the application.
            "auto.create.topics.enable": "false",
            "num.partitions": 1,
            "default.replication.factor": 1,
            "min.insync.replicas": 1,
            # Internal topics on a single node: RF 1, ISR 1, few partitions.
            "offsets.topic.replication.factor": 1,
            "offsets.topic.num.partitions": 8,
            "transaction.state.log.replication.factor": 1,
            "transaction.state.log.min.isr": 1,
            "transaction.state.log.num.partitions": 8,
            "share.coordinator.state.topic.replication.factor": 1,
            "share.coordinator.state.topic.min.isr": 1,
            "group.initial.rebalance.delay.ms": 0,
            # Small dev box.
            "num.network.threads": 2,
            "num.io.threads": 4,
            "num.recovery.threads.per.data.dir": 1,
            "background.threads": 4,
            "log.retention.hours": 72,
            "log.segment.bytes": 64 * 1024 * 1024,
            "log.retention.check.interval.ms": 300000,
            "socket.request.max.bytes": 104857600,
        }
        return "".join(f"{key}={value}\n" for key, value in props.items())

    def _java(self, paths: StackPaths, main: str, *args: str, heap: list[str]) -> list[str]:
        java = which("java")
        if not java:
            raise StackError("start kafka: java not found on PATH (Kafka 4 needs Java 17+)")
        return [java, *heap, *JVM_OPTS,
                f"-Dlog4j2.configurationFile={self._log4j_config(paths)}",
                f"-Dkafka.logs.dir={paths.log('kafka').parent}",
                "-cp", f"{self._libs(paths)}/*", main, *args]

    def start(self, paths: StackPaths) -> None:
        if self.running(paths):
            return
        if not self.installed(paths):
            raise StackError(f"start kafka: not installed in {paths.install_dir('kafka')}; run install first")
        data = paths.data("kafka")
        log_dir = self._log_dir(paths)
        log_dir.mkdir(parents=True, exist_ok=True)
        config = self._config(paths)
        config.write_text(self._server_properties(paths))
        if not (log_dir / "meta.properties").exists():
            run(self._java(paths, "kafka.tools.StorageTool", "format", "--ignore-formatted",
                           "-t", _cluster_id(), "-c", str(config), heap=["-Xmx256m"]),
                what="format kafka storage (kafka.tools.StorageTool)", timeout=120,
                log=paths.log("kafka"))
        chown_tree(data, paths.user)
        spawn(paths, "kafka", self._java(paths, "kafka.Kafka", str(config), heap=HEAP_OPTS), cwd=data)

    # ---- probe --------------------------------------------------------------------------------
    def probe(self, paths: StackPaths) -> Health:
        version = self._version(paths)
        try:
            count = _api_versions(self.host, self.port, timeout=2.5)
        except _ProbeError as exc:
            return Health(False, version=version, detail=f"ApiVersions to {self.address}: {exc}")
        except Exception as exc:  # noqa: BLE001 - a probe reports, it never raises
            return Health(False, version=version, detail=f"ApiVersions to {self.address}: {exc!r}")
        return Health(True, version=version, detail=f"ApiVersions ok ({count} api keys)")


class _ProbeError(Exception):
    pass


def _uvarint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_uvarint(buf: bytes, pos: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 28:
            raise ValueError("bad varint")


def _compact_string(text: str) -> bytes:
    raw = text.encode()
    return _uvarint(len(raw) + 1) + raw


def _recv_exact(sock: socket.socket, size: int, deadline: float) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _ProbeError("timed out reading the response")
        sock.settimeout(remaining)
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise _ProbeError("connection closed mid-response")
        chunks += chunk
    return bytes(chunks)


def _api_versions(host: str, port: int, timeout: float) -> int:
    """Send ApiVersions v3 (flexible: request header v2, response header v0); return the api key count."""
    api_key, api_version, correlation_id = 18, 3, 0x5EED
    client_id = b"cqrs-stack-probe"
    header = struct.pack(">hhih", api_key, api_version, correlation_id, len(client_id)) + client_id + b"\x00"
    body = _compact_string("cqrs-stack-probe") + _compact_string("1.0") + b"\x00"
    request = header + body
    deadline = time.monotonic() + timeout
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(max(deadline - time.monotonic(), 0.01))
        sock.sendall(struct.pack(">i", len(request)) + request)
        (size,) = struct.unpack(">i", _recv_exact(sock, 4, deadline))
        if not 6 <= size <= 1 << 20:
            raise _ProbeError(f"implausible response size {size} (not a Kafka listener?)")
        payload = _recv_exact(sock, size, deadline)
    got_id, error_code = struct.unpack_from(">ih", payload, 0)
    if got_id != correlation_id:
        raise _ProbeError(f"correlation id {got_id} != {correlation_id}")
    if error_code != 0:
        raise _ProbeError(f"broker error_code {error_code}")
    count, _ = _read_uvarint(payload, 6)
    return max(count - 1, 0)
