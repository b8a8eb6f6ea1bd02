"""OpenAI's transcription HTTP API on the ingest (docs/openai.md).

    POST /v1/audio/transcriptions   multipart: file, model, language, prompt, response_format,
                                    timestamp_granularities[], stream (Server-Sent Events)
    GET  /v1/models                 the one served model
    GET  /v1/models/{id}

A transcription is a stream like any other: the tenant's key, its quotas
(the whole file is charged before the model hears it), its stored
transcript (the `x-stream-id` response header names it) and viewers. The
ingest provides the streams (`StreamHost`); nothing here talks to Ray.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, Protocol

import msgpack
import numpy as np
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from captions.errors import CaptionsError
from captions.tenants import Tenant
from deployments import openai_formats as fmt
from deployments import protocol
from deployments.audio_files import decode_file
from deployments.config import ServiceConfig
from deployments.metrics import IngestMetrics
from deployments.openai_errors import OpenAIError, from_service_error
from deployments.openai_params import TranscriptionParams, parse_transcription_form, served_model_id
from deployments.pacing import push_paced
from deployments.relay import Relay, RelayError
from deployments.session import Session
from engine.errors import BadAudioError
from engine.features import SAMPLE_RATE

log = logging.getLogger("ray.serve")

# OpenAI's own upload limit is 25 MB; this matches POST /v1/transcribe instead.
MAX_UPLOAD_BYTES = 64 * 1024 * 1024
# Multipart headers and the small fields around the file.
_FORM_OVERHEAD_BYTES = 64 * 1024
STREAM_ID_HEADER = "x-stream-id"

Handler = Callable[[Request], Awaitable[Response]]


class StreamHost(Protocol):
    """What the ingest provides: its config, metrics, key checks and quota-checked, started relays."""

    cfg: ServiceConfig
    metrics: IngestMetrics

    async def _authenticate(self, headers: Any, query: Any) -> Tenant: ...

    async def _open_relay(self, session: Session, tenant: Tenant) -> Relay: ...


def model_ids(cfg: ServiceConfig) -> tuple[str, ...]:
    """The served id first; the model string as configured is accepted too."""
    served = served_model_id(cfg.model)
    return (served,) if served == cfg.model else (served, cfg.model)


async def authenticate(host: StreamHost, headers: Any, query: Any) -> Tenant:
    try:
        return await host._authenticate(headers, query)
    except CaptionsError as exc:
        raise from_service_error(exc) from exc


async def open_relay(host: StreamHost, session: Session, tenant: Tenant) -> Relay:
    """A started relay; 429 (concurrent streams: may free up, so retrying is allowed) or 503."""
    try:
        return await host._open_relay(session, tenant)
    except (CaptionsError, RelayError) as exc:
        raise from_service_error(exc) from exc


async def discard(relay: Relay) -> None:
    """The stream is over or abandoned: stop its tasks, drop it from the model replica, close its captions."""
    relay.stop_tasks()
    if not relay.done.is_set():
        await relay.abort()
    await relay.close_captions()


class OpenAIRoutes:
    def __init__(self, host: StreamHost) -> None:
        self.host = host
        self.model_ids = model_ids(host.cfg)

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/v1/audio/transcriptions", self._answer(self.transcriptions), methods=["POST"]),
            Route("/v1/models", self._answer(self.models), methods=["GET"]),
            Route("/v1/models/{model_id:path}", self._answer(self.model), methods=["GET"]),
        ]

    def _answer(self, handler: Handler) -> Handler:
        """OpenAIError -> its JSON answer (counted like the native error frames)."""

        async def answer(request: Request) -> Response:
            try:
                return await handler(request)
            except OpenAIError as exc:
                self.host.metrics.errors.inc(tags={"code": exc.code})
                log.info("%s %s: %s: %s", request.method, request.url.path, exc.code, exc)
                return exc.response()

        return answer

    # ------------------------------------------------------------ models
    async def models(self, request: Request) -> Response:
        await authenticate(self.host, request.headers, request.query_params)
        return JSONResponse(fmt.models_list(self.model_ids[0]))

    async def model(self, request: Request) -> Response:
        await authenticate(self.host, request.headers, request.query_params)
        if request.path_params["model_id"] not in self.model_ids:
            raise OpenAIError("model_not_found", f"the model {request.path_params['model_id']!r} is not served here")
        return JSONResponse(fmt.model_object(self.model_ids[0]))

    # ------------------------------------------------------------ transcriptions
    async def transcriptions(self, request: Request) -> Response:
        tenant = await authenticate(self.host, request.headers, request.query_params)
        params = await self._params(request)
        samples = await self._decode(params)
        audio_s = len(samples) / SAMPLE_RATE
        session = Session(params.language, self.host.cfg.ingest.max_replay_s, prompt=params.prompt)
        relay = await open_relay(self.host, session, tenant)
        try:
            await relay.captions.on_audio(audio_s)  # the whole file, before the model hears it
        except CaptionsError as exc:
            await discard(relay)
            # The tenant's audio minutes are used up: a retry cannot succeed.
            raise from_service_error(exc, retry=False) from exc
        self.host.metrics.audio_s.inc(audio_s)
        headers = {STREAM_ID_HEADER: session.session_id}
        if params.stream:
            return StreamingResponse(self._events(relay, samples), media_type="text/event-stream", headers=headers)
        try:
            await push_paced(relay, samples, self.host.cfg.ingest.max_pending_s)
            relay.end()
            await relay.done.wait()
        except RelayError as exc:
            raise from_service_error(exc) from exc
        finally:
            await discard(relay)
        if relay.failure is not None:
            return from_service_error(relay.failure).response()  # the relay counted it
        return self._render(params, relay.session, audio_s, headers)

    async def _params(self, request: Request) -> TranscriptionParams:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > MAX_UPLOAD_BYTES + _FORM_OVERHEAD_BYTES:
            raise _too_large()
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise OpenAIError("unsupported_format", "the body must be multipart/form-data with a 'file' part")
        try:
            form = await request.form(max_files=1, max_fields=64)
        except HTTPException as exc:  # Starlette's answer to a malformed multipart body
            raise OpenAIError("bad_request", f"cannot parse the multipart body: {exc.detail}") from exc
        params = parse_transcription_form(form, self.model_ids)
        if params.file.size is not None and params.file.size > MAX_UPLOAD_BYTES:
            raise _too_large()
        return params

    async def _decode(self, params: TranscriptionParams) -> np.ndarray:
        try:
            return await run_in_threadpool(decode_file, params.file.file)
        except BadAudioError as exc:
            raise from_service_error(exc, param="file") from exc

    def _render(self, params: TranscriptionParams, session: Session, audio_s: float,
                headers: Mapping[str, str]) -> Response:
        words = session.words
        if params.response_format == "json":
            return JSONResponse(fmt.json_body(words, audio_s), headers=dict(headers))
        if params.response_format == "verbose_json":
            body = fmt.verbose_json_body(words, session.detected_language or params.language, audio_s,
                                         params.words, params.segments)
            return JSONResponse(body, headers=dict(headers))
        return Response(fmt.text_body(params.response_format, words), media_type=fmt.TEXT_MEDIA[params.response_format],
                        headers=dict(headers))

    # ------------------------------------------------------------ stream=true
    async def _events(self, relay: Relay, samples: np.ndarray) -> AsyncIterator[str]:
        """transcript.text.delta per batch of committed words, then transcript.text.done (or an error)."""
        queue: asyncio.Queue[bytes] = asyncio.Queue()  # one file's frames: bounded by its words

        async def sink(frame: bytes) -> None:
            queue.put_nowait(frame)

        await relay.attach(sink)
        feeder = asyncio.get_running_loop().create_task(self._feed(relay, samples, queue))
        feeder.add_done_callback(_log_failure)
        first = True
        try:
            async for frame in _frames(relay, queue):
                if frame["type"] == "words" and frame["words"]:
                    yield fmt.sse(fmt.text_delta_event(fmt.delta_text([w["text"] for w in frame["words"]], first)))
                    first = False
                elif frame["type"] == "final":
                    yield fmt.sse(fmt.text_done_event(frame["text"]))
                    return
                elif frame["type"] == "error":
                    # The SDKs raise APIError for a data line holding `error`.
                    yield fmt.sse({"error": OpenAIError(frame["code"], frame["message"]).body()})
                    return
        finally:
            feeder.cancel()
            await discard(relay)

    async def _feed(self, relay: Relay, samples: np.ndarray, queue: asyncio.Queue[bytes]) -> None:
        try:
            await push_paced(relay, samples, self.host.cfg.ingest.max_pending_s)
            relay.end()
        except RelayError as exc:
            queue.put_nowait(protocol.error_frame(exc.code, str(exc)))


async def _frames(relay: Relay, queue: asyncio.Queue[bytes]) -> AsyncIterator[dict[str, Any]]:
    """The relay's frames in order; an error frame if it ended without saying why."""
    done = asyncio.ensure_future(relay.done.wait())
    try:
        while True:
            if queue.empty() and done.done():
                failure = relay.failure or RelayError("internal", "the stream ended without a transcript")
                yield {"type": "error", "code": failure.code, "message": str(failure)}
                return
            get = asyncio.ensure_future(queue.get())
            await asyncio.wait({get, done}, return_when=asyncio.FIRST_COMPLETED)
            if get.done():
                yield msgpack.unpackb(get.result(), raw=False)
            else:
                get.cancel()
    finally:
        done.cancel()


def _log_failure(task: asyncio.Task) -> None:
    """Background tasks must not fail silently."""
    if not task.cancelled() and task.exception() is not None:
        log.error("background task failed", exc_info=task.exception())


def _too_large() -> OpenAIError:
    return OpenAIError("file_too_large", f"the upload exceeds {MAX_UPLOAD_BYTES} bytes", "file")
