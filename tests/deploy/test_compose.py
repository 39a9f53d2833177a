"""compose.yaml, checked offline (no Docker engine here): the stack it describes is whole,
wired together, observable, and lets long transcodes finish."""

from __future__ import annotations

import re
from typing import Any

import yaml
from deploy.rendering import (
    CHART,
    ROOT,
    SERVICES,
    consumer_timeout_seconds,
    transcode_limit_seconds,
)

COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
SERVICES_BY_NAME: dict[str, Any] = COMPOSE["services"]
DEPENDENCIES = ("rabbitmq", "redis", "postgres")
PROMETHEUS = yaml.safe_load((ROOT / "deploy/compose/prometheus/prometheus.yml").read_text())


def host_mounts(service: str) -> dict[str, str]:
    """Bind mounts of a service: container path -> repository path."""
    mounts = {}
    for volume in SERVICES_BY_NAME[service].get("volumes", []):
        source, target, *_ = volume.split(":")
        if source.startswith("./"):
            mounts[target] = source[2:]
    return mounts


def seconds(duration: str) -> int:
    units = {"h": 3600, "m": 60, "s": 1}
    return sum(int(n) * units[u] for n, u in re.findall(r"(\d+)([hms])", duration))


def test_the_stack_has_every_process_its_dependencies_and_observability() -> None:
    expected = {*SERVICES, "flower", "migrate", *DEPENDENCIES, "prometheus", "grafana"}
    assert expected <= set(SERVICES_BY_NAME)


def test_sous_images_build_from_the_repository_root_with_their_dockerfile() -> None:
    for service in SERVICES:
        build = SERVICES_BY_NAME[service]["build"]
        assert build == {"context": ".", "dockerfile": f"services/{service}/Dockerfile"}
        assert (ROOT / build["dockerfile"]).is_file()
    assert SERVICES_BY_NAME["migrate"]["build"] == SERVICES_BY_NAME["api"]["build"]


def test_migrations_run_once_before_any_sous_process_starts() -> None:
    migrate = SERVICES_BY_NAME["migrate"]
    assert migrate["command"] == ["sous", "db", "upgrade"]
    assert migrate["restart"] == "no"
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    for service in SERVICES:
        depends = SERVICES_BY_NAME[service]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully"
        for dependency in ("rabbitmq", "redis"):
            assert depends[dependency]["condition"] == "service_healthy"
    for dependency in DEPENDENCIES:
        assert "healthcheck" in SERVICES_BY_NAME[dependency]


def test_sous_containers_reach_the_stack_by_service_name() -> None:
    for service in [*SERVICES, "migrate"]:
        env = SERVICES_BY_NAME[service]["environment"]
        assert "@rabbitmq:5672/" in env["SOUS_BROKER_URL"]
        assert env["SOUS_RESULT_BACKEND"].startswith("redis://redis:6379/")
        assert "@postgres:5432/" in env["SOUS_DATABASE_URL"]
        assert env["SOUS_LOG_FORMAT"] == "json"
    flower = SERVICES_BY_NAME["flower"]["environment"]
    assert flower["CELERY_BROKER_URL"] == SERVICES_BY_NAME["api"]["environment"]["SOUS_BROKER_URL"]


def test_sous_containers_run_with_a_read_only_root_and_a_writable_tmp() -> None:
    for service in [*SERVICES, "migrate", "flower"]:
        assert SERVICES_BY_NAME[service]["read_only"] is True
        assert "/tmp" in SERVICES_BY_NAME[service]["tmpfs"]


def test_the_api_listens_on_every_interface_and_publishes_its_port_locally() -> None:
    api = SERVICES_BY_NAME["api"]
    assert api["environment"]["SOUS_API_HOST"] == "0.0.0.0"  # noqa: S104
    port = api["environment"]["SOUS_API_PORT"]
    assert f"127.0.0.1:{port}:{port}" in api["ports"]
    assert any(":5555:5555" in port for port in SERVICES_BY_NAME["flower"]["ports"])
    assert any(":3000:3000" in port for port in SERVICES_BY_NAME["grafana"]["ports"])


def test_api_and_both_pools_share_the_storage_volume() -> None:
    for service in ("api", "worker-fast", "worker-heavy"):
        env = SERVICES_BY_NAME[service]["environment"]
        assert f"storage:{env['SOUS_STORAGE_DIR']}" in SERVICES_BY_NAME[service]["volumes"]
    assert "storage" in COMPOSE["volumes"]


def test_prometheus_scrapes_every_sous_process_on_its_metrics_port() -> None:
    targets = {
        target
        for job in PROMETHEUS["scrape_configs"]
        for static in job["static_configs"]
        for target in static["targets"]
    }
    api_port = SERVICES_BY_NAME["api"]["environment"]["SOUS_API_PORT"]
    assert f"api:{api_port}" in targets
    for service in ("worker-fast", "worker-heavy", "scheduler"):
        env = SERVICES_BY_NAME[service]["environment"]
        assert env["SOUS_METRICS_HOST"] == "0.0.0.0"  # noqa: S104 - reachable by Prometheus
        assert f"{service}:{env['SOUS_METRICS_PORT']}" in targets
    assert "flower:5555" in targets
    for job in PROMETHEUS["scrape_configs"]:
        if job["job_name"] != "rabbitmq":
            assert "sous" in job["job_name"]  # the alerts select up{job=~".*sous.*"}


def test_prometheus_loads_the_charts_alerting_rules() -> None:
    mounts = host_mounts("prometheus")
    assert mounts["/etc/prometheus/prometheus.yml"] == "deploy/compose/prometheus/prometheus.yml"
    rules = [
        target
        for target, source in mounts.items()
        if source == "charts/sous/rules/sous-alerts.yaml"
    ]
    assert len(rules) == 1
    (pattern,) = PROMETHEUS["rule_files"]
    assert re.fullmatch(pattern.replace("*", "[^/]*"), rules[0])
    assert (CHART / "rules" / "sous-alerts.yaml").is_file()


def test_grafana_provisions_prometheus_and_the_charts_dashboards() -> None:
    mounts = host_mounts("grafana")
    assert mounts["/etc/grafana/provisioning"] == "deploy/compose/grafana/provisioning"
    dashboards_dir = next(
        target for target, source in mounts.items() if source == "charts/sous/dashboards"
    )
    provisioning = ROOT / "deploy/compose/grafana/provisioning"
    (provider,) = yaml.safe_load((provisioning / "dashboards/sous.yaml").read_text())["providers"]
    assert provider["options"]["path"] == dashboards_dir
    (datasource,) = yaml.safe_load((provisioning / "datasources/prometheus.yaml").read_text())[
        "datasources"
    ]
    assert datasource["url"] == "http://prometheus:9090"
    assert datasource["isDefault"] is True


def test_rabbitmq_has_its_management_api_and_outlasts_the_longest_transcode() -> None:
    mounts = host_mounts("rabbitmq")
    plugins = (ROOT / mounts["/etc/rabbitmq/enabled_plugins"]).read_text()
    assert "rabbitmq_management" in plugins
    conf_target = next(target for target in mounts if target.startswith("/etc/rabbitmq/conf.d/"))
    timeout = consumer_timeout_seconds((ROOT / mounts[conf_target]).read_text())
    limit = transcode_limit_seconds(SERVICES_BY_NAME["worker-heavy"]["environment"])
    assert timeout > limit
    assert seconds(SERVICES_BY_NAME["worker-heavy"]["stop_grace_period"]) > limit
