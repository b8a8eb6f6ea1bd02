"""The ingest deployment: Starlette ASGI app as Serve ingress, CPU only.

    WebSocket /v1/stream     msgpack frames (docs/protocol.md)
    POST      /v1/transcribe a whole audio file -> JSON transcript
    GET       /healthz
    GET       /metrics       per-tenant usage counters of this replica (Prometheus text)
    POST      /v1/audio/transcriptions, GET /v1/models, WebSocket /v1/realtime
                             OpenAI's transcription API (deployments/openai_api.py, docs/openai.md)
    ...                      the captions routes: page, transcripts, viewers (docs/captions.md)

Every stream and transcription needs a tenant's API key (Bearer header or
?key=); it belongs to that tenant, counts against its quotas, and its
committed words are stored in the transcript database.

Each socket holds one max_ongoing_requests slot for its life, so ingest
replicas are sized for many sockets in serve_config.yaml. Sessions whose
socket dropped stay here for `resume_grace_s`.
"""

from __future__ import annotations

import asyncio
import io
import logging
import secrets
from typing import Any

import numpy as np
import soundfile
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from captions.errors import BadRequest, CaptionsError, UnknownStream
from captions.fanout import CaptionHub
from captions.http import caption_routes, error_response, http_exception_response
from captions.quota import QuotaLedger
from captions.session import CaptionSession
from captions.store import StreamStatus, TranscriptStore, check_id
from captions.tenants import Authenticator, Tenant
from captions.writer import WordWriter
from deployments import protocol
from deployments.audio_files import to_engine_audio
from deployments.audio_in import AudioDecoder
from deployments.config import ServiceConfig
from deployments.links import ModelLinks
from deployments.vad_worker import VadWorker
from deployments.metrics import IngestMetrics
from deployments.openai_api import OpenAIRoutes
from deployments.openai_realtime import RealtimeRoute
from deployments.outlive_disconnect import OutliveDisconnect
from deployments.relay import Relay, RelayError, Sink, SinkClosed
from deployments.session import Session, SessionWord
from engine.core import set_threads
from engine.errors import BadAudioError
from engine.features import SAMPLE_RATE

log = logging.getLogger("ray.serve")

# WebSocket close codes (RFC 6455): normal, policy violation, too big, internal, try again later.
CLOSE_NORMAL, CLOSE_POLICY, CLOSE_TOO_BIG, CLOSE_INTERNAL, CLOSE_RETRY = 1000, 1008, 1009, 1011, 1013
_CLOSE_FOR = {"frame_too_large": CLOSE_TOO_BIG, "overloaded": CLOSE_RETRY, "unavailable": CLOSE_RETRY,
              "internal": CLOSE_INTERNAL}
# Largest file POST /v1/transcribe accepts.
MAX_UPLOAD_BYTES = 64 * 1024 * 1024
_HTTP_STATUS = {"overloaded": 503, "unavailable": 503, "internal": 500, "too_large": 413}


@serve.deployment(name="Ingest")
@serve.ingress()
class Ingest:
    def __init__(self, model: DeploymentHandle, args: dict[str, Any]) -> None:
        self.cfg = ServiceConfig.from_args(args)
        self.model = model
        # This replica's links to the model replicas: every stream's audio and events travel on them.
        self.links = ModelLinks(model, self.cfg.ingest)
        vad = self.cfg.ingest.vad
        self.vad = VadWorker(vad, self.cfg.ingest.vad_tick_s) if vad.enabled else None
        # The ingest shares its cores with other processes: one torch thread (VAD, resampling).
        set_threads(1)
        self.metrics = IngestMetrics()
        # Sessions by id: live ones and, for resume_grace_s, those whose socket dropped.
        self.sessions: dict[str, Relay] = {}
        self.open_sockets = 0
        # The captions layer (docs/captions.md): $CAPTIONS_DB_URL, $CAPTIONS_KEYS_FILE.
        self.store = TranscriptStore()
        self.auth = Authenticator.from_file()
        self.ledger = QuotaLedger(self.store)
        self.hub = CaptionHub()
        self.writer = WordWriter(self.store)

    def __serve_build_asgi_app__(self) -> Starlette:
        return Starlette(routes=[
            WebSocketRoute("/v1/stream", self.stream),
            Route("/v1/transcribe", self.transcribe, methods=["POST"]),
            Route("/healthz", self.healthz, methods=["GET"]),
            Route("/metrics", self.tenant_metrics, methods=["GET"]),
            *caption_routes(self.store, self.auth, self.hub),
            *OpenAIRoutes(self).routes(),
            WebSocketRoute("/v1/realtime", RealtimeRoute(self).serve),
        ], exception_handlers={HTTPException: http_exception_response}, middleware=[Middleware(OutliveDisconnect)])

    async def healthz(self, request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "sessions": len(self.sessions)})

    async def tenant_metrics(self, request: Request) -> Response:
        # captions/metrics.py counts in prometheus_client's default registry, which
        # Ray's metrics agent does not export; the engine figures go through Ray.
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    async def _authenticate(self, headers: Any, query: Any) -> Tenant:
        """The key's tenant, or Unauthorized (scrypt runs in the thread pool)."""
        return await run_in_threadpool(self.auth.authenticate, headers, query)

    # ------------------------------------------------------------ WebSocket
    async def stream(self, ws: WebSocket) -> None:
        await ws.accept()
        send_lock = asyncio.Lock()

        async def sink(frame: bytes) -> None:
            async with send_lock:
                try:
                    await ws.send_bytes(frame)
                except (WebSocketDisconnect, RuntimeError, OSError) as exc:
                    # Starlette raises RuntimeError after a close, uvicorn OSError subclasses.
                    raise SinkClosed from exc

        self.open_sockets += 1
        self.metrics.sockets.set(self.open_sockets)
        relay: Relay | None = None
        displaced: asyncio.Event | None = None
        try:
            tenant = await self._authenticate(ws.headers, ws.query_params)
            relay, decoder = await self._handshake(ws, sink, tenant)
            displaced = relay.displaced
            await self._pump(ws, relay, decoder, displaced)
        except (protocol.ProtocolError, RelayError, CaptionsError) as exc:
            if displaced is not None and displaced.is_set():
                return  # another socket has the session: this one's troubles are not the stream's
            await self._fail(ws, sink, exc.code, str(exc), relay)
            return
        except WebSocketDisconnect:
            if displaced is not None and displaced.is_set():
                return
            if relay is not None and (not relay.done.is_set() or relay.sink is None):
                self._park(relay)
            elif relay is not None:
                self._forget(relay)
                await relay.close_captions()
            return
        finally:
            self.open_sockets -= 1
            self.metrics.sockets.set(self.open_sockets)
        if displaced is not None and displaced.is_set():
            log.info("session %s: an earlier socket closed (a resume took over)", relay.session.session_id)
            await _close_quietly(ws, CLOSE_NORMAL)
            return
        if relay.sink is None:
            self._park(relay)  # finished, but the client did not get it all: resumable
            return
        if relay.done.is_set():
            self._forget(relay)
            await relay.close_captions()
            code = CLOSE_NORMAL if relay.failure is None else _CLOSE_FOR.get(relay.failure.code, CLOSE_POLICY)
            await ws.close(code)

    async def _handshake(self, ws: WebSocket, sink: Sink, tenant: Tenant) -> tuple[Relay, AudioDecoder]:
        wait_s = self.cfg.ingest.handshake_timeout_s
        try:
            first = await asyncio.wait_for(_receive(ws), wait_s)
        except asyncio.TimeoutError:
            raise protocol.ProtocolError("idle_timeout", f"no 'start' within {wait_s:.0f} s") from None
        try:
            frame = protocol.parse_client_frame(first, self.cfg.ingest.max_frame_bytes)
        except protocol.ProtocolError as exc:
            if exc.fatal:
                raise
            # An unknown type is skipped once a stream runs; before `start` it is just not `start`.
            raise protocol.ProtocolError("bad_frame", f"the first frame must be 'start': {exc}") from exc
        if not isinstance(frame, protocol.Start):
            raise protocol.ProtocolError("bad_frame", "the first frame must be 'start'")
        decoder = AudioDecoder(frame.sample_rate, frame.encoding, self.cfg.engine.max_chunk_s)
        if frame.resume is not None and frame.resume.session_id in self.sessions:
            relay = self._resume(frame.resume, tenant)
        elif frame.resume is not None:
            relay = await self._resume_from_store(frame.resume, tenant, frame.language)
            self.sessions[relay.session.session_id] = relay
        else:
            session = Session(frame.language, self.cfg.ingest.max_replay_s)
            relay = await self._open_relay(session, tenant)
            self.sessions[relay.session.session_id] = relay
        session = relay.session
        ready: dict[str, Any] = {"session_id": session.session_id, "resume_token": session.resume_token}
        if frame.resume is not None:
            # The client re-sends its audio from here (it kept what was not acknowledged).
            ready["resume_from_s"] = round(session.held_s, 4)
        await sink(protocol.pack("ready", **ready))
        await relay.attach(sink)
        log.info("session %s: socket attached (%s)", session.session_id, "resumed" if frame.resume else "new")
        return relay, decoder

    async def _open_relay(self, session: Session, tenant: Tenant, resume: bool = False) -> Relay:
        """A started relay whose stream belongs to `tenant`: QuotaExceeded before any model replica is asked.

        resume: the stream exists in the store (continued from another ingest replica).
        """
        relay = Relay(session, self.links, self.cfg.ingest, self.metrics, self.vad)
        relay.tenant_id = tenant.id
        relay.captions = await CaptionSession.start(
            self.store, self.ledger, self.hub, self.writer, tenant, session.session_id, session.language,
            resume=resume, resume_token=None if resume else session.resume_token,
        )
        try:
            await relay.start()
        except RelayError:
            await relay.close_captions()
            raise
        return relay

    def _resume(self, resume: protocol.Resume, tenant: Tenant) -> Relay:
        relay = self.sessions.get(resume.session_id)
        # Another tenant's session is answered exactly like a missing one: ids do not leak.
        if (
            relay is None
            or relay.tenant_id != tenant.id
            or not secrets.compare_digest(relay.session.resume_token, resume.token)
        ):
            raise protocol.ProtocolError("resume_failed", "no resumable session with this id and token")
        if relay.sink is not None:
            log.info("session %s: resumed while a socket is attached: the new one takes over",
                     relay.session.session_id)
        if resume.words is not None:
            relay.session.delivered = min(resume.words, len(relay.session.words))
        return relay

    async def _resume_from_store(self, resume: protocol.Resume, tenant: Tenant, language: str | None) -> Relay:
        """A session this replica does not hold (its ingest replica was lost): continue it from the store.

        Its committed words come from the database; the client re-sends the
        audio after the last stored word (`ready.resume_from_s`), and a new
        incarnation on a model replica continues with that text as context.
        """
        failed = protocol.ProtocolError("resume_failed", "no resumable session with this id and token")
        try:
            check_id(resume.session_id)
            matches = await run_in_threadpool(self.store.resume_token_matches, tenant.id, resume.session_id,
                                              resume.token)
            record = await run_in_threadpool(self.store.stream, tenant.id, resume.session_id)
        except (UnknownStream, BadRequest):
            raise failed from None
        if not matches or record.status is StreamStatus.ENDED:
            raise failed
        stored = await run_in_threadpool(self.store.words, tenant.id, resume.session_id)
        words = [SessionWord(w.text, w.start, w.end, w.utterance_end) for w in stored]
        session = Session.from_store(resume.session_id, resume.token, language or record.language,
                                     self.cfg.ingest.max_replay_s, words, resume.words)
        log.info("session %s: resumed from the store with %d words at %.2f s", session.session_id, len(words),
                 session.held_s)
        return await self._open_relay(session, tenant, resume=True)

    async def _pump(self, ws: WebSocket, relay: Relay, decoder: AudioDecoder, displaced: asyncio.Event) -> None:
        """Client frames -> relay, until the relay is done (final or failure).

        Only audio (or `end`) counts as activity: a socket that sends nothing, or
        only frames that are refused, for idle_timeout_s is closed (`idle_timeout`).
        """
        done = asyncio.ensure_future(relay.done.wait())
        taken = asyncio.ensure_future(displaced.wait())
        idle_s = self.cfg.ingest.idle_timeout_s
        active_at = asyncio.get_running_loop().time()
        receive: asyncio.Future | None = None
        try:
            while True:
                if receive is None:
                    receive = asyncio.ensure_future(_receive(ws))
                # After `end` the stream is finishing: no idle limit while its last words come.
                left = None if relay.session.ended else active_at + idle_s - asyncio.get_running_loop().time()
                await asyncio.wait({receive, done, taken}, timeout=left, return_when=asyncio.FIRST_COMPLETED)
                if taken.done():
                    receive.cancel()
                    return
                if done.done():
                    receive.cancel()
                    relay.stop_tasks()
                    return
                if not receive.done():
                    receive.cancel()
                    raise protocol.ProtocolError("idle_timeout", f"no audio for {idle_s:.0f} s")
                message, receive = receive.result(), None
                try:
                    frame = protocol.parse_client_frame(message, self.cfg.ingest.max_frame_bytes)
                except protocol.ProtocolError as exc:
                    if exc.fatal:
                        raise
                    self.metrics.errors.inc(tags={"code": exc.code})
                    await relay.sink(protocol.error_frame(exc.code, str(exc)))
                    continue
                if isinstance(frame, protocol.Audio | protocol.End):
                    active_at = asyncio.get_running_loop().time()
                if isinstance(frame, protocol.Audio):
                    if relay.session.ended:  # checked here too, so an empty frame is refused as well
                        raise protocol.ProtocolError("bad_frame", "audio after end")
                    try:
                        samples = decoder.decode(frame.data)
                    except BadAudioError as exc:
                        raise RelayError(exc.code, str(exc)) from exc
                    if len(samples):
                        if relay.captions is not None:
                            await relay.captions.on_audio(len(samples) / SAMPLE_RATE)  # QuotaExceeded
                        relay.push_audio(samples)
                        self.metrics.audio_received(len(samples) / SAMPLE_RATE)
                elif isinstance(frame, protocol.End):
                    relay.end()
                else:
                    raise protocol.ProtocolError("bad_frame", "'start' was already sent")
        finally:
            done.cancel()
            taken.cancel()
            if receive is not None:
                receive.cancel()

    async def _fail(self, ws: WebSocket, sink: Sink, code: str, message: str, relay: Relay | None) -> None:
        log.warning("stream %s: %s: %s", relay.session.session_id if relay else "-", code, message)
        self.metrics.errors.inc(tags={"code": code})
        try:
            await sink(protocol.error_frame(code, message))
            await ws.close(_CLOSE_FOR.get(code, CLOSE_POLICY))
        except (WebSocketDisconnect, RuntimeError):
            pass  # the client is already gone; nothing left to tell it
        if relay is not None:
            self._forget(relay)
            if not relay.done.is_set():
                await relay.abort()
            await relay.close_captions()

    def _park(self, relay: Relay) -> None:
        """The socket dropped mid-stream: keep the session for resume_grace_s."""
        relay.detach()
        log.info("session %s: socket dropped, resumable for %.0f s", relay.session.session_id,
                 self.cfg.ingest.resume_grace_s)

        async def expire() -> None:
            await asyncio.sleep(self.cfg.ingest.resume_grace_s)
            if relay.sink is None and relay.session.session_id in self.sessions:
                log.info("session %s: not resumed, dropped", relay.session.session_id)
                self._forget(relay)
                if not relay.done.is_set():
                    await relay.abort()
                await relay.close_captions()

        task = asyncio.get_running_loop().create_task(expire())
        task.add_done_callback(_log_failure)

    def _forget(self, relay: Relay) -> None:
        self.sessions.pop(relay.session.session_id, None)

    # ------------------------------------------------------------ whole file
    async def transcribe(self, request: Request) -> JSONResponse:
        try:
            tenant = await self._authenticate(request.headers, request.query_params)
        except CaptionsError as exc:
            return error_response(exc)
        body = await _read_upload(request)
        if body is None:
            return _error_response("too_large", f"upload exceeds {MAX_UPLOAD_BYTES} bytes")
        try:
            samples = _read_audio(body)
        except BadAudioError as exc:
            return _error_response(exc.code, str(exc))
        language = request.query_params.get("language")
        session = Session(None if language in (None, "auto") else language, self.cfg.ingest.max_replay_s)
        relay: Relay | None = None
        try:
            relay = await self._open_relay(session, tenant)
            await relay.captions.on_audio(len(samples) / SAMPLE_RATE)  # the whole file, before the model sees it
            await _feed_file(relay, samples, self.cfg.ingest.max_pending_s)
            await relay.done.wait()
        except RelayError as exc:
            return _error_response(exc.code, str(exc))
        except CaptionsError as exc:
            return error_response(exc)
        finally:
            if relay is not None:
                relay.stop_tasks()
                await relay.close_captions()
        if relay.failure is not None:
            return _error_response(relay.failure.code, str(relay.failure))
        session = relay.session
        return JSONResponse({
            "session_id": session.session_id,
            "text": " ".join(w.text for w in session.words),
            "words": [w.as_dict() for w in session.words],
            "language": session.detected_language,
            "audio_s": round(len(samples) / SAMPLE_RATE, 3),
        })


def _log_failure(task: asyncio.Task) -> None:
    """Background tasks must not fail silently."""
    if not task.cancelled() and task.exception() is not None:
        log.error("background task failed", exc_info=task.exception())


async def _close_quietly(ws: WebSocket, code: int) -> None:
    try:
        await ws.close(code)
    except (WebSocketDisconnect, RuntimeError, OSError):
        pass  # already gone


async def _receive(ws: WebSocket) -> bytes | str | None:
    message = await ws.receive()
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1000))
    return message.get("bytes") if message.get("bytes") is not None else message.get("text")


async def _feed_file(relay: Relay, samples: np.ndarray, max_pending_s: float) -> None:
    """Push a whole file as fast as the model takes it, keeping under the pending bound."""
    step = int(SAMPLE_RATE * max_pending_s / 4)
    for begin in range(0, len(samples), step):
        while relay.session.pending_s > max_pending_s / 2 and not relay.done.is_set():
            await asyncio.sleep(0.05)
        if relay.done.is_set():
            return
        relay.push_audio(samples[begin : begin + step])
    relay.end()


async def _read_upload(request: Request) -> bytes | None:
    """The body, or None as soon as it is known to be over MAX_UPLOAD_BYTES (declared or read so far):
    an oversized upload is never held whole in memory, nor waited for."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_UPLOAD_BYTES:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_UPLOAD_BYTES:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _read_audio(body: bytes) -> np.ndarray:
    try:
        data, rate = soundfile.read(io.BytesIO(body), dtype="float32", always_2d=True)
    except (RuntimeError, soundfile.LibsndfileError) as exc:
        raise BadAudioError(f"cannot read the uploaded audio: {exc}") from exc
    if len(data) == 0:
        raise BadAudioError("the uploaded audio is empty")
    return to_engine_audio(data.mean(axis=1), rate)


def _error_response(code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=_HTTP_STATUS.get(code, 400))
