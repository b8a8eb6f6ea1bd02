"""Shared fixtures: one tiny random checkpoint per test session."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engine.config import EngineConfig
from engine.features import SAMPLE_RATE


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
    from engine.scheduler import Scheduler

    def build(**overrides) -> Scheduler:
        return Scheduler(EngineConfig(model=str(tiny_dir), device="cpu", dtype="float32", **overrides), tiny_model)

    return build


def noise(seconds: float, seed: int, level: float = 0.1) -> np.ndarray:
    """Deterministic white-noise 'audio' for model-mechanics tests."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(int(seconds * SAMPLE_RATE)) * level).clip(-1, 1).astype(np.float32)
