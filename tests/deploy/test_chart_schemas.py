"""The chart renders with every supported values file into objects Kubernetes, KEDA and the
Prometheus operator accept, and its values are strictly typed and documented."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml
from cloudcoil.models.keda.v1alpha1 import ScaledObject, TriggerAuthentication
from cloudcoil.models.prometheus_operator.v1 import PodMonitor, PrometheusRule, ServiceMonitor
from deploy.rendering import (
    CHART,
    CI_VALUES,
    CUSTOM_KINDS,
    chart_defaults,
    install_dry_run,
    render,
    render_file,
)

#: The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest schemas.
KUBERNETES_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())
CRD_MODELS: dict[str, Any] = {
    "ScaledObject": ScaledObject,
    "TriggerAuthentication": TriggerAuthentication,
    "ServiceMonitor": ServiceMonitor,
    "PodMonitor": PodMonitor,
    "PrometheusRule": PrometheusRule,
}
CI_IDS = [path.name.removesuffix("-values.yaml") for path in CI_VALUES]


def test_every_supported_configuration_has_a_ci_values_file() -> None:
    names = {path.name for path in CI_VALUES}
    for configuration in (
        "defaults",
        "keda-on",
        "keda-off",
        "ingress-tls",
        "external-secret",
        "monitoring-on",
    ):
        assert f"{configuration}-values.yaml" in names


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("values_file", CI_VALUES, ids=CI_IDS)
def test_every_object_is_valid_for_kubernetes(values_file: Path, version: str) -> None:
    rendered = render_file(values_file)
    core = [obj for obj in rendered.objects if obj["kind"] not in CUSTOM_KINDS]
    assert core
    for obj in core:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            name = f"{obj['kind']}/{obj['metadata']['name']}"
            pytest.fail(f"{name} is invalid for Kubernetes {version}: {error.message}")


def _without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _without_nulls(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [_without_nulls(item) for item in value]
    return value


@pytest.mark.parametrize("values_file", CI_VALUES, ids=CI_IDS)
def test_custom_resources_match_their_crd_models_without_unknown_fields(values_file: Path) -> None:
    """The models ignore unknown fields, so a misspelt key would pass validation alone:
    the object must also come back unchanged from a model round trip."""
    for obj in render_file(values_file).objects:
        if obj["kind"] not in CUSTOM_KINDS:
            continue
        model = CRD_MODELS[obj["kind"]].model_validate(obj)
        dumped = _without_nulls(model.model_dump(mode="json", by_alias=True, exclude_none=True))
        assert dumped == obj, f"{obj['kind']}/{obj['metadata']['name']} has fields the CRD lacks"


def test_every_kind_the_chart_can_render_is_validated() -> None:
    kinds = {obj["kind"] for path in CI_VALUES for obj in render_file(path).objects}
    assert kinds >= CUSTOM_KINDS, "some ci values file must render each custom resource"


@pytest.mark.parametrize("values_file", CI_VALUES, ids=CI_IDS)
def test_helm_lint_is_clean(values_file: Path) -> None:
    report = helm.lint(
        CHART, yaml.safe_load(values_file.read_text()), strict=True, kube_version="v1.29.0"
    )
    problems = [message for message in report["messages"] if message["severity"] >= 2]
    assert (report["errors"], problems) == ([], [])


def test_helm_install_dry_run_renders_the_defaults() -> None:
    manifest = install_dry_run(yaml.safe_load(CI_VALUES[0].read_text()))
    assert "kind: Deployment" in manifest


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"scheduler": {"replicas": 2}}, "/scheduler/replicas"),
        ({"replicaCount": 3}, "replicaCount"),
        ({"workerHeavy": {"concurency": 4}}, "concurency"),
        ({"api": {"image": {"tag": "latest"}}}, "/api/image/tag"),
        ({"config": {"logFormat": "xml"}}, "/config/logFormat"),
        ({"workerFast": {"autoscaling": {"maxReplicas": 0}}}, "maxReplicas"),
        ({"secrets": {"brokerUrl": "redis://wrong"}}, "/secrets/brokerUrl"),
    ],
)
def test_helm_install_refuses_values_the_schema_rejects(
    values: dict[str, Any], complaint: str
) -> None:
    valid = {"secrets": {"existingSecret": "sous-connections"}}
    install_dry_run(valid)
    with pytest.raises(helm.HelmError, match=re.escape(complaint)):
        install_dry_run(_merge(valid, values))


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def test_rendering_without_connection_secrets_says_what_is_missing() -> None:
    with pytest.raises(helm.HelmError, match=r"secrets\.existingSecret"):
        render({})


def _schema_nodes(node: Any, path: str = "#") -> list[tuple[str, dict[str, Any]]]:
    found: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        found.append((path, node))
        for key, value in node.items():
            found.extend(_schema_nodes(value, f"{path}/{key}"))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found.extend(_schema_nodes(value, f"{path}/{index}"))
    return found


#: Objects handed to Kubernetes as they are (affinity terms) and Helm's own `global`.
PASSTHROUGH = {"#/definitions/kubernetesObject", "#/properties/global"}


def test_schema_closes_every_object() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    objects = [
        (path, node)
        for path, node in _schema_nodes(schema)
        if node.get("type") == "object" and path not in PASSTHROUGH
    ]
    assert len(objects) > 50
    for path, node in objects:
        assert "additionalProperties" in node, path
        if "properties" in node:
            assert node["additionalProperties"] is False, path


def test_values_yaml_points_editors_at_the_schema_and_validates_against_it() -> None:
    text = (CHART / "values.yaml").read_text()
    assert text.splitlines()[0] == "# yaml-language-server: $schema=values.schema.json"
    with helm.Chart.load(CHART) as chart:
        chart.validate_schema(chart_defaults())


def _value_keys(text: str) -> list[tuple[int, str, str]]:
    """(line number, dotted path, key) of every key in a values file."""
    stack: list[tuple[int, str]] = []
    keys = []
    for number, line in enumerate(text.splitlines(), 1):
        match = re.match(r"^(\s*)([A-Za-z0-9_.-]+):", line)
        if not match:
            continue
        indent = len(match.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, match.group(2)))
        keys.append((number, ".".join(key for _, key in stack), match.group(2)))
    return keys


#: Maps whose keys are data (resource names, annotation names), not chart settings.
FREE_MAPS = ("resources.", "annotations.", "Labels.", "labels.")


def test_every_values_key_has_a_comment_above_it() -> None:
    lines = (CHART / "values.yaml").read_text().splitlines()
    undocumented = []
    for number, path, _ in _value_keys("\n".join(lines)):
        if any(part in path for part in FREE_MAPS):
            continue
        above = next(line for line in reversed(lines[: number - 1]) if line.strip())
        if not above.strip().startswith("#"):
            undocumented.append(path)
    assert undocumented == []


def _is_free_map(key: str) -> bool:
    return key in {"resources", "annotations"} or key.endswith("Labels")


def _leaf_paths(values: dict[str, Any], prefix: str = "") -> list[str]:
    paths = []
    for key, value in values.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value and not _is_free_map(key):
            paths.extend(_leaf_paths(value, f"{path}."))
        else:
            paths.append(path)
    return paths


def test_chart_readme_documents_every_value_with_its_default() -> None:
    readme = (CHART / "README.md").read_text()
    rows = dict(re.findall(r"^\| `([^`]+)` \| `(.*?)` \|", readme, flags=re.MULTILINE))
    defaults = chart_defaults()
    for path in _leaf_paths(defaults):
        assert path in rows, f"{path} is not in the values table"
        value = defaults
        for key in path.split("."):
            value = value[key]
        assert json.loads(rows[path]) == value, f"{path}: the table shows {rows[path]}"
