"""The ingest's voice activity gate: every stream's audio scored in batches, every tick.

VAD runs here, on the CPU ingest, not on the model replicas: the ingest
scales out on cheap CPU nodes, and what the gate leaves out (silence, noise)
never costs a GPU replica a step, a slot's buffer or a network hop. Scoring
is batched over all of this replica's streams (one Silero call scores one
32 ms chunk of each), once per `vad_tick_s`; the gate's pieces (audio,
endpoints, gaps) go into each stream's Session log, from where its link
sends them (engine/vad.py has the gate itself).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from typing import TYPE_CHECKING

import numpy as np

from engine.vad import VadConfig, VadGate, flush

if TYPE_CHECKING:
    from deployments.relay import Relay

log = logging.getLogger("ray.serve")


class VadWorker:
    """One per ingest replica: gates the audio of every relay that has some waiting."""

    def __init__(self, cfg: VadConfig, tick_s: float) -> None:
        self.cfg = cfg
        self.tick_s = tick_s
        self._gate: VadGate | None = None
        self._waiting: dict[int, Relay] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None

    def mark(self, relay: Relay) -> None:
        """The relay has audio (or its end) for the gate."""
        self._waiting[id(relay)] = relay
        self._wake.set()
        if self._task is None:
            if self._gate is None:
                self._gate = VadGate(self.cfg)
            loop = asyncio.get_running_loop()
            # An empty context: no request's id rides along (see links.py).
            self._task = contextvars.Context().run(loop.create_task, self._run())
            self._task.add_done_callback(_log_crash)

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await asyncio.sleep(self.tick_s)
            relays, self._waiting = list(self._waiting.values()), {}
            try:
                self.gate_now(relays)
            except Exception:
                # Contained to these streams: they end with an error, the others go on.
                log.exception("voice activity detection failed for %d streams", len(relays))
                for relay in relays:
                    relay.fail("internal", "voice activity detection failed")

    def gate_now(self, relays: list[Relay]) -> None:
        """Score what every relay has waiting and hand each its pieces."""
        assert self._gate is not None
        work = []
        for relay in relays:
            session = relay.session
            samples = session.ungated
            session.ungated = []
            if samples:
                work.append((relay, np.concatenate(samples)))
        for (relay, _), pieces in zip(work, self._gate.process([(r.session.gate, s) for r, s in work])):
            relay.gated(pieces)
        for relay in relays:
            session = relay.session
            if session.ended and not session.ungated and not session.gate_done:
                relay.gated(flush(session.gate))
                session.gate_done = True
            relay.nudge()


def _log_crash(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("the VAD worker died", exc_info=task.exception())
