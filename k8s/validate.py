"""Offline validation of the k8s/ manifests (used by tests/test_k8s_*.py).

Three schemas, none fetched from the network:
- core Kubernetes objects: the schemas shipped inside kubernetes-validate;
- the RayService: the KubeRay CRD's openAPIV3Schema kept in k8s/schemas/;
- serveConfigV2: Ray's own ServeDeploySchema (the pinned Ray).
"""

from __future__ import annotations

import functools
import typing
from pathlib import Path
from typing import Any, Iterator

import jsonschema
import kubernetes_validate
import yaml
from pydantic import BaseModel
from ray.serve.schema import ServeDeploySchema

# Oldest Kubernetes minor we support; kubernetes-validate checks against it.
KUBERNETES_VERSION = "1.30.0"
RAYSERVICE_CRD = Path(__file__).resolve().parent / "schemas" / "ray.io_rayservices.yaml"


def load_all(path: Path) -> list[dict]:
    """Every non-empty document of a multi-document YAML file."""
    with path.open() as f:
        return [doc for doc in yaml.safe_load_all(f) if doc]


def validate_core(obj: dict) -> None:
    """A built-in Kubernetes object, strictly: unknown fields are errors, as with kubectl --validate=strict."""
    kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def _strict(schema: Any) -> Any:
    # CRD schemas never set additionalProperties: the API server prunes unknown
    # fields instead of rejecting them, so a misspelt field silently vanishes.
    # Forbid them here, except where the CRD keeps unknown fields on purpose.
    if isinstance(schema, dict):
        schema = {k: _strict(v) for k, v in schema.items()}
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


@functools.cache
def rayservice_schema(version: str = "v1") -> dict:
    """The strict openAPIV3Schema of RayService `version` from the KubeRay CRD."""
    crd = yaml.safe_load(RAYSERVICE_CRD.read_text())
    (entry,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    return _strict(entry["schema"]["openAPIV3Schema"])


def validate_rayservice(obj: dict) -> None:
    """Against the CRD schema, then each pod template against Kubernetes' own PodTemplateSpec."""
    if obj.get("apiVersion") != "ray.io/v1" or obj.get("kind") != "RayService":
        raise ValueError(f"not a ray.io/v1 RayService: {obj.get('apiVersion')}/{obj.get('kind')}")
    jsonschema.Draft7Validator(rayservice_schema()).validate(obj)
    # The CRD leaves metadata open (the API server checks it as ObjectMeta):
    # check it as the metadata of a built-in object.
    validate_core({"apiVersion": "v1", "kind": "ConfigMap", "metadata": obj["metadata"]})
    for name, template in pod_templates(obj):
        validate_core({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": name}, "template": template})


def pod_templates(rayservice: dict) -> Iterator[tuple[str, dict]]:
    """(group name, pod template) for the head group and every worker group."""
    cluster = rayservice["spec"]["rayClusterConfig"]
    yield "head", cluster["headGroupSpec"]["template"]
    for group in cluster.get("workerGroupSpecs", []):
        yield group["groupName"], group["template"]


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    # Optional[M], List[M], Union[dict, M] ... -> [M]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def unknown_keys(data: Any, model: type[BaseModel], path: str = "") -> list[str]:
    """Keys that `model` does not define, recursively.

    Ray's Serve schemas accept and ignore unknown keys (forward compatibility),
    so a misspelt option would deploy with its default: catch it here.
    """
    if not isinstance(data, dict):
        return []
    fields = model.model_fields
    names = set(fields) | {f.alias for f in fields.values() if f.alias}
    found = [f"{path}{key}" for key in data if key not in names]
    for key, field in fields.items():
        value = data.get(key)
        for sub in _models_in(field.annotation):
            items = value if isinstance(value, list) else [value]
            for i, item in enumerate(items):
                label = f"{key}[{item.get('name', i)}]" if isinstance(value, list) and isinstance(item, dict) else key
                found += unknown_keys(item, sub, f"{path}{label}.")
    return found


def validate_serve_config(config: dict) -> ServeDeploySchema:
    """Ray's own validation (it imports the custom router and autoscaling policy) plus unknown keys."""
    parsed = ServeDeploySchema.model_validate(config)
    unknown = unknown_keys(config, ServeDeploySchema)
    if unknown:
        raise ValueError(f"keys Ray Serve does not know (ignored at deploy time): {unknown}")
    return parsed
