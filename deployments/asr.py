"""The model deployment: one engine per replica, all its streams.

The ingest reaches a replica through links (deployments/links.py): calls
carry a link id (one per ingest replica) and are routed with the session key
`@<replica id>`, which the StickyRouter pins to that replica. A call that
lands on another replica (its target left) is told so with `wrong_replica`,
and the ingest re-homes the streams it had there. Engine errors come back as
`{code, message}` values rather than exceptions, so the ingest tells a
client-visible error (`overloaded`) from a lost replica without depending on
how Ray wraps remote exceptions.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
from ray import serve

from deployments.config import ServiceConfig
from deployments.metrics import ModelMetrics
from deployments.replica_loop import Reply, ReplicaLoop, error_reply
from deployments.router import PIN
from engine.core import Engine, available_cpus, set_threads
from engine.errors import EngineError
from engine.loader import load_model

log = logging.getLogger("ray.serve")

# A link the ingest has not pushed to or read from for this long is gone
# (ingest.events_wait_s keeps a live one fresh).
_LINK_IDLE_FACTOR = 20


def pin(replica: str) -> str:
    """The router session key that reaches exactly `replica`."""
    return PIN + replica


@serve.deployment(name="ASRModel")
class ASRModel:
    def __init__(self, args: dict[str, Any]) -> None:
        cfg = ServiceConfig.from_args(args)
        threads = set_threads(cfg.cpus_per_replica or available_cpus())
        # A model that cannot be loaded fails the replica (and `make run`) loudly: no fallback.
        model = load_model(cfg.engine.model, cfg.engine.device, cfg.engine.dtype)
        self.replica = serve.get_replica_context().replica_id.unique_id
        self.metrics = ModelMetrics()
        engine = Engine(cfg.engine, model)
        # The first forwards of a process are slow (allocation, kernel selection): pay for them
        # before the replica takes streams.
        engine.warm_up()
        self.loop = ReplicaLoop(
            engine,
            max(30.0, _LINK_IDLE_FACTOR * cfg.ingest.events_wait_s),
            lambda result: self.metrics.observe(result, engine.open_streams),
        )
        self.events_wait_s = cfg.ingest.events_wait_s
        log.info("model replica %s ready: %s on %s (%s), %d torch threads",
                 self.replica, cfg.engine.model, model.device, model.dtype, threads)

    async def open(self, link: str, replica: str, stream_id: str, language: str | None, context: str = "") -> Reply:
        if replica != self.replica:
            return {"error": {"code": "wrong_replica", "message": f"this is replica {self.replica}"}}
        try:
            self.loop.open(link, stream_id, language, context)
        except EngineError as exc:
            return {"error": error_reply(exc)}
        return {"replica": self.replica}

    async def push(self, link: str, replica: str, audio: dict[str, np.ndarray], ends: list[str],
                   aborts: list[str], pauses: dict[str, int]) -> Reply:
        if replica != self.replica:
            return {"error": {"code": "wrong_replica", "message": f"this is replica {self.replica}"}}
        return self.loop.push(link, audio, ends, aborts, pauses)

    async def events(self, link: str, replica: str) -> AsyncIterator[list[dict[str, Any]]]:
        """Streaming: the link's events in batches (call with handle.options(stream=True))."""
        if replica != self.replica:
            yield [{"type": "wrong_replica", "message": f"this is replica {self.replica}"}]
            return
        async for batch in self.loop.events(link, self.events_wait_s):
            yield batch

    def stats(self) -> dict[str, Any]:
        """Load figures for the ingest's placement of new streams."""
        return {"replica": self.replica, **self.loop.stats()}

    def check_health(self) -> None:
        # Serve replaces a replica whose health check raises; its streams re-home.
        self.loop.check()

    def record_autoscaling_stats(self) -> dict[str, float]:
        return {"open_streams": float(self.loop.engine.open_streams)}

    def __del__(self) -> None:
        # Absent when __init__ failed (e.g. the model did not load).
        loop = self.__dict__.get("loop")
        if loop is not None:
            loop.stop()
