"""``sous-client`` stands alone: it imports only httpx, pydantic and the standard library."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "sous_client"
ALLOWED = {"httpx", "pydantic", "sous_client"}


def imported_top_levels() -> set[str]:
    names: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
    return names


def test_the_client_imports_nothing_but_httpx_pydantic_and_the_standard_library() -> None:
    assert imported_top_levels() - sys.stdlib_module_names - ALLOWED == set()


def test_its_declared_dependencies_are_exactly_those() -> None:
    project = tomllib.loads((PACKAGE.parents[1] / "pyproject.toml").read_text())["project"]
    assert sorted(dep.split(">")[0] for dep in project["dependencies"]) == ["httpx", "pydantic"]
    assert project["scripts"] == {"sous-client": "sous_client.cli:main"}


def test_importing_the_client_loads_no_other_sous_package() -> None:
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, sous_client.cli; print(*sorted(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.split()
    assert [name for name in loaded if name.startswith("sous_") and "client" not in name] == []
