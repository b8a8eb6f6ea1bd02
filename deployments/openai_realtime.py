"""OpenAI's Realtime transcription WebSocket on the ingest: /v1/realtime?intent=transcription.

Each item (the audio between two commits) is one native stream: opened on
its first append (quota-checked like a native `start`), fed as audio
arrives, ended by `input_audio_buffer.commit`. So every item has the
tenant's key, limits, stored transcript and viewers of a native stream, and
its id is `item_<stream id>` (GET /v1/streams/<stream id>/transcript.vtt).
Words come out as `...input_audio_transcription.delta` while the audio is
still being appended, before the commit, as soon as the engine commits
them; `...completed` follows the commit. One item is transcribed at a time:
the next item's stream opens once the previous one completed, so a socket
holds one of the tenant's concurrent streams.

Items go through the ingest's voice activity gate like native streams. With
turn_detection {type: server_vad} the gate also drives the turns: speech
onsets send input_audio_buffer.speech_started, the end of an utterance
speech_stopped, and the item is committed right then (the client may still
commit earlier); the next append starts the next item.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np
from starlette.websockets import WebSocket, WebSocketDisconnect

from captions.errors import CaptionsError
from captions.tenants import Tenant
from deployments import openai_formats as fmt
from deployments import openai_realtime_events as events
from deployments.audio_in import AudioDecoder
from deployments.g711 import G711Decoder
from deployments.openai_api import StreamHost, authenticate, discard, model_ids, open_relay
from deployments.openai_errors import OpenAIError, from_service_error
from deployments.pacing import push_paced
from deployments.relay import Relay, RelayError, SinkClosed
from deployments.session import Session
from engine.errors import BadAudioError
from engine.features import SAMPLE_RATE
from engine.vad import Audio, Endpoint, Piece, VadConfig

log = logging.getLogger("ray.serve")

# WebSocket close codes as on /v1/stream: policy violation by default, retry later, internal.
_CLOSE_FOR = {"overloaded": 1013, "unavailable": 1013, "internal": 1011}
_CLOSE_POLICY = 1008
# Errors after which the socket cannot usefully go on; others are reported and the session continues.
_FATAL = {"unauthorized", "quota_exceeded", "overloaded", "unavailable", "internal"}
# Appended audio is decoded in pieces of at most this much.
_PIECE_S = 1.0
# Browsers cannot set headers on a WebSocket: OpenAI's browser clients offer
# ["realtime", "openai-insecure-api-key.KEY", "openai-beta.realtime-v1"] instead.
_REALTIME_SUBPROTOCOL = "realtime"
_KEY_SUBPROTOCOL = "openai-insecure-api-key."
_BETA_SUBPROTOCOL = "openai-beta.realtime-v1"
# Items' clean-up tasks, which may outlive their socket: the event loop holds tasks weakly.
_BACKGROUND: set[asyncio.Task] = set()


class InputAudio:
    """A socket's appended bytes to 16 kHz float32: G.711 is expanded to PCM16 first, then as /v1/stream."""

    def __init__(self, settings: events.Settings, max_chunk_s: float) -> None:
        law = {events.ULAW: "ulaw", events.ALAW: "alaw"}.get(settings.audio_format)
        self._g711 = None if law is None else G711Decoder(law)
        self._pcm = AudioDecoder(settings.sample_rate, "pcm_s16le", max_chunk_s)
        # Appends are decoded in pieces of _PIECE_S (whole samples), under engine.max_chunk_s.
        self.piece_bytes = int(settings.sample_rate * _PIECE_S) * (2 if self._g711 is None else 1)

    def decode(self, data: bytes) -> np.ndarray:
        """Samples (possibly none while the resampler fills), or BadAudioError."""
        return self._pcm.decode(data if self._g711 is None else self._g711.decode(data))


@dataclass
class Item:
    """One committed (or being appended) audio buffer and its native stream."""

    id: str
    relay: Relay
    audio_s: float = 0.0
    texts: list[str] = field(default_factory=list)  # committed words so far
    previous_id: str | None = None  # set on commit
    in_speech: bool = False  # server_vad: between speech_started and speech_stopped


class RealtimeRoute:
    """The WebSocket endpoint; one RealtimeConnection per socket."""

    def __init__(self, host: StreamHost) -> None:
        self.host = host
        self.model_ids = model_ids(host.cfg)

    async def serve(self, ws: WebSocket) -> None:
        offered = [p.strip() for p in ws.headers.get("sec-websocket-protocol", "").split(",") if p.strip()]
        # A browser must get one of the subprotocols it offered back, or it drops the socket.
        await ws.accept(subprotocol=_REALTIME_SUBPROTOCOL if _REALTIME_SUBPROTOCOL in offered else None)
        beta = "realtime=v1" in ws.headers.get("openai-beta", "") or _BETA_SUBPROTOCOL in offered
        conn = RealtimeConnection(self.host, ws, events.BETA if beta else events.GA, self.model_ids)
        try:
            tenant = await authenticate(self.host, _key_headers(ws.headers, offered), ws.query_params)
            if ws.query_params.get("intent") != "transcription":
                raise OpenAIError("bad_request", "only transcription sessions are served here: connect to "
                                  "/v1/realtime?intent=transcription", "intent")
            await conn.run(tenant)
        except OpenAIError as exc:
            await conn.fail(exc)
        except (WebSocketDisconnect, SinkClosed):
            pass  # the client closed the socket
        finally:
            await conn.close()


class RealtimeConnection:
    def __init__(self, host: StreamHost, ws: WebSocket, dialect: str, model_ids: tuple[str, ...]) -> None:
        self.host = host
        self.ws = ws
        self.dialect = dialect
        self.model_ids = model_ids
        self.session_id = "sess_" + secrets.token_hex(12)
        self.settings = events.Settings(model=model_ids[0])
        self.audio = self._input_audio()
        self.tenant: Tenant | None = None
        self.current: Item | None = None  # receiving audio
        self.committed: Item | None = None  # committed, not known to be complete yet
        self.last_item_id: str | None = None
        self._send_lock = asyncio.Lock()

    # ------------------------------------------------------------ the socket
    async def run(self, tenant: Tenant) -> None:
        """Client events until the socket closes (WebSocketDisconnect) or a fatal OpenAIError."""
        self.tenant = tenant
        await self.send(events.session_event("created", self.dialect, self.session_id, self.settings, self._vad))
        while True:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                raise WebSocketDisconnect(message.get("code", 1000))
            client_event_id = None
            try:
                event = _parse(message.get("text"))
                client_event_id = event.get("event_id") if isinstance(event.get("event_id"), str) else None
                await self.handle(event)
            except OpenAIError as exc:
                if exc.code in _FATAL:
                    raise
                self.host.metrics.errors.inc(tags={"code": exc.code})
                await self.send(events.error_event(exc, client_event_id))

    async def send(self, event: dict[str, Any]) -> None:
        async with self._send_lock:
            try:
                await self.ws.send_text(json.dumps(event, separators=(",", ":")))
            except (WebSocketDisconnect, RuntimeError, OSError) as exc:
                # Starlette raises RuntimeError after a close, uvicorn OSError subclasses.
                raise SinkClosed from exc

    async def fail(self, exc: OpenAIError) -> None:
        """A fatal error: tell the client, close the socket."""
        log.warning("realtime %s: %s: %s", self.session_id, exc.code, exc)
        self.host.metrics.errors.inc(tags={"code": exc.code})
        try:
            await self.send(events.error_event(exc))
            await self.ws.close(_CLOSE_FOR.get(exc.code, _CLOSE_POLICY))
        except (SinkClosed, RuntimeError):
            pass  # the client is already gone; nothing left to tell it

    async def close(self) -> None:
        """The socket is gone: uncommitted audio is dropped (as OpenAI does); a committed item may finish."""
        if self.current is not None:
            await discard(self.current.relay)
            self.current = None
        if self.committed is not None and not self.committed.relay.done.is_set():
            self._spawn(self._expire(self.committed.relay))

    # ------------------------------------------------------------ client events
    async def handle(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        if kind in ("session.update", "transcription_session.update"):
            await self.update(event.get("session"), events.BETA if kind.startswith("transcription") else events.GA)
        elif kind == "input_audio_buffer.append":
            await self.append(event.get("audio"))
        elif kind == "input_audio_buffer.commit":
            await self.commit()
        elif kind == "input_audio_buffer.clear":
            await self.clear()
        else:
            raise OpenAIError("unknown_type", f"event type {kind!r} is not served by a transcription session; "
                              "send session.update, input_audio_buffer.append, .commit or .clear", "type")

    async def update(self, session: Any, dialect: str) -> None:
        """New settings apply to the next item; the current one keeps its language and prompt."""
        settings = events.apply_update(self.settings, session, self.model_ids)
        if settings.server_vad and not self.host.cfg.ingest.vad.enabled:
            raise OpenAIError("bad_request", "server_vad needs the service's voice activity gate, which is off "
                              "(ingest.vad.enabled)", "session.turn_detection")
        format_changed = (settings.audio_format, settings.sample_rate) != (self.settings.audio_format,
                                                                            self.settings.sample_rate)
        self.settings = settings
        if format_changed:
            self.audio = self._input_audio()
        await self.send(events.session_event("updated", dialect, self.session_id, settings, self._vad))

    async def append(self, audio: Any) -> None:
        if not isinstance(audio, str):
            raise OpenAIError("bad_request", "'audio' must be base64-encoded audio", "audio")
        try:
            data = base64.b64decode(audio, validate=True)
        except binascii.Error as exc:
            raise OpenAIError("bad_audio", f"'audio' is not valid base64: {exc}", "audio") from exc
        piece = self.audio.piece_bytes
        for begin in range(0, len(data), piece):
            try:
                samples = self.audio.decode(data[begin : begin + piece])
            except BadAudioError as exc:
                raise OpenAIError(exc.code, str(exc), "audio") from exc
            if len(samples):
                await self._push(samples)

    async def commit(self) -> None:
        item = self.current
        if item is None or item.audio_s == 0 or item.relay.done.is_set():
            raise OpenAIError("input_audio_buffer_commit_empty",
                              "the input audio buffer is empty: append audio before committing")
        self.current = None
        item.previous_id, self.last_item_id = self.last_item_id, item.id
        for event in events.committed_events(self.dialect, item.id, item.previous_id):
            await self.send(event)
        item.relay.end()
        self.committed = item

    async def clear(self) -> None:
        """Drop the uncommitted audio; deltas already sent for it stay sent, it never completes."""
        item, self.current = self.current, None
        if item is not None:
            await discard(item.relay)
        await self.send(events.cleared_event())

    # ------------------------------------------------------------ items
    async def _push(self, samples: np.ndarray) -> None:
        item = await self._current_item()
        seconds = len(samples) / SAMPLE_RATE
        try:
            await item.relay.captions.on_audio(seconds)  # QuotaExceeded: the tenant's minutes are used up
            await push_paced(item.relay, samples, self.host.cfg.ingest.max_pending_s)
        except (CaptionsError, RelayError) as exc:
            raise from_service_error(exc) from exc
        item.audio_s += seconds
        self.host.metrics.audio_received(seconds)

    async def _current_item(self) -> Item:
        """The item receiving audio, opening its stream once the previous item has completed."""
        if self.current is not None and not self.current.relay.done.is_set():
            return self.current
        self.current = None  # its stream failed (the client got `...failed`): start a new item
        if self.committed is not None:
            await self.committed.relay.done.wait()
            self.committed = None
        session = Session(self.settings.language, self.host.cfg.ingest.max_replay_s, prompt=self.settings.prompt)
        relay = await open_relay(self.host, session, self.tenant)
        item = Item("item_" + session.session_id, relay)
        if self.settings.server_vad:
            relay.on_gated = lambda pieces, at: self._on_gated(item, pieces, at)
        await relay.attach(lambda frame: self._on_frame(item, frame))
        self._spawn(self._watch(relay))
        self.current = item
        return item

    async def _on_frame(self, item: Item, frame: bytes) -> None:
        """A native server frame of the item's stream, as Realtime events."""
        msg = msgpack.unpackb(frame, raw=False)
        if msg["type"] == "words" and msg["words"]:
            texts = [w["text"] for w in msg["words"]]
            await self.send(events.delta_event(item.id, fmt.delta_text(texts, first=not item.texts)))
            item.texts += texts
        elif msg["type"] == "final":
            for event in events.completed_events(self.dialect, item.id, item.previous_id, msg["text"], item.audio_s):
                await self.send(event)
        elif msg["type"] == "error":  # the relay counted it
            await self.send(events.failed_event(item.id, OpenAIError(msg["code"], msg["message"])))

    def _on_gated(self, item: Item, pieces: list[Piece], at: int) -> None:
        """server_vad: onsets and utterance ends of the item's audio, as the gate saw them."""
        turn_events, position, ended = [], at, False
        for piece in pieces:
            if isinstance(piece, Audio):
                if not item.in_speech:
                    item.in_speech = True
                    turn_events.append(events.speech_event("started", item.id, position / SAMPLE_RATE))
                position += len(piece.samples)
            elif isinstance(piece, Endpoint):
                if item.in_speech:
                    item.in_speech, ended = False, True
                    turn_events.append(events.speech_event("stopped", item.id, position / SAMPLE_RATE))
            else:
                position += piece.samples
        if turn_events:
            self._spawn(self._turn(item, turn_events, commit=ended))

    async def _turn(self, item: Item, turn_events: list[dict[str, Any]], commit: bool) -> None:
        try:
            for event in turn_events:
                await self.send(event)
            if commit and self.current is item:
                await self.commit()
        except SinkClosed:
            pass  # the socket is gone: close() drops or finishes the item

    async def _watch(self, relay: Relay) -> None:
        """Once an item's stream is over (final, failure, abort): stop its tasks, close its captions."""
        await relay.done.wait()
        relay.stop_tasks()
        await relay.close_captions()

    async def _expire(self, relay: Relay) -> None:
        """A committed item whose socket closed finishes (its transcript is stored) within the resume grace."""
        try:
            await asyncio.wait_for(relay.done.wait(), self.host.cfg.ingest.resume_grace_s)
        except TimeoutError:
            await discard(relay)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        _BACKGROUND.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task) -> None:
        _BACKGROUND.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("realtime %s: background task failed", self.session_id, exc_info=task.exception())

    def _input_audio(self) -> InputAudio:
        return InputAudio(self.settings, self.host.cfg.engine.max_chunk_s)

    @property
    def _vad(self) -> VadConfig:
        return self.host.cfg.ingest.vad


def _key_headers(headers: Mapping[str, str], offered: list[str]) -> Mapping[str, str]:
    """The socket's headers, or an Authorization header made from a key offered as a subprotocol."""
    keys = [p[len(_KEY_SUBPROTOCOL):] for p in offered if p.startswith(_KEY_SUBPROTOCOL)]
    return {"authorization": f"Bearer {keys[0]}"} if keys else headers


def _parse(text: str | None) -> dict[str, Any]:
    if text is None:
        raise OpenAIError("bad_frame", "Realtime events are JSON text frames, got a binary frame")
    try:
        event = json.loads(text)
    except ValueError as exc:
        raise OpenAIError("bad_frame", f"the event is not valid JSON: {exc}") from exc
    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
        raise OpenAIError("bad_frame", "an event must be a JSON object with a string 'type'", "type")
    return event
