"""One model replica's loop around the engine, without Ray.

A thread runs `engine.step()` whenever there is work; the events of every
stream go to the outbox of the link (one ingest replica's connection) that
opened the stream. The ingest talks to a replica through links, not per
stream: one `push` call per tick carries the audio, ends and aborts of all
the link's streams, and one long-lived `events` stream returns the events
of all of them (deployments/links.py is the other side). Streams of a link
that has not been heard from for `idle_timeout_s` (its ingest died) are
aborted so their slots come back.

The step thread must never die silently: an exception outside the engine's
per-forward containment stops it, and `check()` (the replica's Serve
health check) then fails, so Serve replaces the replica and its streams
re-home.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engine.core import Engine
from engine.errors import EngineError
from engine.events import ErrorEvent, Event, FinalEvent, PartialEvent, StepResult, WordsEvent

# "ray.serve": the logger Serve writes to each replica's log file.
log = logging.getLogger("ray.serve")

# How long the loop sleeps when no stream has work (it is woken by feed/end).
_IDLE_WAIT_S = 0.1

Reply = dict[str, Any]


def event_to_dict(event: Event) -> dict[str, Any]:
    """An engine event as a plain dict (what crosses the Ray handle), tagged with its stream."""
    if isinstance(event, WordsEvent | FinalEvent):
        return {
            "stream": event.stream_id,
            "type": "words" if isinstance(event, WordsEvent) else "final",
            "words": [w.as_dict() for w in event.words],
            "emitted_at": round(event.emitted_at, 3),
            "language": event.language,
            "utterance_end": isinstance(event, WordsEvent) and event.utterance_end,
        }
    if isinstance(event, PartialEvent):
        return {"stream": event.stream_id, "type": "partial", "text": event.text}
    return {"stream": event.stream_id, "type": "error", "code": event.code, "message": event.message}


def error_reply(exc: EngineError) -> Reply:
    return {"code": exc.code, "message": str(exc)}


@dataclass
class LinkOutbox:
    """Events of one link's streams waiting for its `events` stream."""

    loop: asyncio.AbstractEventLoop
    events: list[dict[str, Any]] = field(default_factory=list)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    streams: set[str] = field(default_factory=set)
    last_seen: float = field(default_factory=time.monotonic)
    # An `events` call is reading this outbox now.
    attached: bool = False


class ReplicaLoop:
    """Owns an Engine, its stepping thread and the links' outboxes."""

    def __init__(
        self, engine: Engine, idle_timeout_s: float, on_step: Callable[[StepResult], None] = lambda r: None
    ) -> None:
        self.engine = engine
        self.idle_timeout_s = idle_timeout_s
        self.on_step = on_step
        self._links: dict[str, LinkOutbox] = {}
        self._stream_link: dict[str, str] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.crash: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="engine-loop", daemon=True)
        self._thread.start()

    # ------------------------------------------------ called on the replica's asyncio loop
    def open(self, link: str, stream_id: str, language: str | None, context: str) -> None:
        """Open a stream whose events go to `link`; EngineError (overloaded, bad_request) if not."""
        # Interned and held while the stream is open: the pushes' maps are keyed by stream id and Ray's
        # msgpack decoder interns map keys; a live interned copy keeps each push from adding (and
        # dropping) an entry in CPython's interned-string table (see Session.stream_key).
        stream_id = sys.intern(stream_id)
        self.engine.open(stream_id, language, context)
        with self._lock:
            outbox = self._link(link)
            outbox.streams.add(stream_id)
            self._stream_link[stream_id] = link

    def push(self, link: str, audio: dict[str, np.ndarray], ends: list[str], aborts: list[str],
             pauses: dict[str, int] | None = None) -> Reply:
        """Audio, pauses, ends and aborts of a link's streams; per stream what was not accepted.

        A stream's audio comes first, then its pause (the utterance ended,
        then that many samples were left out), then its end.
        Returns {"rejected": {stream: {code, message}}, "backlog_s": {stream: s}}:
        a stream missing from "rejected" had all its audio, pause and end accepted.
        `overloaded` means its backlog is full: send the same audio again later.
        """
        with self._lock:
            self._link(link).last_seen = time.monotonic()
        rejected: dict[str, Reply] = {}
        backlog: dict[str, float] = {}
        for stream_id, samples in audio.items():
            try:
                self.engine.feed(stream_id, samples)
                backlog[stream_id] = self.engine.backlog_s(stream_id)
            except EngineError as exc:
                rejected[stream_id] = error_reply(exc)
        for stream_id, gap in (pauses or {}).items():
            if stream_id in rejected:
                continue
            try:
                self.engine.pause(stream_id, gap)
            except EngineError as exc:
                rejected[stream_id] = error_reply(exc)
        for stream_id in ends:
            if stream_id in rejected:
                continue
            try:
                self.engine.end(stream_id)
            except EngineError as exc:
                rejected[stream_id] = error_reply(exc)
        for stream_id in aborts:
            self.abort(stream_id)
        return {"rejected": rejected, "backlog_s": backlog}

    def abort(self, stream_id: str) -> None:
        self.engine.abort(stream_id)
        with self._lock:
            self._forget(stream_id)

    async def events(self, link: str, wait_s: float) -> AsyncIterator[list[dict[str, Any]]]:
        """The link's events as they come, in batches; an empty batch at least every `wait_s` (liveness)."""
        with self._lock:
            outbox = self._link(link)
            outbox.attached = True
        try:
            while True:
                if not outbox.events:
                    try:
                        await asyncio.wait_for(outbox.wake.wait(), wait_s)
                    except asyncio.TimeoutError:
                        pass
                with self._lock:
                    events, outbox.events = outbox.events, []
                    outbox.wake.clear()
                    outbox.last_seen = time.monotonic()
                yield events
        finally:
            outbox.attached = False

    def stats(self) -> dict[str, Any]:
        return {"open_streams": self.engine.open_streams, "free_slots": self.engine.free_slots}

    def check(self) -> None:
        """Raise if the step thread is gone (the replica must then be replaced)."""
        if self.crash is not None:
            raise RuntimeError(f"the engine loop died: {self.crash!r}") from self.crash
        if not self._thread.is_alive() and not self._stop.is_set():
            raise RuntimeError("the engine loop thread is not running")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    # ------------------------------------------------------------ internals
    def _link(self, link: str) -> LinkOutbox:
        outbox = self._links.get(link)
        if outbox is None:
            outbox = self._links[link] = LinkOutbox(asyncio.get_running_loop())
        return outbox

    def _forget(self, stream_id: str) -> None:
        link = self._stream_link.pop(stream_id, None)
        if link is not None and link in self._links:
            self._links[link].streams.discard(stream_id)

    def _run(self) -> None:
        try:
            busy = False
            while not self._stop.is_set():
                if not busy:
                    self.engine.wait_for_work(_IDLE_WAIT_S)
                result = self.engine.step()
                busy = result.stats.batch > 0
                self._publish(result.events)
                self.on_step(result)
                self._abort_idle()
        except BaseException as exc:
            # Kept for check(), which fails the Serve health check so the replica is replaced.
            self.crash = exc
            log.exception("the engine loop died; the replica reports unhealthy")

    def _publish(self, events: list[Event]) -> None:
        woken = []
        with self._lock:
            for event in events:
                link = self._stream_link.get(event.stream_id)
                outbox = self._links.get(link) if link is not None else None
                if outbox is None:
                    continue
                if isinstance(event, PartialEvent):
                    # Only the newest partial of a stream matters to an ingest that has not read yet.
                    outbox.events = [e for e in outbox.events if not (e["type"] == "partial"
                                                                      and e["stream"] == event.stream_id)]
                outbox.events.append(event_to_dict(event))
                if isinstance(event, FinalEvent | ErrorEvent):
                    self._forget(event.stream_id)
                woken.append(outbox)
        for outbox in woken:
            outbox.loop.call_soon_threadsafe(outbox.wake.set)

    def _abort_idle(self) -> None:
        now = time.monotonic()
        with self._lock:
            idle = [(name, o) for name, o in self._links.items()
                    if not o.attached and now - o.last_seen > self.idle_timeout_s]
            for name, _ in idle:
                del self._links[name]
        for name, outbox in idle:
            if outbox.streams:
                log.warning("link %s: not heard from for %.0f s (ingest gone?), aborting its %d streams",
                            name, self.idle_timeout_s, len(outbox.streams))
            for stream_id in list(outbox.streams):
                self.abort(stream_id)
