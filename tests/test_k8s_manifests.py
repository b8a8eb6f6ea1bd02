"""Offline validation of k8s/: schemas, and the facts that tie the manifests together."""

from __future__ import annotations

import copy
import sys
import types
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr

from k8s import validate
from k8s.render import REPO_ROOT
from tests.k8s_helpers import import_paths, included_packages, module_and_attr

K8S = REPO_ROOT / "k8s"
MANIFESTS = sorted((K8S / "manifests").glob("*.yaml")) + sorted((K8S / "examples").glob("*.yaml"))


def documents() -> list[tuple[str, dict]]:
    return [(f"{p.relative_to(K8S)}:{d['kind']}", d) for p in MANIFESTS for d in validate.load_all(p)]


def one(kind: str) -> dict:
    (doc,) = [d for _, d in documents() if d["kind"] == kind]
    return doc


def rayservice() -> dict:
    return one("RayService")


def serve_config() -> dict:
    return yaml.safe_load(rayservice()["spec"]["serveConfigV2"])


def deployments() -> list[dict]:
    return [d for app in serve_config()["applications"] for d in app.get("deployments", [])]


def containers(template: dict) -> list[dict]:
    return template["spec"]["containers"]


# -- schemas -------------------------------------------------------------------


@pytest.mark.parametrize("name,doc", documents(), ids=[name for name, _ in documents()])
def test_manifest_validates(name: str, doc: dict) -> None:
    if doc["kind"] == "RayService":
        validate.validate_rayservice(doc)
    else:
        validate.validate_core(doc)


def test_every_manifest_kind_is_covered() -> None:
    kinds = {d["kind"] for _, d in documents()}
    assert {"RayService", "Ingress", "Service", "Secret", "PodDisruptionBudget"} <= kinds


def _misspell_crd_field(doc: dict) -> None:
    doc["spec"]["rayClusterConfig"]["enableInTreeAutoScaling"] = True


def _misspell_container_field(doc: dict) -> None:
    doc["spec"]["rayClusterConfig"]["workerGroupSpecs"][-1]["template"]["spec"]["containers"][0]["resource"] = {}


def _bad_group_replicas(doc: dict) -> None:
    doc["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["maxReplicas"] = "four"


def _drop_required_head(doc: dict) -> None:
    del doc["spec"]["rayClusterConfig"]["headGroupSpec"]


@pytest.mark.parametrize("mutate", [_misspell_crd_field, _misspell_container_field, _bad_group_replicas, _drop_required_head])
def test_rayservice_validation_rejects_a_bad_field(mutate) -> None:
    doc = copy.deepcopy(rayservice())
    mutate(doc)
    with pytest.raises((jsonschema.ValidationError, kubernetes_validate.ValidationError)):
        validate.validate_rayservice(doc)


def test_core_validation_rejects_an_unknown_field() -> None:
    ingress = copy.deepcopy(one("Ingress"))
    ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["serviceName"] = "captions"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate.validate_core(ingress)


def stub_absent_packages(config: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stand-ins for policy/router modules whose package is not in this checkout.

    The deployments/ package comes from the service branch; until it is merged
    Ray's schema cannot import its router and policy. Once the package is in
    the repo, nothing is stubbed and the real import must succeed.
    """
    for path in import_paths(config):
        module, attr = module_and_attr(path)
        if (REPO_ROOT / module.split(".")[0]).is_dir():
            continue
        parts = module.split(".")
        for name in (".".join(parts[:i]) for i in range(1, len(parts) + 1)):
            if name not in sys.modules:
                monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
        monkeypatch.setattr(sys.modules[module], attr, lambda *args, **kwargs: None, raising=False)


def test_serve_config_v2_validates_with_rays_schema(monkeypatch: pytest.MonkeyPatch) -> None:
    config = serve_config()
    stub_absent_packages(config, monkeypatch)
    parsed = validate.validate_serve_config(config)
    assert [a.name for a in parsed.applications] == [a["name"] for a in config["applications"]]


def test_serve_config_validation_rejects_a_misspelt_option(monkeypatch: pytest.MonkeyPatch) -> None:
    config = serve_config()
    stub_absent_packages(config, monkeypatch)
    config["applications"][0]["deployments"][0]["max_ongoing_request"] = 5  # Ray would ignore it
    with pytest.raises(ValueError, match="max_ongoing_request"):
        validate.validate_serve_config(config)


def test_import_paths_are_in_packages_the_image_installs() -> None:
    config = serve_config()
    included = included_packages()
    paths = [app["import_path"] for app in config["applications"]] + list(import_paths(config))
    for path in paths:
        module, _ = module_and_attr(path)
        top = module.split(".")[0]
        assert top in included, f"{path}: package {top!r} is not in pyproject's packages.find include"
        if (REPO_ROOT / top).is_dir():  # present in this checkout: the module file must exist too
            rel = Path(*module.split("."))
            assert (REPO_ROOT / rel.with_suffix(".py")).exists() or (REPO_ROOT / rel / "__init__.py").exists(), path


# -- how the pieces fit --------------------------------------------------------


def test_ray_version_and_image_agree() -> None:
    import ray

    spec = rayservice()["spec"]["rayClusterConfig"]
    assert spec["rayVersion"] == ray.__version__
    images = {c["image"] for _, t in validate.pod_templates(rayservice()) for c in containers(t)}
    assert len(images) == 1, f"head and workers must run one image: {images}"


def node_types() -> dict[str, dict]:
    """Worker node types exactly as Ray's KubeRay autoscaler derives them from the cluster spec."""
    cluster = {"metadata": {"name": "captions", "namespace": "test"}, "spec": rayservice()["spec"]["rayClusterConfig"]}
    return _derive_autoscaling_config_from_ray_cr(cluster)["available_node_types"]


def demand(deployment: dict) -> dict[str, float]:
    """Ray resources one replica asks for (Serve's default is one CPU)."""
    options = deployment.get("ray_actor_options", {})
    wanted = {"CPU": options.get("num_cpus", 1), "GPU": options.get("num_gpus", 0), **options.get("resources", {})}
    return {k: v for k, v in wanted.items() if v}


def fits(wanted: dict[str, float], node: dict) -> int:
    """How many replicas with this demand one node holds."""
    have = node["resources"]
    return int(min(have.get(k, 0) // v for k, v in wanted.items())) if wanted else 1 << 30


def max_replicas(deployment: dict) -> int:
    auto = deployment.get("autoscaling_config")
    return auto["max_replicas"] if auto else deployment.get("num_replicas", 1)


def test_head_runs_no_replicas() -> None:
    head = node_types()["headgroup"]["resources"]
    assert head["CPU"] == 0 and not head.get("GPU")
    assert rayservice()["spec"]["excludeHeadPodFromServeSvc"] is True


@pytest.mark.parametrize("deployment", deployments(), ids=lambda d: d["name"])
def test_every_replica_fits_and_autoscaling_can_reach_max(deployment: dict) -> None:
    # A replica that fits no worker group stays pending forever; a max_replicas
    # above what the groups' maxReplicas hold is a scale-up that never happens.
    wanted = demand(deployment)
    workers = {n: t for n, t in node_types().items() if n != "headgroup"}
    capacity = sum(fits(wanted, t) * t["max_workers"] for t in workers.values())
    assert capacity >= max_replicas(deployment), (deployment["name"], wanted, capacity)


@pytest.mark.parametrize("deployment", deployments(), ids=lambda d: d["name"])
def test_cpu_replicas_never_land_on_gpu_pods(deployment: dict) -> None:
    wanted = demand(deployment)
    for name, node in node_types().items():
        if node["resources"].get("GPU") and fits(wanted, node):
            assert wanted.get("GPU"), f"{deployment['name']} (no GPU) fits on GPU group {name}"


def test_gpu_group_requests_nvidia_gpus() -> None:
    for group in rayservice()["spec"]["rayClusterConfig"]["workerGroupSpecs"]:
        if node_types()[group["groupName"]]["resources"].get("GPU"):
            limits = containers(group["template"])[0]["resources"]["limits"]
            assert int(limits["nvidia.com/gpu"]) >= 1
            assert group["minReplicas"] <= group["maxReplicas"]


def groups_running(deployment: dict) -> list[dict]:
    wanted = demand(deployment)
    groups = rayservice()["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    return [g for g in groups if fits(wanted, node_types()[g["groupName"]])]


@pytest.mark.parametrize("deployment", deployments(), ids=lambda d: d["name"])
def test_pods_outlive_replica_draining(deployment: dict) -> None:
    # Kubernetes kills a pod after terminationGracePeriodSeconds (default 30),
    # Serve drains a replica for graceful_shutdown_timeout_s (default 20).
    drain_s = deployment.get("graceful_shutdown_timeout_s", 20)
    for group in groups_running(deployment):
        assert group["template"]["spec"].get("terminationGracePeriodSeconds", 30) >= drain_s, group["groupName"]


def env(container: dict) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


def test_api_key_secret_is_mounted_where_ingest_runs() -> None:
    secret = one("Secret")
    cpu_only = [d for d in deployments() if not demand(d).get("GPU")]
    assert cpu_only, "expected an ingest deployment without GPUs"
    for deployment in cpu_only:
        for group in groups_running(deployment):
            spec = group["template"]["spec"]
            (container,) = containers(group["template"])
            keys_file = Path(env(container)["CAPTIONS_KEYS_FILE"])
            (mount,) = [m for m in container["volumeMounts"] if Path(m["mountPath"]) == keys_file.parent]
            (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
            assert volume["secret"]["secretName"] == secret["metadata"]["name"]
            items = {i["path"]: i["key"] for i in volume["secret"]["items"]}
            assert items[keys_file.name] in secret["stringData"], "the Secret must hold the key the pods read"


def test_ingress_reaches_the_serve_service_with_long_timeouts() -> None:
    ingress, service = one("Ingress"), rayservice()
    serve_svc = service["spec"].get("serveService", {}).get("metadata", {}).get("name")
    expected = serve_svc or f"{service['metadata']['name']}-serve-svc"  # KubeRay's name for it
    port = serve_config().get("http_options", {}).get("port", 8000)
    for rule in ingress["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            assert path["backend"]["service"] == {"name": expected, "port": {"number": port}}
    notes = ingress["metadata"]["annotations"]
    for direction in ("read", "send"):
        assert int(notes[f"nginx.ingress.kubernetes.io/proxy-{direction}-timeout"]) >= 3600


def test_serve_does_not_time_out_long_streams() -> None:
    # request_timeout_s counts from connect, so it would cut every long WebSocket.
    assert "request_timeout_s" not in serve_config().get("http_options", {})


def test_metrics_service_selects_every_ray_pod_on_a_declared_port() -> None:
    service = one("Service")
    selector = service["spec"]["selector"]
    (port,) = service["spec"]["ports"]
    for name, template in validate.pod_templates(rayservice()):
        labels = template["metadata"]["labels"]
        assert selector.items() <= labels.items(), name
        declared = {p["name"]: p["containerPort"] for p in containers(template)[0]["ports"]}
        assert declared[port["targetPort"]] == port["port"], name
        assert template["metadata"]["annotations"]["prometheus.io/port"] == str(port["port"]), name


def test_every_worker_group_has_a_disruption_budget() -> None:
    budgets = [d for _, d in documents() if d["kind"] == "PodDisruptionBudget"]
    for group in rayservice()["spec"]["rayClusterConfig"]["workerGroupSpecs"]:
        labels = group["template"]["metadata"]["labels"]
        matching = [b for b in budgets if b["spec"]["selector"]["matchLabels"].items() <= labels.items()]
        assert len(matching) == 1, group["groupName"]


def test_group_idle_timeouts_need_autoscaler_v2() -> None:
    # Only the v2 autoscaler reads a worker group's idleTimeoutSeconds; v1
    # would silently apply the cluster-wide value to the GPU group too.
    cluster = rayservice()["spec"]["rayClusterConfig"]
    if any("idleTimeoutSeconds" in g for g in cluster["workerGroupSpecs"]):
        assert cluster["enableInTreeAutoscaling"] is True
        assert cluster["autoscalerOptions"]["version"] == "v2"
