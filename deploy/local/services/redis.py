"""Redis from the Debian package, run as a private instance under the stack's state dir.

Debian's redis-server service is not used: `redis-server <generated config>` runs in the
foreground, bound to 127.0.0.1, with append-only persistence in the data dir (RDB snapshots off).

Authentication: the ACL user `cqrs` (deploy/local/credentials.py: <state>/secrets/redis_username and
redis_password) may do everything; the `default` user needs the same password, so a client without
credentials gets NOAUTH. The config holds only the password's SHA-256, and is rewritten on every start, so a new
password (a deleted secret file) takes effect at the next start; a server running with another ACL is
reported as needing a restart, which `stack up` does.
"""
from __future__ import annotations

import hashlib
import os
import pwd
import shutil
import socket
import subprocess
import time
from pathlib import Path

from deploy.local.base import StackError, StackPaths, apt_install, port_open, read_pid, spawn
from deploy.local.credentials import ensure_secrets, read_secret
from deploy.local.services import Health, Service

PACKAGE = "redis-server"


class Redis(Service):
    name = "redis"
    startup_timeout = 60.0

    def __init__(self) -> None:
        self.port = int(os.environ.get("REDIS_PORT", "6379"))

    def url(self) -> str:
        return f"redis://{self.address}/0"

    def binary(self) -> str | None:
        return shutil.which("redis-server") or next(
            (p for p in ("/usr/bin/redis-server", "/usr/local/bin/redis-server") if os.access(p, os.X_OK)), None)

    def config_file(self, paths: StackPaths) -> Path:
        return paths.data(self.name) / "redis.conf"

    # ---- Service interface -----------------------------------------------------------------

    def installed(self, paths: StackPaths) -> bool:
        return self.binary() is not None

    def install(self, paths: StackPaths) -> None:
        if self.installed(paths):
            return
        apt_install([PACKAGE], paths=paths, what="install Redis", log=paths.log(self.name))
        if not self.installed(paths):
            raise StackError(f"install Redis: {PACKAGE} installed but redis-server is not on PATH")
        _disable_debian_unit()

    def start(self, paths: StackPaths) -> None:
        binary = self.binary()
        if binary is None:
            raise StackError("start redis: redis-server is not installed; run install first")
        if read_pid(paths, self.name) is not None:
            return
        if port_open(self.host, self.port):
            raise StackError(f"start redis: {self.address} is already in use by another process "
                             f"(Debian's redis-server service? see `ss -ltnp`); stop it or set REDIS_PORT")
        data = paths.data(self.name)
        data.mkdir(parents=True, exist_ok=True)
        conf = self.config_file(paths)
        secrets = ensure_secrets(paths)
        conf.write_text(self._config(data, secrets["redis_username"], secrets["redis_password"]))
        os.chmod(conf, 0o600)
        if paths.user:
            entry = pwd.getpwnam(paths.user)
            os.chown(data, entry.pw_uid, entry.pw_gid)
            os.chown(conf, entry.pw_uid, entry.pw_gid)
        os.chmod(data, 0o750)
        spawn(paths, self.name, [binary, str(conf)], cwd=data)

    def probe(self, paths: StackPaths) -> Health:
        """AUTH as the stack's ACL user, PING, INFO. An AUTH refused by a server that answers means it
        runs with another ACL (started before the user existed or with an older password): restart."""
        deadline = time.monotonic() + 3.0
        user, password = read_secret(paths, "redis_username"), read_secret(paths, "redis_password")
        try:
            with socket.create_connection((self.host, self.port), timeout=1.5) as sock:
                reader = _Reader(sock, deadline)
                if user and password:
                    sock.sendall(_resp("AUTH", user, password))
                    answer = reader.line()
                    if answer != b"+OK":
                        return Health(False, restart_needed=True,
                                      detail=f"AUTH as {user}: {answer.decode(errors='replace')[:120]} "
                                             f"(running without the stack's ACL; restart needed)")
                sock.sendall(_resp("PING"))
                pong = reader.line()
                if pong != b"+PONG":
                    return Health(False, detail=f"PING: {pong.decode(errors='replace')[:200]}")
                sock.sendall(_resp("INFO", "server"))
                info = reader.bulk()
        except Exception as exc:  # noqa: BLE001 - a probe reports, never raises
            return Health(False, detail=f"redis: {type(exc).__name__}: {exc}")
        fields = dict(line.split(":", 1) for line in info.decode(errors="replace").splitlines() if ":" in line)
        version = fields.get("redis_version", "?")
        return Health(True, version=version, detail=f"mode={fields.get('redis_mode', '?')}")

    # ---- helpers ---------------------------------------------------------------------------

    def _config(self, data: Path, user: str, password: str) -> str:
        digest = hashlib.sha256(password.encode()).hexdigest()
        return "\n".join([
            f"bind {self.host}",
            f"port {self.port}",
            "protected-mode yes",
            "daemonize no",
            "supervised no",
            'logfile ""',
            f"dir {_quote(str(data))}",
            'save ""',
            "appendonly yes",
            'appendfilename "appendonly.aof"',
            "appendfsync everysec",
            # ACL: no anonymous access; the stack's user may use every key, channel and command. `default`
            # stays on with the same password rather than off: Redis 7.0 replays the AOF as `default`, and
            # with it off every MULTI/EXEC there (each Lua script's writes) fails NOPERM and is lost.
            f"user default on #{digest} ~* &* +@all",
            f"user {user} on #{digest} ~* &* +@all",
            "",
        ])


class _Reader:
    """Buffered RESP reader bounded by an absolute deadline."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline
        self.buf = b""

    def _fill(self) -> None:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("timed out")
        self.sock.settimeout(remaining)
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed")
        self.buf += chunk

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            self._fill()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def bulk(self) -> bytes:
        header = self.line()
        if not header.startswith(b"$"):
            raise ValueError(header.decode(errors="replace")[:200])
        size = int(header[1:])
        if size < 0:
            raise ValueError("null reply")
        while len(self.buf) < size + 2:
            self._fill()
        body, self.buf = self.buf[:size], self.buf[size + 2:]
        return body


def _resp(*args: str) -> bytes:
    out = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        raw = arg.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(out)


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _disable_debian_unit() -> None:
    """On systemd hosts keep Debian's redis-server.service from taking the port at boot."""
    if not Path("/run/systemd/system").is_dir() or shutil.which("systemctl") is None:
        return
    try:
        subprocess.run(["systemctl", "disable", "--now", "redis-server.service"], capture_output=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        pass
