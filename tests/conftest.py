"""Shared fixtures: one tiny random checkpoint, one local Ray service and one PostgreSQL server per test session."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from engine.config import EngineConfig
from engine.features import SAMPLE_RATE
from tests.postgres import PostgresMissing, PostgresServer


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from engine.tiny import build_random

    return build_random(tmp_path_factory.mktemp("tiny") / "tiny-random", seed=0)


@pytest.fixture(scope="session")
def tiny_model(tiny_dir: Path):
    from engine.loader import load_model

    return load_model(str(tiny_dir), device="cpu", dtype="float32")


@pytest.fixture
def make_scheduler(tiny_model, tiny_dir: Path):
    """Build a Scheduler on the tiny model with config overrides."""
    from engine.core import Engine

    def build(**overrides) -> Engine:
        return Engine(EngineConfig(model=str(tiny_dir), device="cpu", dtype="float32", **overrides), tiny_model)

    return build


@pytest.fixture(scope="session")
def postgres_server():
    """A live PostgreSQL server, started on first use (about a second) and stopped at the end.

    Missing binaries fail the tests that need it, never skip them: `make test`
    installs the server (`make sysdeps`), so a skip would only hide a broken setup.
    """
    try:
        server = PostgresServer()
    except PostgresMissing as err:
        missing = str(err)
    else:
        missing = ""
    if missing:  # failed outside the except block, so the report is the one line
        pytest.fail(missing, pytrace=False)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer):
    """The URL of a new empty database on the session's server, dropped after the test."""
    url = postgres_server.create_database()
    yield url
    postgres_server.drop_database(url)


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh transcript database of each supported kind: the store's tests run on both."""
    if request.param == "postgres":
        return request.getfixturevalue("postgres_url")
    return f"sqlite:///{tmp_path / 'captions.sqlite3'}"


def noise(seconds: float, seed: int, level: float = 0.1) -> np.ndarray:
    """Deterministic white-noise 'audio' for model-mechanics tests."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(int(seconds * SAMPLE_RATE)) * level).clip(-1, 1).astype(np.float32)


@functools.lru_cache(maxsize=None)
def _speech(seconds: float, seed: int) -> np.ndarray:
    from engine.tiny_tokenizer import read_words
    from training.corpus import heldout_sentences, synthesize

    rng = np.random.default_rng(seed)
    pieces, total = [], 0
    for text in heldout_sentences(40, read_words())[seed % 20 :]:
        clip = synthesize(text, "en-us", int(rng.integers(140, 200)), 50)
        pieces += [clip, np.zeros(int(0.15 * SAMPLE_RATE), np.float32)]
        total += len(clip) + int(0.15 * SAMPLE_RATE)
        if total >= seconds * SAMPLE_RATE:
            break
    return np.concatenate(pieces)[: int(seconds * SAMPLE_RATE)]


def speech(seconds: float, seed: int) -> np.ndarray:
    """Deterministic espeak-ng speech (held-out sentences, 0.15 s apart): audio the service's
    voice activity gate lets through, for tests through the service (a random model still
    writes random words on it)."""
    return _speech(seconds, seed).copy()


SERVICE_PORT = 18_765
SERVICE_URL = f"http://127.0.0.1:{SERVICE_PORT}"
REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Tenants:
    """API keys of the service's test tenants, and the files the replicas read."""

    keys: dict[str, str]
    keys_file: Path
    db_url: str


@pytest.fixture(scope="session")
def tenants(tmp_path_factory: pytest.TempPathFactory) -> Tenants:
    """acme: room for every service test; globex: a second tenant; solo, and lone for the OpenAI tests
    (so the per-tenant rejection counts each module checks stay its own): one stream at a time."""
    from captions.tenants import add_key

    root = tmp_path_factory.mktemp("captions")
    keys_file = root / "keys.yaml"
    keys = {
        "acme": add_key(keys_file, "acme", {"max_concurrent_streams": 100, "audio_minutes_per_period": 10_000.0}),
        "globex": add_key(keys_file, "globex", {"max_concurrent_streams": 10}),
        "solo": add_key(keys_file, "solo", {"max_concurrent_streams": 1}),
        "lone": add_key(keys_file, "lone", {"max_concurrent_streams": 1}),
    }
    return Tenants(keys, keys_file, f"sqlite:///{root / 'captions.sqlite3'}")


def service_config(tiny_dir: Path, tenants: Tenants) -> dict:
    """serve_config.yaml with the tiny model, the test port, test limits and the test tenants."""
    from deployments.run import app_config, load_config

    config = load_config(REPO / "serve_config.yaml", str(tiny_dir))
    config["http_options"]["port"] = SERVICE_PORT
    app = app_config(config)
    app["runtime_env"] = {"env_vars": {"CAPTIONS_KEYS_FILE": str(tenants.keys_file),
                                       "CAPTIONS_DB_URL": tenants.db_url}}
    # Steps of exactly min_step_s make the words independent of arrival timing (parity with the CLI),
    # and float32 makes them independent of which streams share a forward (bfloat16 sums differ by batch).
    app["args"]["engine"]["max_step_s"] = app["args"]["engine"]["min_step_s"]
    app["args"]["engine"]["dtype"] = "float32"
    # Below one 8 s frame, so a burst is refused whatever the timing.
    app["args"]["ingest"]["max_pending_s"] = 5.0
    # Idle sockets are closed sooner than in production, so the idle tests stay short.
    app["args"]["ingest"]["idle_timeout_s"] = 5.0
    app["args"]["ingest"]["handshake_timeout_s"] = 5.0
    model = next(d for d in app["deployments"] if d["name"] == "ASRModel")
    model["autoscaling_config"].update(
        min_replicas=2, max_replicas=3, upscale_delay_s=1, downscale_delay_s=600,
        policy={**model["autoscaling_config"]["policy"], "policy_kwargs": {"target_streams_per_replica": 2}},
    )
    return config


@pytest.fixture(scope="session")
def service(tiny_dir: Path, tenants: Tenants):
    """Ray + Serve + the captions app with a tiny random model, shared by every test that needs it.

    The model deployment autoscales between 2 and 3 replicas on open streams
    (target 2 per replica). Only one such cluster can run on a machine (port).
    """
    from deployments.run import CLUSTER_ENV

    os.environ.update(CLUSTER_ENV)
    os.environ["RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S"] = "1"
    # On a loaded 2-core machine the proxy can take longer than Serve's 5 s
    # readiness check to start; it is then killed and restarted in a loop.
    os.environ["RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S"] = "60"
    os.environ["RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S"] = "60"
    import ray
    from ray import serve

    from deployments.run import deploy, stop_cluster

    ray.init(address="local", num_cpus=8, namespace="serve", include_dashboard=False, log_to_driver=False)
    node_id = ray.get_runtime_context().get_node_id()
    try:
        deploy(service_config(tiny_dir, tenants), timeout_s=300)
        yield serve
    finally:
        stop_cluster(node_id)
