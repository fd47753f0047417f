"""PostgreSQL from the Debian packages, run as a private instance under the stack's state dir.

Debian's own clusters and services (pg_ctlcluster, systemd units) are not used: the server
binaries from /usr/lib/postgresql/<major>/bin run in the foreground on our data dir, bound to
127.0.0.1 only, with their Unix socket in <state>/run/postgres.

Authentication: trust on the Unix socket (superuser `postgres`, used only for bootstrap),
scram-sha-256 on 127.0.0.1. Clients use role `cqrs` with the password generated into
<state>/secrets/write_db_password (deploy/local/credentials.py), which the application's settings read:

    postgresql://cqrs@127.0.0.1:<POSTGRES_PORT>/cqrs       write model (+ WRITE_DB_PASSWORD)
    postgresql://cqrs@127.0.0.1:<POSTGRES_PORT>/ferretdb   FerretDB backend

`start()` waits until the server accepts connections on its socket and then runs the
idempotent `bootstrap()` (role + databases, and the role's password set to the secret on every
run, so a data dir made with an older password is brought in line), so `probe()`, which logs in
as `cqrs`, turns healthy right after `start()` returns. A running server whose role refuses the
secret is reported as needing a restart, which `stack up` does (and so bootstraps it).
"""
from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import time
from pathlib import Path
from urllib.parse import quote

from deploy.local.base import StackError, StackPaths, apt_install, port_open, read_pid, run, spawn
from deploy.local.credentials import ensure_secrets, read_secret
from deploy.local.services import Health, Service

PG_ROOT = Path("/usr/lib/postgresql")
TOOLS = ("postgres", "initdb", "psql", "pg_isready")
SUPERUSER = "postgres"
ROLE = "cqrs"
DATABASES = ("cqrs", "ferretdb")

# Dev-box tuning, passed on the command line so that changing it needs no config rewrite.
SETTINGS = {
    "shared_buffers": "256MB",
    "max_connections": "200",
    "unix_socket_permissions": "0700",
}

_BOOTSTRAP_SQL = """\
SELECT format('CREATE ROLE %I LOGIN PASSWORD %L', :'role', :'password')
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'role') \\gexec
SELECT format('ALTER ROLE %I LOGIN PASSWORD %L', :'role', :'password') \\gexec
""" + "".join(
    f"""\
SELECT format('CREATE DATABASE %I OWNER %I', '{db}', :'role')
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '{db}') \\gexec
"""
    for db in DATABASES
)


def _major(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", name)) or (0,)


def _clean_env(**extra: str) -> dict[str, str]:
    """The current environment without libpq settings that could redirect or break our clients."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(extra)
    return env


class Postgres(Service):
    name = "postgres"
    startup_timeout = 120.0

    def __init__(self) -> None:
        self.port = int(os.environ.get("POSTGRES_PORT", "5432"))

    # ---- locations -------------------------------------------------------------------------

    def data_dir(self, paths: StackPaths) -> Path:
        return paths.data(self.name)

    def socket_dir(self, paths: StackPaths) -> Path:
        return paths.state / "run" / self.name

    def url(self, paths: StackPaths, database: str = "cqrs") -> str:
        """A client URL with the role's password: for the stack's own clients (FerretDB), never to print."""
        password = quote(ensure_secrets(paths)["write_db_password"], safe="")
        return f"postgres://{ROLE}:{password}@{self.host}:{self.port}/{database}"

    def _data_major(self, paths: StackPaths) -> str | None:
        try:
            return (self.data_dir(paths) / "PG_VERSION").read_text().strip()
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            return None

    def bin_dir(self, paths: StackPaths) -> Path | None:
        """The server binaries: the data dir's major if initialised, else the newest installed."""
        wanted = self._data_major(paths)
        candidates = [PG_ROOT / wanted] if wanted else sorted(
            (p for p in PG_ROOT.glob("*") if p.name[:1].isdigit()), key=lambda p: _major(p.name), reverse=True)
        for root in candidates:
            bindir = root / "bin"
            if all(os.access(bindir / tool, os.X_OK) for tool in TOOLS):
                return bindir
        return None

    # ---- Service interface -----------------------------------------------------------------

    def installed(self, paths: StackPaths) -> bool:
        return self.bin_dir(paths) is not None

    def install(self, paths: StackPaths) -> None:
        if self.installed(paths):
            return
        wanted = self._data_major(paths)
        # without a data dir: Debian's metapackage, i.e. the distribution's current major
        package = f"postgresql-{wanted}" if wanted else "postgresql"
        conf = Path("/etc/postgresql-common/createcluster.conf")
        if os.geteuid() == 0 and not conf.exists():
            # Keep the package from creating (and starting) its own "main" cluster on port 5432.
            conf.parent.mkdir(parents=True, exist_ok=True)
            conf.write_text("create_main_cluster = false\n")
        apt_install([package], paths=paths, what=f"install PostgreSQL ({package})", log=paths.log(self.name))
        if not self.installed(paths):
            raise StackError(f"install PostgreSQL: {package} installed but no server binaries under {PG_ROOT}")

    def start(self, paths: StackPaths) -> None:
        bindir = self.bin_dir(paths)
        if bindir is None:
            major = self._data_major(paths)
            need = (f"PostgreSQL {major} (the data dir {self.data_dir(paths)} was created by it)" if major
                    else "PostgreSQL")
            raise StackError(f"start postgres: {need} is not installed; run install first")
        if read_pid(paths, self.name) is None:
            if port_open(self.host, self.port):
                raise StackError(f"start postgres: {self.address} is already in use by another process "
                                 f"(a Debian cluster? see `ss -ltnp`); stop it or set POSTGRES_PORT")
            self._prepare(paths, bindir)
            cmd = [str(bindir / "postgres"), "-D", str(self.data_dir(paths)),
                   "-c", f"listen_addresses={self.host}", "-p", str(self.port),
                   "-k", str(self.socket_dir(paths))]
            for key, value in SETTINGS.items():
                cmd += ["-c", f"{key}={value}"]
            spawn(paths, self.name, cmd, cwd=self.data_dir(paths))
        self._wait_ready(paths, bindir)
        self.bootstrap(paths)

    def bootstrap(self, paths: StackPaths) -> None:
        """Create role cqrs and databases cqrs/ferretdb (owner cqrs) if missing. Idempotent."""
        bindir = self.bin_dir(paths)
        if bindir is None:
            raise StackError("bootstrap postgres: PostgreSQL is not installed")
        log = paths.log(self.name)
        cmd = [str(bindir / "psql"), "-X", "-q", "-w", "-v", "ON_ERROR_STOP=1", "-v", f"role={ROLE}",
               "-h", str(self.socket_dir(paths)), "-p", str(self.port), "-U", SUPERUSER, "-d", "postgres"]
        # The password goes in on standard input, not the command line (which `ps` shows to everyone).
        script = f"\\set password {_psql_quote(ensure_secrets(paths)['write_db_password'])}\n" + _BOOTSTRAP_SQL
        try:
            proc = subprocess.run(cmd, input=script, env=_clean_env(), capture_output=True, text=True,
                                  timeout=60)
        except (OSError, subprocess.SubprocessError) as exc:
            raise StackError(f"bootstrap postgres (role/databases): {exc} (log: {log})") from exc
        with log.open("a") as fh:
            fh.write(f"$ {' '.join(cmd)} < bootstrap.sql\n{proc.stdout}{proc.stderr}\n")
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
            raise StackError(f"bootstrap postgres (role/databases): psql exited {proc.returncode}: {tail[0]} "
                             f"(log: {log})")

    def probe(self, paths: StackPaths) -> Health:
        try:
            bindir = self.bin_dir(paths)
        except OSError:
            bindir = None
        psql = str(bindir / "psql") if bindir else shutil.which("psql")
        if psql is None:
            return Health(False, detail="psql not found")
        cmd = [psql, "-X", "-w", "-h", self.host, "-p", str(self.port), "-U", ROLE, "-d", "cqrs",
               "-Atc", "show server_version"]
        password = read_secret(paths, "write_db_password") or ""
        try:
            proc = subprocess.run(cmd, env=_clean_env(PGPASSWORD=password, PGCONNECT_TIMEOUT="3"),
                                  capture_output=True, text=True, timeout=3, stdin=subprocess.DEVNULL)
        except Exception as exc:  # noqa: BLE001 - a probe reports, never raises
            return Health(False, detail=f"psql: {type(exc).__name__}: {exc}")
        if proc.returncode != 0:
            lines = (proc.stderr or proc.stdout).strip().splitlines()
            detail = lines[-1] if lines else f"psql exited {proc.returncode}"
            if "password authentication failed" in detail or "no password supplied" in detail:
                return Health(False, restart_needed=True, detail=f"{detail} (role {ROLE} has another password "
                              f"than secrets/write_db_password; a restart bootstraps it)")
            return Health(False, detail=detail)
        full = proc.stdout.strip()
        running = full.split()[0] if full else "?"
        installed = self._installed_version(bindir)
        if installed and running != "?" and installed != running:
            return Health(False, version=running, restart_needed=True,
                          detail=f"running {running} but {installed} is installed (package upgraded); restart needed")
        return Health(True, version=running, detail=full)

    @staticmethod
    def _installed_version(bindir: Path | None) -> str | None:
        if bindir is None:
            return None
        try:
            out = subprocess.run([str(bindir / "postgres"), "--version"], capture_output=True, text=True,
                                 timeout=3, stdin=subprocess.DEVNULL).stdout
        except (OSError, subprocess.SubprocessError):
            return None
        match = re.search(r"\) (\d+(?:\.\d+)+)", out)
        return match.group(1) if match else None

    # ---- helpers ---------------------------------------------------------------------------

    def _prepare(self, paths: StackPaths, bindir: Path) -> None:
        data = self.data_dir(paths)
        sock = self.socket_dir(paths)
        if len(str(sock / f".s.PGSQL.{self.port}")) > 107:
            raise StackError(f"start postgres: socket path under {sock} is too long for a Unix socket; "
                             f"use a shorter CQRS_STATE_DIR")
        for directory in (data.parent, sock):
            directory.mkdir(parents=True, exist_ok=True)
        _own(sock, paths.user, 0o700)
        if (data / "PG_VERSION").exists():
            return
        data.mkdir(parents=True, exist_ok=True)
        _own(data, paths.user, 0o700)
        run([str(bindir / "initdb"), "-D", str(data), "-U", SUPERUSER, "--encoding=UTF8", "--no-locale",
             "--auth-local=trust", "--auth-host=scram-sha-256"],
            what="initdb postgres", user=paths.user, cwd=data, timeout=300,
            log=paths.log(self.name))

    def _wait_ready(self, paths: StackPaths, bindir: Path) -> None:
        deadline = time.monotonic() + self.startup_timeout
        cmd = [str(bindir / "pg_isready"), "-q", "-h", str(self.socket_dir(paths)), "-p", str(self.port),
               "-U", SUPERUSER, "-d", "postgres", "-t", "2"]
        while True:
            try:
                if subprocess.run(cmd, env=_clean_env(), timeout=5, stdin=subprocess.DEVNULL).returncode == 0:
                    return
            except (OSError, subprocess.SubprocessError):
                pass
            if not _alive(paths, self.name):
                raise StackError(f"start postgres: server exited during startup: {_last_line(paths.log(self.name))} "
                                 f"(log: {paths.log(self.name)})")
            if time.monotonic() > deadline:
                raise StackError(f"start postgres: not accepting connections after {self.startup_timeout:.0f}s "
                                 f"(log: {paths.log(self.name)})")
            time.sleep(0.2)


def _psql_quote(value: str) -> str:
    """`value` as a single-quoted psql meta-command argument."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _own(path: Path, user: str | None, mode: int) -> None:
    if user:
        entry = pwd.getpwnam(user)
        os.chown(path, entry.pw_uid, entry.pw_gid)
    os.chmod(path, mode)


def _alive(paths: StackPaths, name: str) -> bool:
    """Like read_pid, but reaps our own exited child so a zombie does not count as running."""
    pid = read_pid(paths, name)
    if pid is None:
        return False
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return done == 0


def _last_line(log: Path) -> str:
    try:
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "(no log)"
    return lines[-1] if lines else "(empty log)"
