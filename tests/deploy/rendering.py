"""Render charts/sous offline with Helm's SDK (helm-python-sdk) and hand the objects to tests.

>>> rendered = render_file(CHART / "ci" / "keda-on-values.yaml")
>>> rendered.one("ScaledObject", "sous-worker-heavy")["spec"]["maxReplicaCount"]
12
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "sous"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
RELEASE = "sous"
NAMESPACE = "sous"
#: The chart's pods run these Sous services, each from its own image.
SERVICES = ("api", "worker-fast", "worker-heavy", "scheduler")
#: Values key of each service in values.yaml.
VALUES_KEY = {
    "api": "api",
    "worker-fast": "workerFast",
    "worker-heavy": "workerHeavy",
    "scheduler": "scheduler",
}
#: Kinds whose schema is a CRD, validated with the cloudcoil models instead.
CUSTOM_KINDS = {
    "ScaledObject",
    "TriggerAuthentication",
    "ServiceMonitor",
    "PodMonitor",
    "PrometheusRule",
}


@dataclass(frozen=True)
class Rendered:
    """Every object of one render, hooks and test pods included, and NOTES.txt."""

    objects: tuple[dict[str, Any], ...]
    notes: str
    values: dict[str, Any]

    def kind(self, kind: str) -> list[dict[str, Any]]:
        return [obj for obj in self.objects if obj["kind"] == kind]

    def one(self, kind: str, name: str) -> dict[str, Any]:
        found = [obj for obj in self.kind(kind) if obj["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
        return found[0]

    def deployment(self, component: str) -> dict[str, Any]:
        return self.one("Deployment", f"{RELEASE}-{component}")

    def workloads(self) -> Iterator[dict[str, Any]]:
        """Objects that run pods: Deployments, Jobs and (test) Pods."""
        return (obj for obj in self.objects if obj["kind"] in {"Deployment", "Job", "Pod"})


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    if workload["kind"] == "Pod":
        return workload["spec"]
    return workload["spec"]["template"]["spec"]


def pod_labels(workload: dict[str, Any]) -> dict[str, str]:
    if workload["kind"] == "Pod":
        return workload["metadata"]["labels"]
    return workload["spec"]["template"]["metadata"]["labels"]


def only_container(workload: dict[str, Any]) -> dict[str, Any]:
    containers = pod_spec(workload)["containers"]
    assert len(containers) == 1
    return containers[0]


def argv(container: dict[str, Any]) -> list[str]:
    """The process the container runs (the images have no ENTRYPOINT)."""
    return [*container.get("command", []), *container.get("args", [])]


def literal_env(container: dict[str, Any], configmap: dict[str, Any] | None) -> dict[str, str]:
    """The container's plain environment: the ConfigMap it loads, then its own ``env``."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            assert configmap is not None
            assert source["configMapRef"]["name"] == configmap["metadata"]["name"]
            env.update(configmap["data"])
    env.update(
        {item["name"]: item["value"] for item in container.get("env", []) if "value" in item}
    )
    return env


def transcode_limit_seconds(settings: dict[str, str]) -> float:
    """The longest a transcode may run, as the heavy worker computes it from its settings."""
    return max(
        float(settings["SOUS_TRANSCODE_MIN_TIME_LIMIT"]),
        float(settings["SOUS_TRANSCODE_TIME_FACTOR"])
        * float(settings["SOUS_TRANSCODE_MAX_DURATION"]),
    )


def consumer_timeout_seconds(rabbitmq_conf: str) -> float:
    """``consumer_timeout`` (milliseconds) of a rabbitmq.conf, in seconds; inf when unset."""
    for line in rabbitmq_conf.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "consumer_timeout":
            return int(value.split("#")[0].strip()) / 1000
    return math.inf


def _parse(manifests: dict[str, str]) -> tuple[tuple[dict[str, Any], ...], str]:
    objects: list[dict[str, Any]] = []
    notes = ""
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            notes = text
            continue
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return tuple(objects), notes


def render(values: dict[str, Any]) -> Rendered:
    """Render the chart as `helm install` would (schema checked first); HelmError on failure."""
    return _render_json(json.dumps(values, sort_keys=True))


@functools.cache
def _render_json(values_json: str) -> Rendered:
    values = json.loads(values_json)
    with helm.Chart.load(CHART) as chart:
        manifests = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    objects, notes = _parse(manifests)
    return Rendered(objects, notes, values)


def render_file(path: Path) -> Rendered:
    return render(yaml.safe_load(path.read_text()) or {})


def install_dry_run(values: dict[str, Any]) -> str:
    """`helm install --dry-run=client` against in-memory release storage: the manifest."""
    with helm.Config(storage_driver="memory", namespace=NAMESPACE) as config:
        release = config.install(CHART, RELEASE, values, dry_run="client", namespace=NAMESPACE)
    return release["manifest"]


def chart_defaults() -> dict[str, Any]:
    return yaml.safe_load((CHART / "values.yaml").read_text())
