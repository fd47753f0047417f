"""The layout's dependency direction, kept true: app → agents → tables → connectors / schemas / domain.

Every import of a project package (at module level, inside functions, under TYPE_CHECKING alike) is read
from the source; one that points upward, or across the command and query sides, fails with its place.
"""
from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

# What each package may import of the project, besides itself.
ALLOWED: dict[str, frozenset[str]] = {
    "domain": frozenset(),
    "schemas": frozenset(),
    "connectors": frozenset(),
    "tables": frozenset({"domain", "schemas", "connectors"}),
    "agents": frozenset({"tables", "domain", "schemas", "connectors"}),
    "app": frozenset({"agents", "tables", "domain", "schemas", "connectors"}),
}
# The two sides of the application never import each other; operations may use both.
APART = {("app.queries", "app.commands"), ("app.commands", "app.queries")}


def project_imports(source: str) -> list[tuple[int, str]]:
    """(line, module) of every absolute import in `source`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return found


def violations(package: str, module: str, source: str) -> list[str]:
    """Imports of `source` (module `module` of top-level `package`) that break the direction."""
    bad = []
    for line, target in project_imports(source):
        top = target.split(".")[0]
        if top in ALLOWED and top != package and top not in ALLOWED[package]:
            bad.append(f"{module}:{line} imports {target} ({package} may import {sorted(ALLOWED[package]) or 'none'})")
        for importer, imported in APART:
            if (module + ".").startswith(importer + ".") and (target + ".").startswith(imported + "."):
                bad.append(f"{module}:{line} imports {target} (the command and query sides stay apart)")
    return bad


def test_every_import_points_down_the_layers() -> None:
    bad = []
    for package in ALLOWED:
        for path in sorted((ROOT / package).rglob("*.py")):
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            bad += violations(package, module, path.read_text())
    assert bad == []


def test_an_upward_import_is_reported_wherever_it_hides() -> None:
    source = ("from typing import TYPE_CHECKING\nimport domain.orders\n"
              "if TYPE_CHECKING:\n    from app.settings import Settings\n"
              "def f():\n    import agents.engine\n")
    assert violations("connectors", "connectors.kafka", source) == [
        "connectors.kafka:2 imports domain.orders (connectors may import none)",
        "connectors.kafka:4 imports app.settings.Settings (connectors may import none)",
        "connectors.kafka:6 imports agents.engine (connectors may import none)"]
    assert violations("app", "app.queries.api", "from app.commands import store\n") == [
        "app.queries.api:1 imports app.commands.store (the command and query sides stay apart)"]
    assert violations("agents", "agents.worker", "from tables.progress import RECENT_IDS\n") == []


def test_every_layer_exists() -> None:
    assert all((ROOT / package / "__init__.py").is_file() for package in ALLOWED)
    assert (ROOT / "app" / "operations" / "__init__.py").is_file()
