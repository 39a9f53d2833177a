"""Import direction: services never import each other, shared code never imports a service."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SERVICES = {
    "sous_api": ROOT / "services/api/src/sous_api",
    "sous_worker_fast": ROOT / "services/worker-fast/src/sous_worker_fast",
    "sous_worker_heavy": ROOT / "services/worker-heavy/src/sous_worker_heavy",
    "sous_scheduler": ROOT / "services/scheduler/src/sous_scheduler",
}
CORE = ROOT / "libs/core/src/sous_core"


def imported_packages(package_dir: Path) -> set[str]:
    names: set[str] = set()
    for path in package_dir.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_services_do_not_import_each_other(service: str) -> None:
    others = set(SERVICES) - {service}
    assert imported_packages(SERVICES[service]) & others == set()


def test_core_imports_no_service() -> None:
    assert imported_packages(CORE) & set(SERVICES) == set()


def test_api_and_scheduler_images_stay_free_of_worker_dependencies() -> None:
    for service in ("sous_api", "sous_scheduler"):
        assert {"gevent", "httpx", "ffmpeg", "sous_fetch"} & imported_packages(
            SERVICES[service]
        ) == set()


def test_core_stays_free_of_worker_dependencies() -> None:
    assert {"gevent", "httpx", "ffmpeg"} & imported_packages(CORE) == set()
