"""One source of truth for every process's command line: the Helm chart, compose.yaml and
`make run` (scripts/devstack.py) all run scripts/process_commands.py's commands."""

from __future__ import annotations

from pathlib import Path

import devstack
import pytest
import yaml
from deploy.rendering import (
    CHART,
    CI_VALUES,
    ROOT,
    SERVICES,
    VALUES_KEY,
    argv,
    chart_defaults,
    only_container,
    render_file,
)

import process_commands

CI_IDS = [path.name.removesuffix("-values.yaml") for path in CI_VALUES]
COMPOSE = yaml.safe_load((ROOT / "compose.yaml").read_text())


def expected(service: str, concurrency: int | None) -> list[str]:
    if concurrency is None:
        return process_commands.SERVICES[service]()
    command = {
        "worker-fast": process_commands.worker_fast,
        "worker-heavy": process_commands.worker_heavy,
    }
    return command[service](concurrency=concurrency)


def test_every_service_has_one_command_and_an_image() -> None:
    assert set(process_commands.container_commands()) == set(SERVICES)
    for service in SERVICES:
        assert (ROOT / "services" / service / "Dockerfile").is_file()


@pytest.mark.parametrize("values_file", CI_VALUES, ids=CI_IDS)
def test_the_chart_runs_the_process_commands_with_its_concurrency(values_file: Path) -> None:
    rendered = render_file(values_file)
    for service in SERVICES:
        values = {
            **chart_defaults()[VALUES_KEY[service]],
            **rendered.values.get(VALUES_KEY[service], {}),
        }
        command = argv(only_container(rendered.deployment(service)))
        assert command == expected(service, values.get("concurrency"))


def test_the_chart_defaults_run_exactly_the_images_default_commands() -> None:
    rendered = render_file(CHART / "ci" / "defaults-values.yaml")
    for service, command in process_commands.container_commands().items():
        assert argv(only_container(rendered.deployment(service))) == command


def test_the_chart_flower_is_the_container_flower_with_its_login() -> None:
    rendered = render_file(CHART / "ci" / "ingress-tls-values.yaml")
    port = rendered.values.get("flower", {}).get("port", chart_defaults()["flower"]["port"])
    flower = only_container(rendered.deployment("flower"))
    assert argv(flower) == process_commands.flower_container(
        port, basic_auth="$(FLOWER_BASIC_AUTH)"
    )
    # Kubernetes expands $(FLOWER_BASIC_AUTH) only for a variable the container defines.
    assert "FLOWER_BASIC_AUTH" in {item["name"] for item in flower["env"]}


def test_compose_runs_the_process_commands() -> None:
    services = COMPOSE["services"]
    for service, command in process_commands.container_commands().items():
        assert services[service]["command"] == command
    assert services["flower"]["command"] == process_commands.flower_container(5555)


def test_make_run_starts_the_process_commands() -> None:
    children = devstack.build_children(Path("/tmp/sous"), flower=False, mail_sink_port=None)
    started = {child.name: [Path(child.argv[0]).name, *child.argv[1:]] for child in children}
    assert started == process_commands.container_commands()


def test_the_chart_and_compose_run_the_same_flower_image() -> None:
    chart_image = chart_defaults()["flower"]["image"]
    assert (
        COMPOSE["services"]["flower"]["image"]
        == f"{chart_image['repository']}:{chart_image['tag']}"
    )
