"""promtool against deploy/monitoring/: the rule file loads, and its unit tests (alerts_test.yaml: input
series -> alerts that must and must not fire) pass.

promtool comes from $PROMTOOL or the tools cache (deploy/monitoring/tools.py builds it from the Prometheus
Go module on first use, several minutes on two cores); if it can be neither found nor built, the tests
fail with the reason. Needs no service of the local stack."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "deploy" / "monitoring"


def _tools():
    spec = importlib.util.spec_from_file_location("monitoring_tools", MONITORING / "tools.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


tools = _tools()


@pytest.fixture(autouse=True)
def _needs_stack():
    """Overrides the integration suite's stack fixture: promtool needs no service."""


@pytest.fixture(scope="module")
def promtool() -> Path:
    """promtool from PROMTOOL or the cache, else built once from the Prometheus Go module; a missing
    toolchain or a failed build fails the tests with its reason."""
    found = tools.find_promtool()
    if found:
        return found
    try:
        return tools.ensure_promtool()
    except tools.ToolError as exc:
        pytest.fail(str(exc), pytrace=False)


def _run(promtool: Path, *args: str, cwd: Path = MONITORING) -> subprocess.CompletedProcess:
    return subprocess.run([str(promtool), *args], capture_output=True, text=True, timeout=120, cwd=cwd)


@pytest.mark.timeout(1500)
def test_rules_file_is_valid(promtool):
    proc = _run(promtool, "check", "rules", str(tools.RULES))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout + proc.stderr


@pytest.mark.timeout(1500)
def test_rule_unit_tests_pass(promtool):
    proc = _run(promtool, "test", "rules", str(tools.RULE_TESTS))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout + proc.stderr


@pytest.mark.timeout(1500)
def test_rule_unit_tests_catch_a_wrong_threshold(promtool, tmp_path):
    """The unit tests are not vacuous: with the lag threshold at 100 s instead of 60 s they fail."""
    rules = tools.RULES.read_text()
    assert "max by (projection) (projection_lag_seconds) > 60\n" in rules
    (tmp_path / "alerts.yaml").write_text(
        rules.replace("max by (projection) (projection_lag_seconds) > 60\n",
                      "max by (projection) (projection_lag_seconds) > 100\n"))
    (tmp_path / "alerts_test.yaml").write_text(tools.RULE_TESTS.read_text())
    proc = _run(promtool, "test", "rules", "alerts_test.yaml", cwd=tmp_path)
    assert proc.returncode != 0
    assert "ProjectionEventTimeLagHigh" in proc.stdout + proc.stderr
