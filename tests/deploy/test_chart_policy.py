"""Policy rules on the rendered chart, each named after the behaviour it guarantees."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy.rendering import (
    CHART,
    CI_VALUES,
    RELEASE,
    SERVICES,
    Rendered,
    argv,
    literal_env,
    only_container,
    pod_labels,
    pod_spec,
    render,
    render_file,
    transcode_limit_seconds,
)

from sous_core.settings import Settings

CI_IDS = [path.name.removesuffix("-values.yaml") for path in CI_VALUES]
APP_VERSION = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
EXISTING = {"secrets": {"existingSecret": "sous-connections"}}


def rendered_ci(name: str) -> Rendered:
    return render_file(CHART / "ci" / f"{name}-values.yaml")


def configmap(rendered: Rendered) -> dict[str, Any]:
    return rendered.one("ConfigMap", RELEASE)


def env_of(rendered: Rendered, component: str) -> dict[str, str]:
    container = only_container(rendered.deployment(component))
    return literal_env(container, configmap(rendered))


@pytest.mark.parametrize("values_file", CI_VALUES, ids=CI_IDS)
def test_scheduler_runs_exactly_one_replica_and_is_recreated_not_rolled(values_file: Path) -> None:
    rendered = render_file(values_file)
    scheduler = rendered.deployment("scheduler")
    assert scheduler["spec"]["replicas"] == 1
    assert scheduler["spec"]["strategy"] == {"type": "Recreate"}
    targets = [
        obj["spec"]["scaleTargetRef"]["name"]
        for obj in rendered.objects
        if obj["kind"] in {"HorizontalPodAutoscaler", "ScaledObject"}
    ]
    assert scheduler["metadata"]["name"] not in targets


@pytest.mark.parametrize("values_file", CI_VALUES, ids=CI_IDS)
def test_every_container_has_requests_limits_and_a_locked_down_security_context(
    values_file: Path,
) -> None:
    for workload in render_file(values_file).workloads():
        spec = pod_spec(workload)
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] != 0
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert spec["automountServiceAccountToken"] is False
        for container in spec["containers"]:
            where = f"{workload['metadata']['name']}/{container['name']}"
            resources = container["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"]), where
            assert "memory" in resources["limits"], where
            security = container["securityContext"]
            assert security["runAsNonRoot"] is True, where
            assert security["readOnlyRootFilesystem"] is True, where
            assert security["allowPrivilegeEscalation"] is False, where
            assert security["capabilities"] == {"drop": ["ALL"]}, where
            assert security["seccompProfile"] == {"type": "RuntimeDefault"}, where


@pytest.mark.parametrize("values_file", CI_VALUES, ids=CI_IDS)
def test_every_pod_has_a_writable_tmp_on_its_read_only_root(values_file: Path) -> None:
    for workload in render_file(values_file).workloads():
        spec = pod_spec(workload)
        volumes = {volume["name"]: volume for volume in spec["volumes"]}
        for container in spec["containers"]:
            mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
            assert "emptyDir" in volumes[mounts["/tmp"]], workload["metadata"]["name"]


@pytest.mark.parametrize("values_file", CI_VALUES, ids=CI_IDS)
def test_every_long_running_container_has_startup_liveness_and_readiness_probes(
    values_file: Path,
) -> None:
    for deployment in render_file(values_file).kind("Deployment"):
        container = only_container(deployment)
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert "httpGet" in container[probe], f"{deployment['metadata']['name']} {probe}"


@pytest.mark.parametrize("values_file", CI_VALUES, ids=CI_IDS)
def test_worker_and_scheduler_probes_never_ask_the_broker(values_file: Path) -> None:
    """Liveness is /healthz on the metrics port: no `celery inspect ping`, so a worker busy
    with a long task or a broker that is briefly down never gets the pod restarted."""
    rendered = render_file(values_file)
    for component in ("worker-fast", "worker-heavy", "scheduler"):
        container = only_container(rendered.deployment(component))
        ports = {port["name"]: port["containerPort"] for port in container["ports"]}
        env = env_of(rendered, component)
        assert ports["metrics"] == int(env["SOUS_METRICS_PORT"])
        assert env["SOUS_METRICS_HOST"] == "0.0.0.0"  # noqa: S104 - probes and Prometheus
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert container[probe]["httpGet"] == {"path": "/healthz", "port": "metrics"}
            assert "exec" not in container[probe]


def test_api_is_live_on_healthz_and_ready_on_readyz() -> None:
    container = only_container(rendered_ci("defaults").deployment("api"))
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}


@pytest.mark.parametrize("values_file", CI_VALUES, ids=CI_IDS)
def test_heavy_workers_get_longer_than_the_longest_transcode_to_stop(values_file: Path) -> None:
    rendered = render_file(values_file)
    limit = transcode_limit_seconds(env_of(rendered, "worker-heavy"))
    grace = pod_spec(rendered.deployment("worker-heavy"))["terminationGracePeriodSeconds"]
    assert grace >= limit
    assert f"longest allowed transcode is {int(limit)}s" in rendered.notes


def test_the_heavy_grace_period_follows_the_transcode_settings() -> None:
    transcode = {"maxDurationSeconds": 7200, "timeFactor": 2.5, "minTimeLimitSeconds": 60}
    rendered = render({**EXISTING, "config": {"transcode": transcode}})
    grace = pod_spec(rendered.deployment("worker-heavy"))["terminationGracePeriodSeconds"]
    assert grace == 18000 + 120
    assert transcode_limit_seconds(env_of(rendered, "worker-heavy")) == 18000


def test_the_api_rate_limits_each_tenant_by_default_and_can_be_turned_off() -> None:
    api_env = env_of(render(EXISTING), "api")
    assert api_env["SOUS_RATE_LIMIT_PER_SECOND"] == "50"
    assert api_env["SOUS_RATE_LIMIT_BURST"] == "100"
    off = render({**EXISTING, "api": {"rateLimit": {"perSecond": 0, "burst": 0}}})
    assert env_of(off, "api")["SOUS_RATE_LIMIT_PER_SECOND"] == "0"


@pytest.mark.parametrize("values_file", CI_VALUES, ids=CI_IDS)
def test_each_scaled_object_scales_its_own_deployment_on_the_queues_it_consumes(
    values_file: Path,
) -> None:
    rendered = render_file(values_file)
    scaled = rendered.kind("ScaledObject")
    if not rendered.values.get("keda", {}).get("enabled"):
        assert scaled == []
        return
    assert len(scaled) == 2
    for obj in scaled:
        target = obj["spec"]["scaleTargetRef"]
        assert target["kind"] == "Deployment"
        deployment = rendered.one("Deployment", target["name"])
        command = argv(only_container(deployment))
        consumed = command[command.index("-Q") + 1].split(",")
        assert [trigger["metadata"]["queueName"] for trigger in obj["spec"]["triggers"]] == consumed
        for trigger in obj["spec"]["triggers"]:
            assert trigger["type"] == "rabbitmq"
            # Over http the management API counts unacked (running) messages as well.
            assert trigger["metadata"]["protocol"] == "http"
            assert trigger["metadata"]["mode"] == "QueueLength"
            assert trigger["metadata"].get("excludeUnacknowledged", "false") == "false"
            assert float(trigger["metadata"]["value"]) >= 1
            auth = rendered.one("TriggerAuthentication", trigger["authenticationRef"]["name"])
            (host,) = auth["spec"]["secretTargetRef"]
            assert host["parameter"] == "host"
            assert host["key"] == "SOUS_RABBITMQ_MANAGEMENT_URL"
            secret = rendered.values["secrets"].get("existingSecret") or f"{RELEASE}-connections"
            assert host["name"] == secret


def test_queue_scaler_settings_come_from_values() -> None:
    rendered = rendered_ci("keda-on")
    fast = rendered.one("ScaledObject", f"{RELEASE}-worker-fast")["spec"]
    assert (fast["minReplicaCount"], fast["maxReplicaCount"]) == (1, 20)
    assert (fast["pollingInterval"], fast["cooldownPeriod"]) == (10, 120)
    assert {t["metadata"]["value"] for t in fast["triggers"]} == {"400"}
    assert {t["metadata"]["vhostName"] for t in fast["triggers"]} == {"sous"}
    heavy = rendered.one("ScaledObject", f"{RELEASE}-worker-heavy")["spec"]
    assert (heavy["minReplicaCount"], heavy["maxReplicaCount"]) == (0, 12)


@pytest.mark.parametrize("values_file", CI_VALUES, ids=CI_IDS)
def test_every_pool_has_exactly_one_autoscaler_and_leaves_replicas_to_it(values_file: Path) -> None:
    rendered = render_file(values_file)
    for component in ("worker-fast", "worker-heavy"):
        name = f"{RELEASE}-{component}"
        scalers = [
            obj
            for obj in rendered.objects
            if obj["kind"] in {"HorizontalPodAutoscaler", "ScaledObject"}
            and obj["spec"]["scaleTargetRef"]["name"] == name
        ]
        assert len(scalers) == 1
        keda = rendered.values.get("keda", {}).get("enabled", False)
        assert scalers[0]["kind"] == ("ScaledObject" if keda else "HorizontalPodAutoscaler")
        assert "replicas" not in rendered.deployment(component)["spec"]


def test_keda_needs_the_management_url_when_the_chart_creates_the_secret() -> None:
    values = yaml.safe_load((CHART / "ci" / "keda-on-values.yaml").read_text())
    del values["secrets"]["rabbitmqManagementUrl"]
    with pytest.raises(Exception, match="rabbitmqManagementUrl"):
        render(values)


@pytest.mark.parametrize("values_file", CI_VALUES, ids=CI_IDS)
def test_image_tags_are_pinned_and_default_to_the_app_version(values_file: Path) -> None:
    rendered = render_file(values_file)
    for workload in rendered.workloads():
        for container in pod_spec(workload)["containers"]:
            tag = container["image"].rpartition(":")[2]
            assert "/" not in tag, f"{container['image']} has no tag"
            assert tag not in {"", "latest"}, container["image"]
    for component in SERVICES:
        image = only_container(rendered.deployment(component))["image"]
        assert image.endswith(f"/sous-{component}:{APP_VERSION}")


@pytest.mark.parametrize("values_file", CI_VALUES, ids=CI_IDS)
def test_every_object_carries_the_recommended_labels(values_file: Path) -> None:
    rendered = render_file(values_file)
    for obj in rendered.objects:
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "sous"
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/version"] == APP_VERSION
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["app.kubernetes.io/part-of"] == "sous"
    for workload in rendered.workloads():
        labels = pod_labels(workload)
        assert labels["app.kubernetes.io/component"]
        selector = workload["spec"].get("selector", {}).get("matchLabels", {})
        assert selector.items() <= labels.items()
        if workload["kind"] == "Deployment":
            assert set(selector) == {
                "app.kubernetes.io/name",
                "app.kubernetes.io/instance",
                "app.kubernetes.io/component",
            }


@pytest.mark.parametrize("values_file", CI_VALUES, ids=CI_IDS)
def test_every_sous_setting_the_chart_sets_is_one_sous_reads(values_file: Path) -> None:
    rendered = render_file(values_file)
    known = {f"SOUS_{name.upper()}" for name in Settings.model_fields}
    names = set(configmap(rendered)["data"])
    for workload in rendered.workloads():
        for container in pod_spec(workload)["containers"]:
            names |= {item["name"] for item in container.get("env", [])}
    unknown = {name for name in names if name.startswith("SOUS_")} - known
    assert unknown == set()


@pytest.mark.parametrize("values_file", CI_VALUES, ids=CI_IDS)
def test_containers_log_json_listen_on_every_interface_and_trace_only_when_asked(
    values_file: Path,
) -> None:
    rendered = render_file(values_file)
    tracing = rendered.values.get("tracing", {}).get("enabled", False)
    for component in SERVICES:
        env = env_of(rendered, component)
        assert env["SOUS_LOG_FORMAT"] == "json"
        assert env["SOUS_ENVIRONMENT"] == "production"
        assert env["OTEL_SERVICE_NAME"] == f"sous-{component}"
        assert env["OTEL_TRACES_EXPORTER"] == ("otlp" if tracing else "none")
        assert ("OTEL_EXPORTER_OTLP_ENDPOINT" in env) == tracing
    assert env_of(rendered, "api")["SOUS_API_HOST"] == "0.0.0.0"  # noqa: S104


@pytest.mark.parametrize("values_file", CI_VALUES, ids=CI_IDS)
def test_connection_urls_come_only_from_secrets(values_file: Path) -> None:
    rendered = render_file(values_file)
    secret_keys = {"SOUS_BROKER_URL", "SOUS_RESULT_BACKEND", "SOUS_DATABASE_URL"}
    assert not secret_keys & set(configmap(rendered)["data"])
    existing = rendered.values["secrets"].get("existingSecret")
    created = [obj for obj in rendered.kind("Secret") if "hook" not in json.dumps(obj)]
    assert bool(created) == (not existing)
    name = existing or f"{RELEASE}-connections"
    for component in SERVICES:
        env = {item["name"]: item for item in only_container(rendered.deployment(component))["env"]}
        for key in secret_keys:
            assert env[key]["valueFrom"]["secretKeyRef"] == {"name": name, "key": key}
    smtp = {
        component: "SOUS_SMTP_PASSWORD"
        in {item["name"] for item in only_container(rendered.deployment(component))["env"]}
        for component in SERVICES
    }
    assert smtp == {"api": False, "worker-fast": True, "worker-heavy": False, "scheduler": False}


@pytest.mark.parametrize("values_file", CI_VALUES, ids=CI_IDS)
def test_api_and_both_pools_share_one_media_volume_under_the_storage_dir(values_file: Path) -> None:
    rendered = render_file(values_file)
    claims = set()
    for component in SERVICES:
        spec = pod_spec(rendered.deployment(component))
        claim = {v["name"]: v for v in spec["volumes"]}.get("storage", {})
        mounts = {
            m["name"]: m["mountPath"]
            for m in only_container(rendered.deployment(component))["volumeMounts"]
        }
        if component == "scheduler":
            assert "storage" not in mounts
            continue
        claims.add(claim["persistentVolumeClaim"]["claimName"])
        assert mounts["storage"] == env_of(rendered, component)["SOUS_STORAGE_DIR"]
    (claim_name,) = claims
    existing = rendered.values.get("storage", {}).get("existingClaim")
    pvcs = [pvc["metadata"]["name"] for pvc in rendered.kind("PersistentVolumeClaim")]
    assert pvcs == ([] if existing else [claim_name])
    if not existing:
        assert rendered.kind("PersistentVolumeClaim")[0]["spec"]["accessModes"] == ["ReadWriteMany"]


def test_heavy_workers_keep_prometheus_multiprocess_files_in_their_tmp() -> None:
    env = env_of(rendered_ci("defaults"), "worker-heavy")
    assert env["SOUS_METRICS_MULTIPROC_DIR"].startswith("/tmp/")


def test_migrations_run_before_install_and_upgrade_with_the_sous_cli() -> None:
    from click.testing import CliRunner

    from sous_core.cli import main

    rendered = rendered_ci("defaults")
    job = rendered.one("Job", f"{RELEASE}-migrations")
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
    command = argv(only_container(job))
    assert command[0] == "sous"
    result = CliRunner().invoke(main, [*command[1:], "--help"])
    assert result.exit_code == 0, result.output
    assert "Apply migrations" in result.output
    env = {item["name"]: item for item in only_container(job)["env"]}
    assert env["SOUS_DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"] == "sous-connections"


def test_migrations_read_a_hook_secret_when_the_chart_creates_the_secrets() -> None:
    """Hooks run before the release's objects exist: the Job cannot use the main Secret."""
    rendered = rendered_ci("keda-on")
    job = rendered.one("Job", f"{RELEASE}-migrations")
    ref = only_container(job)["env"][0]["valueFrom"]["secretKeyRef"]
    hook_secret = rendered.one("Secret", ref["name"])
    assert hook_secret["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert int(hook_secret["metadata"]["annotations"]["helm.sh/hook-weight"]) < int(
        job["metadata"]["annotations"]["helm.sh/hook-weight"]
    )
    assert "serviceAccountName" not in pod_spec(job)


def test_helm_test_checks_readyz_through_the_api_service() -> None:
    rendered = rendered_ci("defaults")
    (pod,) = rendered.kind("Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    service = rendered.one("Service", f"{RELEASE}-api")
    port = service["spec"]["ports"][0]["port"]
    assert argv(only_container(pod))[-1] == f"http://{RELEASE}-api:{port}/readyz"
    assert argv(only_container(pod))[:2] == ["curl", "--fail"]


def test_disruption_budgets_cover_the_api_and_pools_but_never_block_the_scheduler() -> None:
    rendered = rendered_ci("defaults")
    budgets = {pdb["metadata"]["name"]: pdb for pdb in rendered.kind("PodDisruptionBudget")}
    assert set(budgets) == {f"{RELEASE}-api", f"{RELEASE}-worker-fast", f"{RELEASE}-worker-heavy"}
    for name, pdb in budgets.items():
        labels = rendered.one("Deployment", name)["spec"]["selector"]["matchLabels"]
        assert pdb["spec"]["selector"]["matchLabels"] == labels


def test_ingress_routes_the_public_api_but_not_metrics_and_sets_the_public_url() -> None:
    rendered = rendered_ci("ingress-tls")
    ingress = rendered.one("Ingress", f"{RELEASE}-api")
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == "api.sous.example.com"
    paths = {path["path"] for path in rule["http"]["paths"]}
    assert "/v1" in paths
    assert not any(path in {"/", "/metrics"} for path in paths)
    assert ingress["spec"]["tls"] == [
        {"secretName": "sous-api-tls", "hosts": ["api.sous.example.com"]}
    ]
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert configmap(rendered)["data"]["SOUS_PUBLIC_URL"] == "https://api.sous.example.com"


def test_flower_is_off_by_default_and_asks_for_a_login_when_on() -> None:
    assert not [
        d for d in rendered_ci("defaults").kind("Deployment") if "flower" in d["metadata"]["name"]
    ]
    rendered = rendered_ci("ingress-tls")
    container = only_container(rendered.deployment("flower"))
    env = {item["name"]: item for item in container["env"]}
    assert env["FLOWER_BASIC_AUTH"]["valueFrom"]["secretKeyRef"] == {
        "name": "sous-flower-auth",
        "key": "auth",
    }
    assert env["CELERY_BROKER_URL"]["valueFrom"]["secretKeyRef"]["key"] == "SOUS_BROKER_URL"
    assert rendered.one("Ingress", f"{RELEASE}-flower")["spec"]["rules"][0]["host"] == (
        "flower.sous.example.com"
    )
    with pytest.raises(Exception, match="basicAuth"):
        render({**EXISTING, "flower": {"enabled": True}})


def test_network_policies_admit_the_api_only_from_ingress_prometheus_and_its_test() -> None:
    rendered = rendered_ci("defaults")
    api = rendered.one("NetworkPolicy", f"{RELEASE}-api")
    (rule,) = api["spec"]["ingress"]
    assert rule["ports"] == [{"port": "http", "protocol": "TCP"}]
    peers = [
        peer.get("namespaceSelector", peer.get("podSelector"))["matchLabels"]
        for peer in rule["from"]
    ]
    assert {"kubernetes.io/metadata.name": "ingress-nginx"} in peers
    assert {"kubernetes.io/metadata.name": "monitoring"} in peers
    default = rendered.one("NetworkPolicy", f"{RELEASE}-default")
    assert default["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert "ingress" not in default["spec"]


def test_workers_may_reach_the_internet_but_not_private_ranges_or_cloud_metadata() -> None:
    rendered = rendered_ci("defaults")
    workers = rendered.one("NetworkPolicy", f"{RELEASE}-workers")
    assert workers["spec"]["podSelector"]["matchExpressions"][0]["values"] == [
        "worker-fast",
        "worker-heavy",
    ]
    public = workers["spec"]["egress"][0]["to"][0]["ipBlock"]
    assert public["cidr"] == "0.0.0.0/0"
    assert {"169.254.0.0/16", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"} <= set(
        public["except"]
    )


def test_monitoring_scrapes_every_process_and_ships_the_alerts_and_dashboards() -> None:
    rendered = rendered_ci("monitoring-on")
    service_monitor = rendered.one("ServiceMonitor", f"{RELEASE}-api")
    assert service_monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    assert service_monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    (pod_monitor,) = rendered.kind("PodMonitor")
    scraped = pod_monitor["spec"]["selector"]["matchExpressions"][0]["values"]
    assert sorted(scraped) == ["scheduler", "worker-fast", "worker-heavy"]
    for component in scraped:
        ports = [p["name"] for p in only_container(rendered.deployment(component))["ports"]]
        assert pod_monitor["spec"]["podMetricsEndpoints"][0]["port"] in ports

    rules = yaml.safe_load((CHART / "rules" / "sous-alerts.yaml").read_text())
    (rule,) = rendered.kind("PrometheusRule")
    assert rule["spec"]["groups"] == rules["groups"]

    files = sorted((CHART / "dashboards").glob("*.json"))
    dashboards = [
        cm for cm in rendered.kind("ConfigMap") if cm["metadata"]["labels"].get("grafana_dashboard")
    ]
    assert len(dashboards) == len(files)
    by_file = {key: value for cm in dashboards for key, value in cm["data"].items()}
    for path in files:
        assert json.loads(by_file[path.name]) == json.loads(path.read_text())
    for cm in dashboards:
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert cm["metadata"]["annotations"] == {"grafana_folder": "Sous"}


def test_monitoring_objects_are_off_by_default() -> None:
    kinds = {obj["kind"] for obj in rendered_ci("defaults").objects}
    assert not kinds & {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
