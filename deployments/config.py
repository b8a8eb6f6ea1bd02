"""The service's config tree: the app `args` of serve_config.yaml, validated.

    args:
      model: models/tiny-en        # hub id or directory (make run MODEL=...)
      gpus_per_replica: 1          # 0 on machines without GPUs (see app.py)
      cpus_per_replica: 1
      engine: {...}                # engine.config.EngineConfig
      ingest: {...}                # IngestConfig below

Unknown keys are errors, as in EngineConfig.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from engine.config import EngineConfig
from engine.vad import VadConfig


@dataclass(frozen=True)
class IngestConfig:
    """Limits of one ingest stream (see README: backpressure)."""

    # Largest WebSocket frame accepted (msgpack bytes).
    max_frame_bytes: int = 256 * 1024
    # Audio received but not yet accepted by the model replica; beyond it: `overloaded`.
    max_pending_s: float = 10.0
    # Uncommitted audio kept for re-homing; older audio is dropped (the engine would have too).
    max_replay_s: float = 30.0
    # Most audio sent to the model replica in one call.
    max_send_s: float = 2.0
    # A dropped socket's session may be resumed this long.
    resume_grace_s: float = 30.0
    # A link pushes its streams' audio to its model replica at most this often.
    tick_s: float = 0.05
    # A link's event stream yields at least this often, events or not (liveness).
    events_wait_s: float = 1.0
    # Replica loads for placing new streams are asked for at most this often.
    placement_refresh_s: float = 1.0
    # Re-homing attempts in a row before the stream fails with `unavailable`.
    max_rehomes: int = 5
    # A stream that sends no audio this long is closed (`idle_timeout`) and its slot freed;
    # a socket must send `start` within handshake_timeout_s.
    idle_timeout_s: float = 15.0
    handshake_timeout_s: float = 10.0
    # The voice activity gate in front of the model (engine/vad.py), and how often it scores.
    vad: VadConfig = field(default_factory=VadConfig)
    # Every word waits for the next tick: 0.05 s halves that wait against 0.1 s (where each
    # 100 ms frame of every stream is waiting, so one Silero call scores them all) for twice
    # the calls on half the rows; the ingest's CPU per stream-second measured no higher
    # (benchmarks/capacity.py, 16/32/48 streams: .0132/.0090/.0081 at 0.05 s).
    vad_tick_s: float = 0.05

    def __post_init__(self) -> None:
        for name in ("max_pending_s", "max_replay_s", "max_send_s", "resume_grace_s", "tick_s", "events_wait_s",
                     "placement_refresh_s", "vad_tick_s", "idle_timeout_s", "handshake_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"ingest.{name} must be > 0")
        if self.max_frame_bytes < 1024 or self.max_rehomes < 1:
            raise ValueError("ingest.max_frame_bytes must be >= 1024 and ingest.max_rehomes >= 1")


@dataclass(frozen=True)
class ServiceConfig:
    model: str = "models/tiny-en"
    gpus_per_replica: float = 1.0
    # Logical CPUs a model replica reserves (its loop thread; tokenisation, features).
    cpus_per_replica: float = 1.0
    engine: EngineConfig = field(default_factory=EngineConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> ServiceConfig:
        unknown = set(args) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown app args: {sorted(unknown)}")
        model = str(args.get("model", cls.model))
        engine = EngineConfig.from_dict({**args.get("engine", {}), "model": model})
        ingest_args = dict(args.get("ingest", {}))
        bad = set(ingest_args) - {f.name for f in dataclasses.fields(IngestConfig)}
        if bad:
            raise ValueError(f"unknown ingest config keys: {sorted(bad)}")
        if isinstance(ingest_args.get("vad"), dict):
            bad = set(ingest_args["vad"]) - {f.name for f in dataclasses.fields(VadConfig)}
            if bad:
                raise ValueError(f"unknown ingest.vad keys: {sorted(bad)}")
            ingest_args["vad"] = VadConfig(**ingest_args["vad"])
        gpus = float(args.get("gpus_per_replica", cls.gpus_per_replica))
        cpus = float(args.get("cpus_per_replica", cls.cpus_per_replica))
        if gpus < 0 or cpus < 0:
            raise ValueError("gpus_per_replica and cpus_per_replica must be >= 0")
        return cls(model, gpus, cpus, engine, IngestConfig(**ingest_args))
