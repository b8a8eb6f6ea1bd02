"""k8s/manifests/rayservice.yaml is rendered from serve_config.yaml, and only the documented overrides differ."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from k8s import render

KeyPath = tuple[str, ...]


def committed_rayservice() -> dict:
    return yaml.safe_load(render.OUTPUT.read_text())


def override_leaves(overrides: dict) -> Iterator[tuple[KeyPath, Any]]:
    """(path, value) for every value the overrides set; names step into name-keyed lists."""

    def walk(node: Any, path: KeyPath) -> Iterator[tuple[KeyPath, Any]]:
        if isinstance(node, dict) and node:
            for key, value in node.items():
                yield from walk(value, path + (key,))
        else:
            yield path, node

    yield from walk(overrides, ())


def _step(node: Any, key: str) -> Any:
    if isinstance(node, list):  # applications / deployments, addressed by name
        (item,) = [item for item in node if item["name"] == key]
        return item
    return node[key]


def lookup(config: dict, path: KeyPath) -> Any:
    node: Any = config
    for key in path:
        node = _step(node, key)
    return node


def has(config: dict, path: KeyPath) -> bool:
    try:
        lookup(config, path)
    except (KeyError, ValueError):
        return False
    return True


def test_committed_manifest_is_a_fresh_render() -> None:
    assert render.OUTPUT.read_text() == render.render_repo(), "k8s/manifests/rayservice.yaml is stale: run `make k8s`"


def test_serve_config_v2_is_serve_config_plus_overrides() -> None:
    serve_config = render.load_yaml(render.SERVE_CONFIG)
    overrides = render.load_yaml(render.OVERRIDES)
    rendered = yaml.safe_load(committed_rayservice()["spec"]["serveConfigV2"])
    # Every override took effect ...
    for path, value in override_leaves(overrides):
        assert lookup(rendered, path) == value, path
    # ... and putting serve_config.yaml's values back at exactly those paths
    # gives serve_config.yaml: nothing else differs.
    restored = copy.deepcopy(rendered)
    for path, _ in override_leaves(overrides):
        missing = [i for i in range(1, len(path) + 1) if not has(serve_config, path[:i])]
        if not missing:
            lookup(restored, path[:-1])[path[-1]] = lookup(serve_config, path)
        else:  # the override added this key: drop it where serve_config.yaml has nothing
            lookup(restored, path[: missing[0] - 1]).pop(path[missing[0] - 1], None)
    assert restored == serve_config


def test_everything_but_serve_config_v2_comes_from_the_base() -> None:
    rendered = committed_rayservice()
    del rendered["spec"]["serveConfigV2"]
    assert rendered == render.with_cluster_env(render.load_yaml(render.BASE))


def test_every_ray_container_starts_with_the_cluster_env() -> None:
    from deployments.run import CLUSTER_ENV

    cluster = committed_rayservice()["spec"]["rayClusterConfig"]
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        for container in group["template"]["spec"]["containers"]:
            env = {e["name"]: e.get("value") for e in container["env"]}
            assert {name: env.get(name) for name in CLUSTER_ENV} == CLUSTER_ENV, container["name"]


SERVE = {
    "proxy_location": "EveryNode",
    "applications": [
        {
            "name": "app",
            "import_path": "pkg.app:build",
            "args": {"model": "local/dir", "engine": {"max_streams": 8}},
            "deployments": [
                {"name": "Front", "ray_actor_options": {"num_cpus": 1}},
                {"name": "Model", "ray_actor_options": {"num_gpus": 0, "num_cpus": 2}, "user_config": {"a": [1, 2]}},
            ],
        },
        {"name": "other", "import_path": "pkg.other:build"},
    ],
}


def test_overrides_merge_by_name_and_leave_inputs_alone() -> None:
    serve = copy.deepcopy(SERVE)
    overrides = {
        "http_options": {"port": 9000},
        "applications": {
            "app": {
                "args": {"model": "Org/Model"},
                "deployments": {"Model": {"ray_actor_options": {"num_gpus": 1}, "user_config": {"a": [3]}}},
            }
        },
    }
    frozen = copy.deepcopy(overrides)
    out = render.apply_overrides(serve, overrides)
    assert serve == SERVE and overrides == frozen
    assert out["http_options"] == {"port": 9000}
    app, other = out["applications"]
    assert other == SERVE["applications"][1]
    assert app["args"] == {"model": "Org/Model", "engine": {"max_streams": 8}}
    front, model = app["deployments"]
    assert front == SERVE["applications"][0]["deployments"][0]
    assert model["ray_actor_options"] == {"num_gpus": 1, "num_cpus": 2}
    assert model["user_config"] == {"a": [3]}  # lists replace, they do not merge


@pytest.mark.parametrize(
    "overrides",
    [
        {"applications": {"missing": {"args": {}}}},
        {"applications": {"app": {"deployments": {"Renamed": {"num_replicas": 2}}}}},
    ],
)
def test_override_of_a_name_the_serve_config_lacks_is_an_error(overrides: dict) -> None:
    with pytest.raises(render.OverrideError):
        render.apply_overrides(SERVE, overrides)


def test_serve_config_v2_is_a_yaml_block_string() -> None:
    cluster = {"headGroupSpec": {"template": {"spec": {"containers": []}}}, "workerGroupSpecs": []}
    text = render.render(SERVE, {}, {"apiVersion": "ray.io/v1", "kind": "RayService",
                                     "spec": {"rayClusterConfig": cluster}})
    assert "serveConfigV2: |\n" in text
    assert yaml.safe_load(yaml.safe_load(text)["spec"]["serveConfigV2"]) == SERVE


def test_check_mode_fails_on_a_stale_manifest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "rayservice.yaml"
    monkeypatch.setattr(render, "OUTPUT", out)
    monkeypatch.setattr(render, "REPO_ROOT", tmp_path)
    assert render.main(["--check"]) == 1  # missing
    assert render.main([]) == 0 and render.main(["--check"]) == 0
    out.write_text(out.read_text() + "# a hand edit\n")
    assert render.main(["--check"]) == 1
