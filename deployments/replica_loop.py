"""One model replica's loop around the engine, without Ray.

A thread runs `scheduler.step()` whenever there is work (vLLM-style: pick ->
run -> publish); its events go to per-stream outboxes, which the ingest
drains with long-polling `poll` calls on the replica's asyncio loop. Streams
nobody polls for `idle_timeout_s` (their ingest died) are aborted so their
slots come back.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engine.errors import UnknownStreamError
from engine.events import ErrorEvent, Event, FinalEvent, PartialEvent, StepResult, WordsEvent
from engine.core import Engine

# "ray.serve": the logger Serve writes to each replica's log file.
log = logging.getLogger("ray.serve")

# How long the loop sleeps when no stream has work (it is woken by feed/end).
_IDLE_WAIT_S = 0.1


def event_to_dict(event: Event) -> dict[str, Any]:
    """An engine event as a plain dict (what crosses the Ray handle)."""
    if isinstance(event, WordsEvent | FinalEvent):
        return {
            "type": "words" if isinstance(event, WordsEvent) else "final",
            "words": [w.as_dict() for w in event.words],
            "emitted_at": round(event.emitted_at, 3),
            "language": event.language,
        }
    if isinstance(event, PartialEvent):
        return {"type": "partial", "text": event.text}
    return {"type": "error", "code": event.code, "message": event.message}


@dataclass
class Outbox:
    """Events of one stream waiting for the ingest's next poll."""

    loop: asyncio.AbstractEventLoop
    events: list[dict[str, Any]] = field(default_factory=list)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    last_poll: float = field(default_factory=time.monotonic)
    # The stream finished or failed: the outbox goes once this is polled.
    closed: bool = False


class ReplicaLoop:
    """Owns an Engine, its stepping thread and the streams' outboxes."""

    def __init__(
        self, scheduler: Engine, idle_timeout_s: float, on_step: Callable[[StepResult], None] = lambda r: None
    ) -> None:
        self.scheduler = scheduler
        self.idle_timeout_s = idle_timeout_s
        self.on_step = on_step
        self._outboxes: dict[str, Outbox] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scheduler-loop", daemon=True)
        self._thread.start()

    # Called on the replica's asyncio loop.
    def open(self, stream_id: str, language: str | None, context: str) -> None:
        self.scheduler.open(stream_id, language, context)
        with self._lock:
            self._outboxes[stream_id] = Outbox(asyncio.get_running_loop())

    def feed(self, stream_id: str, samples: np.ndarray) -> float:
        """Queue audio; returns the stream's backlog in seconds."""
        self.scheduler.feed(stream_id, samples)
        return self.scheduler.backlog_s(stream_id)

    def end(self, stream_id: str) -> None:
        self.scheduler.end(stream_id)

    def abort(self, stream_id: str) -> None:
        self.scheduler.abort(stream_id)
        with self._lock:
            self._outboxes.pop(stream_id, None)

    async def poll(self, stream_id: str, wait_s: float) -> list[dict[str, Any]]:
        """Events of a stream since the last poll, waiting up to `wait_s` for the first."""
        outbox = self._outbox(stream_id)
        outbox.last_poll = time.monotonic()
        if not outbox.events and not outbox.closed:
            try:
                await asyncio.wait_for(outbox.wake.wait(), wait_s)
            except asyncio.TimeoutError:
                pass
        with self._lock:
            events, outbox.events = outbox.events, []
            outbox.wake.clear()
            if outbox.closed:
                self._outboxes.pop(stream_id, None)
        return events

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    # ------------------------------------------------------------ internals
    def _outbox(self, stream_id: str) -> Outbox:
        with self._lock:
            outbox = self._outboxes.get(stream_id)
        if outbox is None:
            raise UnknownStreamError(f"no open stream {stream_id!r} on this replica")
        return outbox

    def _run(self) -> None:
        busy = False
        while not self._stop.is_set():
            if not busy:
                self.scheduler.wait_for_work(_IDLE_WAIT_S)
            result = self.scheduler.step()
            busy = result.stats.batch > 0
            self._publish(result.events)
            self.on_step(result)
            self._abort_idle()

    def _publish(self, events: list[Event]) -> None:
        woken = []
        with self._lock:
            for event in events:
                outbox = self._outboxes.get(event.stream_id)
                if outbox is None:
                    continue
                if isinstance(event, PartialEvent) and outbox.events and outbox.events[-1]["type"] == "partial":
                    # Only the newest partial matters to a client that has not polled yet.
                    outbox.events.pop()
                outbox.events.append(event_to_dict(event))
                outbox.closed = outbox.closed or isinstance(event, FinalEvent | ErrorEvent)
                woken.append(outbox)
        for outbox in woken:
            outbox.loop.call_soon_threadsafe(outbox.wake.set)

    def _abort_idle(self) -> None:
        now = time.monotonic()
        with self._lock:
            idle = [sid for sid, o in self._outboxes.items() if now - o.last_poll > self.idle_timeout_s]
        for stream_id in idle:
            log.warning("stream %s: not polled for %.0f s (ingest gone?), aborting", stream_id, self.idle_timeout_s)
            self.abort(stream_id)
