"""One client stream on the ingest: its Session, its link to a model replica, where frames go.

The relay owns the stream's lifecycle. Audio from the socket goes into the
Session; the stream's Link (deployments/links.py) takes it from there to the
model replica, batched with every other stream on that replica, and hands
back the stream's events, which one handler task per stream turns into
client frames, stored words and viewer messages, in order and without
making the link wait for a slow socket. When the link loses its replica the
handler re-homes the stream: a new incarnation on another replica gets the
committed text as context and the uncommitted audio replayed
(Session.rehome).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from captions.session import CaptionSession
from captions.store import StreamStatus
from deployments import protocol
from deployments.config import IngestConfig
from deployments.links import Link, ModelLinks, NoReplica
from deployments.metrics import IngestMetrics
from deployments.session import Session, SessionWord
from deployments.vad_worker import VadWorker
from engine.features import SAMPLE_RATE
from engine.vad import GateState, Piece

log = logging.getLogger("ray.serve")

Sink = Callable[[bytes], Awaitable[None]]


class RelayError(Exception):
    """The stream cannot go on; `code` is sent to the client."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class SinkClosed(Exception):
    """The socket a sink wrote to is gone; the relay detaches it (the session stays resumable)."""


class Relay:
    """One client stream: its Session, its link, and where frames go (the socket, if attached)."""

    def __init__(self, session: Session, links: ModelLinks, cfg: IngestConfig, metrics: IngestMetrics,
                 vad: VadWorker | None = None) -> None:
        self.session = session
        self.links = links
        # With a VAD worker, audio goes through the stream's gate before the model sees it.
        self.vad = vad
        if vad is not None:
            session.gate = GateState()
        self.cfg = cfg
        self.metrics = metrics
        self.link: Link | None = None
        self.sink: Sink | None = None
        # Set when another socket takes the session over (see attach).
        self.displaced = asyncio.Event()
        # Told what the voice activity gate let out (pieces, and the session sample they start at).
        self.on_gated: Callable[[list[Piece], int], None] | None = None
        self.done = asyncio.Event()
        self.failure: RelayError | None = None
        # Events of the stream's link (dicts), or the link the stream lost.
        self._inbox: asyncio.Queue[dict[str, Any] | Link] = asyncio.Queue()
        self._handler: asyncio.Task | None = None
        # The stream's captions bookkeeping (store, quota, viewers); the ingest sets
        # it and drops it once closed. Fed here, not through the sink, so words are
        # stored and viewers served while no socket is attached.
        self.captions: CaptionSession | None = None
        # The tenant owning the stream: only it may resume the session.
        self.tenant_id: str | None = None

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Open the first incarnation and start the handler; RelayError if no replica takes it."""
        await self._place()
        self._handler = _spawn(self._handle(), self)

    def push_audio(self, samples: np.ndarray) -> None:
        if self.session.ended:
            raise RelayError("bad_frame", "audio after end")
        if self.session.pending_s + len(samples) / SAMPLE_RATE > self.cfg.max_pending_s:
            raise RelayError(
                "overloaded",
                f"more than {self.cfg.max_pending_s:.1f} s of audio waiting for the model: "
                "send at real-time pace (or the service is overloaded)",
            )
        if self.vad is None:
            self.session.add_audio(samples)
            self.nudge()
        else:
            self.session.ungated.append(samples)
            self.vad.mark(self)

    def end(self) -> None:
        self.session.ended = True
        if self.vad is not None:
            self.vad.mark(self)
        self.nudge()

    def gated(self, pieces: list[Piece]) -> None:
        """What the voice activity gate let out goes into the session (and to `on_gated`)."""
        at = self.session.received
        self.session.add_pieces(pieces)
        if self.on_gated is not None and pieces:
            self.on_gated(pieces, at)

    def nudge(self) -> None:
        """The session has something new for the model."""
        if self.link is not None:
            self.link.nudge()

    def fail(self, code: str, message: str) -> None:
        """End the stream with an error from outside its model replica."""
        self._inbox.put_nowait({"stream": self.session.stream_key, "type": "error", "code": code, "message": message})

    def stop_tasks(self) -> None:
        """The stream is over (final, failure or abort): stop handling its events."""
        if self._handler is not None:
            self._handler.cancel()
        if self.link is not None:
            self.link.remove(self)

    async def abort(self) -> None:
        """Drop the stream (grace period over, or the ingest is shutting down)."""
        if self._handler is not None:
            self._handler.cancel()
        self.done.set()
        if self.link is not None:
            self.link.remove(self, abort=True)

    async def attach(self, sink: Sink) -> None:
        """A socket (new or resumed) receives frames from now on, starting with missed words.

        A socket still attached is displaced (its `displaced` event is set): a
        resume with the right token wins, since the old socket may be half-dead
        (its proxy died) and the ingest would notice only much later.
        """
        if self.sink is not None:
            self.displaced.set()
            self.displaced = asyncio.Event()
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

    # ------------------------------------------------------------ from the link
    def on_event(self, event: dict[str, Any]) -> None:
        self._inbox.put_nowait(event)

    def lost(self, link: Link) -> None:
        """The link's replica no longer has this stream: re-home it (in the handler, in order)."""
        link.remove(self)
        self._inbox.put_nowait(link)

    # ------------------------------------------------------------ the handler
    async def _handle(self) -> None:
        while True:
            item = await self._inbox.get()
            if isinstance(item, Link):
                if item is self.link:
                    await self._rehome()
                continue
            if item["stream"] != self.session.stream_key:
                continue  # an earlier incarnation's, already replayed elsewhere
            if await self._on_event(item):
                return

    async def _on_event(self, event: dict[str, Any]) -> bool:
        """Apply one model event; True once the stream is over."""
        session = self.session
        kind = event["type"]
        if kind in ("words", "final"):
            new = session.add_words(event["words"], event["language"], event["emitted_at"],
                                    event.get("utterance_end", False))
            await self._publish_words(new)
            await self._flush_words()
        if kind == "partial":
            await self._publish({"type": "partial", "text": event["text"]})
            await self._emit(protocol.pack("partial", text=event["text"]))
        elif kind == "final":
            session.finished = True
            await self._publish({"type": "final", **self._final_fields()})
            # Before the client hears `final`: a transcript fetched right after it is complete.
            await self.close_captions()
            await self._send_final()
            self._leave()
            return True
        elif kind == "error":
            raise RelayError(event["code"], event["message"])
        return False

    async def _place(self, avoid: str | None = None) -> None:
        try:
            self.link = await self.links.place(self, avoid)
        except NoReplica as exc:
            raise RelayError(exc.code, str(exc)) from exc
        self.link.nudge()

    async def _rehome(self) -> None:
        """Move the stream to another replica: a new incarnation, the uncommitted audio replayed."""
        if self.session.rehomes >= self.cfg.max_rehomes:
            raise RelayError("unavailable", "the stream lost its model replica too many times")
        lost = self.link.replica if self.link is not None else None
        self.link = None
        self.session.rehome()
        self.metrics.rehomes.inc()
        await self._place(avoid=lost)

    def _leave(self) -> None:
        self.done.set()
        if self.link is not None:
            self.link.remove(self)

    # ------------------------------------------------------------ output
    async def _flush_words(self) -> None:
        if self.sink is None:
            return
        session = self.session
        groups = _utterances(session.undelivered())
        for i, words in enumerate(groups):
            fields: dict[str, Any] = {
                "words": [w.as_dict() for w in words],
                "emitted_at": round(session.transcribed_s, 3),
            }
            if words[-1].utterance_end:
                fields["utterance_end"] = True
            if session.detected_language:
                fields["language"] = session.detected_language
            if i == len(groups) - 1 and session.replay_start > session.acked:
                # The words are stored: the client may forget the audio before the last one's end.
                session.acked = session.replay_start
                fields["ack_s"] = round(session.acked / SAMPLE_RATE, 4)
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
        if new[-1].utterance_end:
            msg["utterance_end"] = True
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


def _utterances(words: list[SessionWord]) -> list[list[SessionWord]]:
    """Words split after each utterance end: one `words` frame never spans an endpoint."""
    groups: list[list[SessionWord]] = [[]]
    for word in words:
        groups[-1].append(word)
        if word.utterance_end:
            groups.append([])
    return [g for g in groups if g]


def _spawn(coro: Awaitable[None], relay: Relay) -> asyncio.Task:
    """The relay's handler: a failure ends the stream with an error frame (and is logged).

    An empty context, as for the links' tasks (links.py): re-homing makes
    handle calls, which must not carry the id of the request that started
    the stream.
    """

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
            relay._leave()
        except asyncio.CancelledError:
            raise
        except BaseException:
            log.exception("session %s: relay handler crashed", relay.session.session_id)
            relay.failure = RelayError("internal", "internal error")
            relay._leave()
            raise

    loop = asyncio.get_running_loop()
    return contextvars.Context().run(loop.create_task, guarded())
