"""Process, path and user plumbing shared by every local service recipe.

The local stack keeps downloads in a cache and data/logs in a state directory,
both outside the repository, so fresh clones and CI runs reuse installs.
Servers that refuse to run as root run under a dedicated service user.
"""
from __future__ import annotations

import fcntl
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

SERVICE_USER = "cqrs-svc"


class StackError(RuntimeError):
    """A one-line, user-facing failure: what failed, what was tried, where the log is."""


def _is_root() -> bool:
    return os.geteuid() == 0


@dataclass(frozen=True)
class StackPaths:
    """Where installs (cache) and runtime files (state) live; see module docstring."""

    cache: Path
    state: Path
    user: str | None

    @classmethod
    def from_env(cls) -> "StackPaths":
        if _is_root():
            cache = Path(os.environ.get("CQRS_CACHE_DIR", "/var/cache/cqrs-pipeline"))
            state = Path(os.environ.get("CQRS_STATE_DIR", "/var/lib/cqrs-pipeline"))
            user: str | None = SERVICE_USER
        else:
            home = Path.home()
            cache = Path(os.environ.get("CQRS_CACHE_DIR", home / ".cache" / "cqrs-pipeline"))
            state = Path(os.environ.get("CQRS_STATE_DIR", home / ".local" / "state" / "cqrs-pipeline"))
            user = None
        return cls(cache=cache, state=state, user=user)

    def install_dir(self, name: str) -> Path:
        return self.cache / name

    def data(self, name: str) -> Path:
        return self.state / "data" / name

    def log(self, name: str) -> Path:
        return self.state / "logs" / f"{name}.log"

    def pidfile(self, name: str) -> Path:
        return self.state / "run" / f"{name}.pid"

    def ensure_layout(self) -> None:
        for sub in ("data", "logs", "run"):
            (self.state / sub).mkdir(parents=True, exist_ok=True)
        self.cache.mkdir(parents=True, exist_ok=True)
        if self.user:
            ensure_service_user(self.user)
            for sub in ("data", "logs", "run"):
                chown_tree(self.state / sub, self.user)
            os.chmod(self.state, 0o755)
            os.chmod(self.cache, 0o755)


def ensure_service_user(user: str) -> None:
    try:
        pwd.getpwnam(user)
    except KeyError:
        run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", user],
            what=f"create service user {user}")


def chown_tree(path: Path, user: str | None) -> None:
    if not user or not path.exists():
        return
    entry = pwd.getpwnam(user)
    os.chown(path, entry.pw_uid, entry.pw_gid)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            try:
                os.chown(os.path.join(root, name), entry.pw_uid, entry.pw_gid, follow_symlinks=False)
            except FileNotFoundError:
                pass


def _demote(user: str | None):
    if not user:
        return None
    entry = pwd.getpwnam(user)

    def preexec() -> None:
        os.setgid(entry.pw_gid)
        os.initgroups(user, entry.pw_gid)
        os.setuid(entry.pw_uid)

    return preexec


def run(cmd: list[str], *, what: str, user: str | None = None, env: dict[str, str] | None = None,
        cwd: Path | None = None, timeout: float = 900, log: Path | None = None) -> subprocess.CompletedProcess:
    """Run a command to completion; on failure raise StackError naming `what` and the output tail."""
    full_env = {**os.environ, **(env or {})}
    if user:
        full_env["HOME"] = str(cwd or "/tmp")
    try:
        proc = subprocess.run(cmd, env=full_env, cwd=cwd, timeout=timeout, capture_output=True, text=True,
                              preexec_fn=_demote(user))
    except subprocess.TimeoutExpired as exc:
        raise StackError(f"{what}: timed out after {timeout:.0f}s running {cmd[0]}") from exc
    except FileNotFoundError as exc:
        raise StackError(f"{what}: command not found: {cmd[0]}") from exc
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("a") as fh:
            fh.write(f"$ {' '.join(cmd)}\n{proc.stdout}{proc.stderr}\n")
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
        where = f" (log: {log})" if log else ""
        raise StackError(f"{what}: {cmd[0]} exited {proc.returncode}: {tail[0]}{where}")
    return proc


def spawn(paths: StackPaths, name: str, cmd: list[str], *, env: dict[str, str] | None = None,
          cwd: Path | None = None, as_service_user: bool = True) -> int:
    """Start a long-running server detached from this process; output goes to its log file."""
    log = paths.log(name)
    log.parent.mkdir(parents=True, exist_ok=True)
    user = paths.user if as_service_user else None
    full_env = {**os.environ, **(env or {})}
    if user:
        full_env["HOME"] = str(cwd or paths.data(name))
    with log.open("ab") as out:
        out.write(f"\n=== {time.strftime('%Y-%m-%dT%H:%M:%S')} starting {name}: {' '.join(cmd)}\n".encode())
        out.flush()
        proc = subprocess.Popen(cmd, env=full_env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_demote(user))
    paths.pidfile(name).write_text(str(proc.pid))
    return proc.pid


def read_pid(paths: StackPaths, name: str) -> int | None:
    try:
        pid = int(paths.pidfile(name).read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return pid


def stop_pid(paths: StackPaths, name: str, grace: float = 20.0) -> bool:
    """SIGTERM the process group recorded in the pidfile, SIGKILL after `grace` seconds."""
    pid = read_pid(paths, name)
    if pid is None:
        paths.pidfile(name).unlink(missing_ok=True)
        return False
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            _reap(pid)
            time.sleep(0.2)
        else:
            continue
        break
    paths.pidfile(name).unlink(missing_ok=True)
    return True


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def which(binary: str) -> str | None:
    return shutil.which(binary)


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def apt_install(packages: list[str], *, paths: StackPaths, what: str, log: Path) -> None:
    """apt-get update + install, one recipe at a time (the stack installs services in parallel),
    waiting for other apt/dpkg users, and without letting package scripts start Debian's services."""
    if shutil.which("apt-get") is None:
        raise StackError(f"{what}: apt-get not found; install {' '.join(packages)} by hand")
    if os.geteuid() != 0:
        raise StackError(f"{what}: apt-get install {' '.join(packages)} needs root; run as root or install it by hand")
    env = {"DEBIAN_FRONTEND": "noninteractive", "UCF_FORCE_CONFFOLD": "1"}
    apt_opts = ["-o", "DPkg::Lock::Timeout=600"]
    paths.cache.mkdir(parents=True, exist_ok=True)
    with (paths.cache / ".apt.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        policy = Path("/usr/sbin/policy-rc.d")
        created = False
        if not policy.exists():
            policy.write_text("#!/bin/sh\nexit 101\n")
            policy.chmod(0o755)
            created = True
        try:
            run(["apt-get", *apt_opts, "update"], what=f"{what} (apt-get update)", env=env, log=log)
            run(["apt-get", *apt_opts, "install", "-y", "--no-install-recommends", *packages],
                what=f"{what} (apt-get install)", env=env, log=log)
        finally:
            if created:
                policy.unlink(missing_ok=True)
