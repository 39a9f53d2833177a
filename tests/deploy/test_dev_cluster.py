"""k8s/ (kustomize) and skaffold.yaml: the dev cluster's dependencies render and are valid,
and the chart's dev values and skaffold's images fit them and the chart."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from typing import Any

import kubernetes_validate
import pytest
import yaml
from deploy.rendering import (
    CHART,
    RELEASE,
    ROOT,
    SERVICES,
    VALUES_KEY,
    chart_defaults,
    consumer_timeout_seconds,
    literal_env,
    only_container,
    render,
    transcode_limit_seconds,
)

OVERLAYS = ("base", "dev")
VALUES_DEV = ROOT / "k8s" / "dev" / "values-dev.yaml"
SKAFFOLD = yaml.safe_load((ROOT / "skaffold.yaml").read_text())


def kustomize(overlay: str) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is needed to render k8s/ (kubectl kustomize)"
    result = subprocess.run(
        [kubectl, "kustomize", str(ROOT / "k8s" / overlay)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def dev() -> list[dict[str, Any]]:
    return kustomize("dev")


def one(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_overlay_renders_valid_kubernetes_objects(overlay: str) -> None:
    objects = kustomize(overlay)
    assert objects
    for obj in objects:
        for version in ("1.29.0", kubernetes_validate.latest_version()):
            kubernetes_validate.validate(obj, version, strict=True)


def test_dev_overlay_puts_everything_in_the_sous_namespace(dev: list[dict[str, Any]]) -> None:
    one(dev, "Namespace", "sous")
    for obj in dev:
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == "sous"


def test_dev_rabbitmq_has_management_and_outlasts_the_longest_transcode(
    dev: list[dict[str, Any]],
) -> None:
    (config,) = [
        o
        for o in dev
        if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("rabbitmq-config")
    ]
    assert "rabbitmq_management" in config["data"]["enabled_plugins"]
    timeout = consumer_timeout_seconds(config["data"]["90-sous.conf"])
    rabbitmq = one(dev, "StatefulSet", "rabbitmq")
    mounts = only_container(rabbitmq)["volumeMounts"]
    assert {"/etc/rabbitmq/conf.d/90-sous.conf", "/etc/rabbitmq/enabled_plugins"} <= {
        m["mountPath"] for m in mounts
    }
    for values in (yaml.safe_load(VALUES_DEV.read_text()), {"secrets": {"existingSecret": "x"}}):
        rendered = render(values)
        heavy = only_container(rendered.deployment("worker-heavy"))
        limit = transcode_limit_seconds(literal_env(heavy, rendered.one("ConfigMap", RELEASE)))
        assert timeout > limit


def test_values_dev_points_the_chart_at_the_dev_services(dev: list[dict[str, Any]]) -> None:
    values = yaml.safe_load(VALUES_DEV.read_text())
    rendered = render(values)
    connections = one(dev, "Secret", values["secrets"]["existingSecret"])
    urls = connections["stringData"] if "stringData" in connections else connections["data"]
    assert set(urls) >= {
        "SOUS_BROKER_URL",
        "SOUS_RESULT_BACKEND",
        "SOUS_DATABASE_URL",
        "SOUS_RABBITMQ_MANAGEMENT_URL",
    }
    services = {o["metadata"]["name"]: o for o in dev if o["kind"] == "Service"}
    for host, port in (
        ("rabbitmq", 5672),
        ("rabbitmq", 15672),
        ("redis", 6379),
        ("postgresql", 5432),
    ):
        assert port in {p["port"] for p in services[host]["spec"]["ports"]}
    flower_secret = one(dev, "Secret", values["flower"]["basicAuth"]["existingSecret"])
    assert values["flower"]["basicAuth"]["key"] in flower_secret.get(
        "data", flower_secret.get("stringData", {})
    )
    assert {o["kind"] for o in rendered.objects} >= {"ScaledObject", "TriggerAuthentication"}
    (auth,) = rendered.kind("TriggerAuthentication")
    assert auth["spec"]["secretTargetRef"][0]["key"] in urls


def test_the_dev_vhost_is_the_broker_urls_and_the_scalers(dev: list[dict[str, Any]]) -> None:
    values = yaml.safe_load(VALUES_DEV.read_text())
    connections = one(dev, "Secret", "sous-connections")
    broker = base64.b64decode(connections["data"]["SOUS_BROKER_URL"]).decode()
    (config,) = [
        o
        for o in dev
        if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("rabbitmq-config")
    ]
    assert f"default_vhost = {values['keda']['vhost']}" in config["data"]["90-sous.conf"]
    assert broker.rsplit("/", 1)[1] == values["keda"]["vhost"]


def test_skaffold_builds_each_service_image_from_the_repository_root() -> None:
    artifacts = {a["image"]: a for a in SKAFFOLD["build"]["artifacts"]}
    assert set(artifacts) == {f"sous-{service}" for service in SERVICES}
    for service in SERVICES:
        artifact = artifacts[f"sous-{service}"]
        assert artifact["context"] == "."
        assert artifact["docker"]["dockerfile"] == f"services/{service}/Dockerfile"
        assert (ROOT / artifact["docker"]["dockerfile"]).is_file()


def test_skaffold_installs_the_chart_with_the_images_it_built() -> None:
    (release,) = SKAFFOLD["deploy"]["helm"]["releases"]
    assert release["chartPath"] == "charts/sous"
    assert (ROOT / release["chartPath"] / "Chart.yaml").is_file()
    for values_file in release["valuesFiles"]:
        assert (ROOT / values_file).is_file()
    templates = release["setValueTemplates"]
    defaults = chart_defaults()
    for service in SERVICES:
        key = VALUES_KEY[service]
        # skaffold names the template variables after the image, non-alphanumerics as _.
        variable = f"sous_{service.replace('-', '_')}"
        assert templates[f"{key}.image.repository"] == f"{{{{.IMAGE_REPO_{variable}}}}}"
        assert templates[f"{key}.image.tag"] == f"{{{{.IMAGE_TAG_{variable}}}}}"
        assert defaults[key]["image"]["repository"].endswith(f"/sous-{service}")
    assert len(templates) == 2 * len(SERVICES)


def test_skaffold_forwards_the_api_service_the_chart_creates() -> None:
    (release,) = SKAFFOLD["deploy"]["helm"]["releases"]
    (forward,) = SKAFFOLD["portForward"]
    values = yaml.safe_load((ROOT / release["valuesFiles"][0]).read_text())
    rendered = render(values)
    assert release["name"] == RELEASE
    service = rendered.one("Service", forward["resourceName"])
    assert forward["port"] in {p["port"] for p in service["spec"]["ports"]}
    assert forward["namespace"] == release["namespace"]


def test_skaffold_has_dev_and_prod_profiles() -> None:
    profiles = {p["name"]: p for p in SKAFFOLD["profiles"]}
    assert set(profiles) == {"dev", "prod"}
    assert {"command": "dev"} in profiles["dev"]["activation"]
    prod_patches = {patch["path"]: patch for patch in profiles["prod"]["patches"]}
    assert prod_patches["/build/local/push"]["value"] is True
    assert "gitCommit" in prod_patches["/build/tagPolicy"]["value"]


def test_make_has_the_stack_and_cluster_targets() -> None:
    makefile = (ROOT / "Makefile").read_text()
    phony = next(line for line in makefile.splitlines() if line.startswith(".PHONY:")).split()
    assert {"up", "down", "dev"} <= set(phony)
    assert "docker compose up" in makefile
    assert "docker compose down" in makefile
    assert "skaffold dev -p dev" in makefile
    assert "kubectl apply -k k8s/dev" in makefile


def test_install_commands_in_the_docs_name_real_values_files() -> None:
    docs = (ROOT / "README.md", ROOT / "k8s" / "README.md", CHART / "README.md")
    named = [
        (doc.name, path) for doc in docs for path in re.findall(r"-f (\S+\.yaml)", doc.read_text())
    ]
    assert ("README.md", "k8s/dev/values-dev.yaml") in named
    for doc, path in named:
        assert (ROOT / path).is_file(), f"{doc}: {path}"
