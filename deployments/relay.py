"""Drives one Session against the model deployment: send audio, long-poll events, re-home.

Two tasks per stream: the sender moves received audio to the owning model
replica (and `end` after it), the poller long-polls that replica for events
and turns them into client frames. A call that finds its replica gone (the
actor died, or the router already sent it to a replica that answers
`unknown_stream` because the owner drained or was scaled down) re-homes the
stream: a new incarnation on another replica gets the committed text as
context and the uncommitted audio replayed (Session.rehome).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
from ray.exceptions import RayActorError
from ray.serve.exceptions import ReplicaUnavailableError
from ray.serve.handle import DeploymentHandle

from captions.session import CaptionSession
from captions.store import StreamStatus
from deployments import protocol
from deployments.config import IngestConfig
from deployments.metrics import IngestMetrics
from deployments.session import Session, SessionWord
from engine.features import SAMPLE_RATE

log = logging.getLogger("ray.serve")

Sink = Callable[[bytes], Awaitable[None]]
# Replica errors that mean "this stream's state is gone from where it was".
_LOST_CODES = {"unknown_stream"}
# The sender's pause when the model replica's backlog for the stream is full.
_BACKPRESSURE_WAIT_S = 0.1


class RelayError(Exception):
    """The stream cannot go on; `code` is sent to the client."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class SinkClosed(Exception):
    """The socket a sink wrote to is gone; the relay detaches it (the session stays resumable)."""


class _Lost(Exception):
    """The current incarnation's replica no longer has the stream."""


class Relay:
    """One client stream: its Session, the model calls, and where frames go (the socket, if attached)."""

    def __init__(self, session: Session, model: DeploymentHandle, cfg: IngestConfig, metrics: IngestMetrics) -> None:
        self.session = session
        self.model = model
        self.cfg = cfg
        self.metrics = metrics
        self.sink: Sink | None = None
        self.done = asyncio.Event()
        self.failure: RelayError | None = None
        self._audio = asyncio.Event()
        self._rehome_lock = asyncio.Lock()
        self._end_sent = -1  # incarnation that got `end`
        self._tasks: list[asyncio.Task] = []
        # The stream's captions bookkeeping (store, quota, viewers); the ingest sets
        # it and drops it once closed. Fed here, not through the sink, so words are
        # stored and viewers served while no socket is attached.
        self.captions: CaptionSession | None = None
        # The tenant owning the stream: only it may resume the session.
        self.tenant_id: str | None = None

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Open the first incarnation and start the tasks; RelayError if no replica takes it."""
        await self._open()
        self._tasks = [_spawn(self._send_loop(), self), _spawn(self._poll_loop(), self)]

    def push_audio(self, samples: np.ndarray) -> None:
        if self.session.ended:
            raise RelayError("bad_frame", "audio after end")
        if self.session.pending_s + len(samples) / SAMPLE_RATE > self.cfg.max_pending_s:
            raise RelayError(
                "overloaded",
                f"more than {self.cfg.max_pending_s:.1f} s of audio waiting for the model: "
                "send at real-time pace (or the service is overloaded)",
            )
        self.session.add_audio(samples)
        self._audio.set()

    def end(self) -> None:
        self.session.ended = True
        self._audio.set()

    def stop_tasks(self) -> None:
        """The stream is over (final, failure or abort): stop sending and polling."""
        for task in self._tasks:
            task.cancel()

    async def abort(self) -> None:
        """Drop the stream (grace period over, or the ingest is shutting down)."""
        self.stop_tasks()
        self.done.set()
        key = self.session.stream_key
        try:
            await self.model.options(session_id=key).abort.remote(key)
        except (RayActorError, ReplicaUnavailableError):
            pass  # its replica is gone, and the stream with it

    async def attach(self, sink: Sink) -> None:
        """A socket (new or resumed) receives frames from now on, starting with missed words."""
        self.sink = sink
        await self._flush_words()
        if self.session.finished:
            await self._send_final()
        elif self.failure is not None:
            await self._emit(protocol.error_frame(self.failure.code, str(self.failure)))

    def detach(self) -> None:
        self.sink = None

    async def close_captions(self) -> None:
        """Once per stream: ENDED after `final`, else INTERRUPTED (frees its slot, refunds unused audio)."""
        captions, self.captions = self.captions, None
        if captions is not None:
            await captions.close(StreamStatus.ENDED if self.session.finished else StreamStatus.INTERRUPTED)

    # ------------------------------------------------------------ model calls
    async def _call(self, method: str, *args: Any) -> dict[str, Any]:
        """A call on the current incarnation's replica; _Lost if the stream is not there."""
        key = self.session.stream_key
        try:
            reply = await getattr(self.model.options(session_id=key), method).remote(key, *args)
        except (RayActorError, ReplicaUnavailableError) as exc:
            log.warning("session %s: %s on %s failed: %s", self.session.session_id, method, key, type(exc).__name__)
            raise _Lost from exc
        error = reply.get("error")
        if error is not None and error["code"] in _LOST_CODES:
            raise _Lost
        return reply

    async def _open(self) -> None:
        session = self.session
        reply = await self._call("open", session.language_hint(), session.context())
        if "error" in reply:
            raise RelayError(reply["error"]["code"], reply["error"]["message"])
        log.info("session %s: stream %s opened on replica %s", session.session_id, session.stream_key, reply["replica"])

    async def _rehome(self, incarnation: int) -> None:
        """Move the stream to another replica, once per lost incarnation."""
        async with self._rehome_lock:
            if self.session.incarnation != incarnation:
                return
            if self.session.rehomes >= self.cfg.max_rehomes:
                raise RelayError("unavailable", "the stream lost its model replica too many times")
            self.session.rehome()
            self.metrics.rehomes.inc()
            self._audio.set()
            try:
                await self._open()
            except _Lost as exc:
                raise RelayError("unavailable", "no model replica could take the stream") from exc

    # ------------------------------------------------------------ the two loops
    async def _send_loop(self) -> None:
        session = self.session
        max_send = int(self.cfg.max_send_s * SAMPLE_RATE)
        while not self.done.is_set():
            incarnation = session.incarnation
            chunk = session.unsent(max_send)
            try:
                if len(chunk):
                    reply = await self._call("feed", chunk)
                    if incarnation != session.incarnation:
                        continue  # re-homed meanwhile: the replay resends it
                    code = reply.get("error", {}).get("code")
                    if code == "overloaded":
                        await asyncio.sleep(_BACKPRESSURE_WAIT_S)
                    elif code is None:
                        session.mark_sent(len(chunk))
                    else:
                        # stream_closed / bad_audio: the poller receives the stream's error event.
                        return
                elif session.ended and self._end_sent != incarnation:
                    await self._call("end")
                    self._end_sent = incarnation
                else:
                    self._audio.clear()
                    await self._audio.wait()
            except _Lost:
                await self._rehome(incarnation)

    async def _poll_loop(self) -> None:
        session = self.session
        while True:
            incarnation = session.incarnation
            try:
                reply = await self._call("poll", self.cfg.poll_wait_s)
            except _Lost:
                await self._rehome(incarnation)
                continue
            if incarnation != session.incarnation:
                continue
            if "error" in reply:
                raise RelayError(reply["error"]["code"], reply["error"]["message"])
            for event in reply["events"]:
                if event["type"] in ("words", "final"):
                    new = session.add_words(event["words"], event["language"], event["emitted_at"])
                    await self._publish_words(new)
                    await self._flush_words()
                if event["type"] == "partial":
                    await self._publish({"type": "partial", "text": event["text"]})
                    await self._emit(protocol.pack("partial", text=event["text"]))
                elif event["type"] == "final":
                    session.finished = True
                    await self._publish({"type": "final", **self._final_fields()})
                    # Before the client hears `final`: a transcript fetched right after it is complete.
                    await self.close_captions()
                    await self._send_final()
                    self.done.set()
                    return
                elif event["type"] == "error":
                    raise RelayError(event["code"], event["message"])

    # ------------------------------------------------------------ output
    async def _flush_words(self) -> None:
        if self.sink is None:
            return
        words = self.session.undelivered()
        if words:
            fields: dict[str, Any] = {
                "words": [w.as_dict() for w in words],
                "emitted_at": round(self.session.transcribed_s, 3),
            }
            if self.session.detected_language:
                fields["language"] = self.session.detected_language
            await self._emit(protocol.pack("words", **fields))

    def _final_fields(self) -> dict[str, Any]:
        session = self.session
        return {
            "session_id": session.session_id,
            "text": " ".join(w.text for w in session.words),
            "words": [w.as_dict() for w in session.words],
            "language": session.detected_language,
            "rehomes": session.rehomes,
        }

    async def _send_final(self) -> None:
        await self._emit(protocol.pack("final", **self._final_fields()))

    async def _publish_words(self, new: list[SessionWord]) -> None:
        """Store newly committed words (before any socket gets them) and hand them to viewers.

        `first_seq` is their index in the stream, so the same word is stored
        once whatever replays happen.
        """
        if self.captions is None or not new:
            return
        msg: dict[str, Any] = {"type": "words", "words": [w.as_dict() for w in new]}
        if self.session.detected_language:
            msg["language"] = self.session.detected_language
        await self.captions.on_message(msg, first_seq=len(self.session.words) - len(new))

    async def _publish(self, msg: dict[str, Any]) -> None:
        """A message for this stream's viewers (never waits on them)."""
        if self.captions is not None:
            await self.captions.on_message(msg)

    async def _emit(self, frame: bytes) -> None:
        if self.sink is None:
            return
        try:
            await self.sink(frame)
        except SinkClosed:
            # Words stay undelivered and `final` is sent again on resume.
            log.info("session %s: socket gone while sending, detached", self.session.session_id)
            self.sink = None


def _spawn(coro: Awaitable[None], relay: Relay) -> asyncio.Task:
    """A relay task whose failure ends the stream with an error frame (and is logged)."""

    async def guarded() -> None:
        try:
            await coro
        except RelayError as exc:
            if relay.failure is None and not relay.done.is_set():
                relay.failure = exc
                relay.metrics.errors.inc(tags={"code": exc.code})
                log.warning("session %s failed: %s: %s", relay.session.session_id, exc.code, exc)
                await relay._publish({"type": "error", "code": exc.code, "message": str(exc)})
                await relay._emit(protocol.error_frame(exc.code, str(exc)))
            relay.done.set()
        except asyncio.CancelledError:
            raise
        except BaseException:
            log.exception("session %s: relay task crashed", relay.session.session_id)
            relay.failure = RelayError("internal", "internal error")
            relay.done.set()
            raise

    # An empty context: inside a request, Serve copies the request's internal id
    # into every downstream call, and in 2.60 two concurrent calls with one id
    # (a stream's feed and poll) collide in the router's pending-request index:
    # one is never routed. Outside any request context each call gets its own id.
    loop = asyncio.get_running_loop()
    return contextvars.Context().run(loop.create_task, guarded())
