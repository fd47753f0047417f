"""Fetch and cache the tools that validate the monitoring assets (today: promtool), idempotently.

promtool is built from the Prometheus Go module (fetched through the Go module proxy), once per
version, into a cache outside the repository: `$CQRS_CACHE_DIR/tools` (default
`/var/cache/cqrs-pipeline/tools` as root, `~/.cache/cqrs-pipeline/tools` otherwise). The first build
takes several minutes on two cores; later calls reuse the binary. `PROMTOOL=/path/to/promtool`
skips the build.

    python deploy/monitoring/tools.py promtool          # build if needed, print the path
    python deploy/monitoring/tools.py check             # promtool check rules + test rules

Failures are one line on stderr and exit code 2. Standard library only.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))   # run as a file: make the project importable
from deploy.local.base import StackPaths  # noqa: E402

PROMETHEUS_MODULE = "github.com/prometheus/prometheus"
# Module versions v0.3XX.Y are Prometheus 3.XX.Y.
PROMTOOL_VERSION = os.environ.get("PROMTOOL_VERSION", "v0.313.5")
BUILD_TIMEOUT_S = float(os.environ.get("PROMTOOL_BUILD_TIMEOUT_S", "1200"))

HERE = Path(__file__).resolve().parent
RULES = HERE / "alerts.yaml"
RULE_TESTS = HERE / "alerts_test.yaml"


class ToolError(RuntimeError):
    """A one-line, user-facing failure."""


def tools_dir() -> Path:
    """Under the stack's download cache (outside the repository, reused by CI and later runs)."""
    return StackPaths.from_env().cache / "tools"


def cached_promtool(version: str = PROMTOOL_VERSION) -> Path:
    return tools_dir() / f"promtool-{version}" / "promtool"


def find_promtool(version: str = PROMTOOL_VERSION) -> Path | None:
    """An existing promtool ($PROMTOOL, then the cache), without building anything."""
    explicit = os.environ.get("PROMTOOL")
    path = Path(explicit) if explicit else cached_promtool(version)
    return path if path.is_file() and os.access(path, os.X_OK) else None


def ensure_promtool(version: str = PROMTOOL_VERSION, timeout_s: float = BUILD_TIMEOUT_S) -> Path:
    """Return a runnable promtool, building it from the Go module proxy into the cache if missing."""
    found = find_promtool(version)
    if found:
        return found
    if os.environ.get("PROMTOOL"):
        raise ToolError(f"PROMTOOL={os.environ['PROMTOOL']} is not an executable file")
    go = shutil.which("go") or ("/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None)
    if not go:
        raise ToolError("promtool: not cached and no Go toolchain on PATH to build it (set PROMTOOL=/path/to/promtool)")
    target = cached_promtool(version)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time; the second caller reuses the first's binary
        if target.is_file() and os.access(target, os.X_OK):
            return target
        log = target.parent / "build.log"
        env = {**os.environ, "CGO_ENABLED": "0", "GOWORK": "off", "GOFLAGS": "-buildvcs=false -mod=readonly"}
        # `go install module/cmd/promtool@version` refuses modules whose go.mod has replace directives
        # (Prometheus has one), so download the module and build it as the main module instead.
        with open(log, "w") as out:
            src = _go(out, [go, "mod", "download", "-json", f"{PROMETHEUS_MODULE}@{version}"], env, timeout_s,
                      log, capture=True)
            try:
                src_dir = Path(json.loads(src)["Dir"])
            except (ValueError, KeyError):
                raise ToolError(f"promtool: `go mod download` gave no module directory; see {log}") from None
            tmp = target.with_name(f".promtool.{os.getpid()}")
            # remove_all_sd leaves out the cloud service-discovery plugins, which promtool only needs for
            # `check service-discovery`, and many of the dependencies to compile.
            _go(out, [go, "build", "-trimpath", "-tags", "remove_all_sd", "-ldflags", "-s -w", "-o", str(tmp),
                      "./cmd/promtool"], env,
                timeout_s, log, cwd=src_dir)
            os.replace(tmp, target)
    return target


def _go(out, cmd: list[str], env: dict, timeout_s: float, log: Path, *, capture: bool = False,
        cwd: Path | None = None) -> str:
    """Run one go command, its stderr (and stdout unless captured) going to the build log."""
    out.write(f"$ {' '.join(cmd)}\n")
    out.flush()
    try:
        proc = subprocess.run(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE if capture else out,
                              stderr=out, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise ToolError(f"promtool: `go {cmd[1]}` took over {timeout_s:.0f}s; see {log}") from None
    if proc.returncode != 0:
        out.flush()
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines()
                 if ln.strip() and not ln.startswith(("$ ", "go: downloading", "go: finding"))]
        raise ToolError(f"promtool: `go {cmd[1]}` failed ({lines[0] if lines else 'no output'}); see {log}")
    return proc.stdout or ""


def run_checks(promtool: Path) -> list[subprocess.CompletedProcess]:
    """`promtool check rules` on the rule file, then `promtool test rules` on its unit tests."""
    results = []
    for args in (["check", "rules", str(RULES)], ["test", "rules", str(RULE_TESTS)]):
        results.append(subprocess.run([str(promtool), *args], capture_output=True, text=True, timeout=300,
                                      cwd=HERE))
    return results


def main(argv: list[str]) -> int:
    action = argv[0] if argv else "promtool"
    if action not in ("promtool", "check") or len(argv) > 1:
        print("usage: tools.py [promtool|check]", file=sys.stderr)
        return 2
    try:
        promtool = ensure_promtool()
    except (ToolError, OSError) as exc:
        print(f"tools.py: {exc}", file=sys.stderr)
        return 2
    if action == "promtool":
        print(promtool)
        return 0
    failed = False
    for proc in run_checks(promtool):
        sys.stdout.write(proc.stdout)
        sys.stderr.write(proc.stderr)
        failed |= proc.returncode != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
