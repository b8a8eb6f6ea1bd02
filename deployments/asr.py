"""The model deployment: one engine per replica, all its streams.

Every method takes the stream id, which is also the handle's `session_id`,
so the StickyRouter sends all calls of a stream here. Engine errors come back
as `{"error": {code, message}}` replies rather than exceptions, so the ingest
tells a client-visible error (`overloaded`) from a lost replica without
depending on how Ray wraps remote exceptions.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from ray import serve

from deployments.config import ServiceConfig
from deployments.metrics import ModelMetrics
from deployments.replica_loop import ReplicaLoop
from engine.errors import EngineError
from engine.loader import load_model
from engine.core import Engine

log = logging.getLogger("ray.serve")

Reply = dict[str, Any]


def _error(exc: EngineError) -> Reply:
    return {"error": {"code": exc.code, "message": str(exc)}}


@serve.deployment(name="ASRModel")
class ASRModel:
    def __init__(self, args: dict[str, Any]) -> None:
        cfg = ServiceConfig.from_args(args)
        # A model that cannot be loaded fails the replica (and `make run`) loudly: no fallback.
        model = load_model(cfg.engine.model, cfg.engine.device, cfg.engine.dtype)
        self.replica = serve.get_replica_context().replica_id.unique_id
        self.metrics = ModelMetrics()
        scheduler = Engine(cfg.engine, model)
        # An ingest polls every poll_wait_s; many missed polls mean it is gone.
        idle_timeout_s = max(30.0, 20 * cfg.ingest.poll_wait_s)
        self.loop = ReplicaLoop(
            scheduler, idle_timeout_s, lambda result: self.metrics.observe(result, scheduler.open_streams)
        )
        log.info("model replica %s ready: %s on %s", self.replica, cfg.engine.model, model.device)

    async def open(self, stream_id: str, language: str | None, context: str = "") -> Reply:
        try:
            self.loop.open(stream_id, language, context)
        except EngineError as exc:
            return _error(exc)
        return {"replica": self.replica}

    async def feed(self, stream_id: str, samples: np.ndarray) -> Reply:
        try:
            return {"backlog_s": self.loop.feed(stream_id, samples), "replica": self.replica}
        except EngineError as exc:
            return _error(exc)

    async def end(self, stream_id: str) -> Reply:
        try:
            self.loop.end(stream_id)
        except EngineError as exc:
            return _error(exc)
        return {}

    async def abort(self, stream_id: str) -> Reply:
        self.loop.abort(stream_id)
        return {}

    async def poll(self, stream_id: str, wait_s: float) -> Reply:
        try:
            return {"events": await self.loop.poll(stream_id, wait_s)}
        except EngineError as exc:
            return _error(exc)

    def record_autoscaling_stats(self) -> dict[str, float]:
        return {"open_streams": float(self.loop.scheduler.open_streams)}

    def __del__(self) -> None:
        # Absent when __init__ failed (e.g. the model did not load).
        loop = self.__dict__.get("loop")
        if loop is not None:
            loop.stop()
