"""TEST SERVER ONLY: the captions routes plus a minimal /v1/stream on a real engine.Scheduler.

This stands in for deployments/ingest (the production WebSocket endpoint,
built on Ray Serve) so the browser page can be tested without Ray. It wires
the captions building blocks the way the ingest is meant to: authenticate,
CaptionSession.start, on_audio before feeding, on_message before sending,
close at the end. It skips what the ingest does and this test does not
need: resume, re-homing, resampling other rates, backpressure limits.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import uuid
from dataclasses import dataclass, field

import msgpack
import numpy as np
import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from captions.errors import BadRequest, CaptionsError
from captions.fanout import CaptionHub
from captions.http import caption_routes
from captions.quota import QuotaLedger
from captions.session import CaptionSession
from captions.store import StreamStatus, TranscriptStore
from captions.tenants import Authenticator
from engine.audio import decode_pcm
from engine.errors import EngineError
from engine.events import ErrorEvent, Event, FinalEvent, PartialEvent, WordsEvent
from engine.features import SAMPLE_RATE
from engine.scheduler import Scheduler

log = logging.getLogger(__name__)


def to_messages(event: Event, all_words: list[dict]) -> list[dict]:
    """Engine events as protocol messages; flushed words go out as `words` before `final`."""
    if isinstance(event, PartialEvent):
        return [{"type": "partial", "text": event.text}]
    if isinstance(event, ErrorEvent):
        return [{"type": "error", "code": event.code, "message": event.message}]
    words = [w.as_dict() for w in event.words]
    all_words += words
    out = [{"type": "words", "words": words, "language": event.language}] if words else []
    if isinstance(event, FinalEvent):
        text = " ".join(str(w["text"]) for w in all_words)
        out.append({"type": "final", "session_id": event.stream_id, "text": text, "words": all_words})
    return out


@dataclass
class EngineLoop:
    """Steps the scheduler in a worker thread and routes events to each stream's queue."""

    scheduler: Scheduler
    queues: dict[str, asyncio.Queue] = field(default_factory=dict)

    async def run(self) -> None:
        while True:
            result = await run_in_threadpool(self.scheduler.step)
            for event in result.events:
                queue = self.queues.get(event.stream_id)
                if queue is not None:
                    queue.put_nowait(event)
            if not result.events:
                await run_in_threadpool(self.scheduler.wait_for_work, 0.05)


def build_app(scheduler: Scheduler, store: TranscriptStore, auth: Authenticator) -> Starlette:
    hub = CaptionHub()
    ledger = QuotaLedger(store)
    loop = EngineLoop(scheduler)
    tasks: list[asyncio.Task] = []

    async def send(ws: WebSocket, msg: dict) -> None:
        await ws.send_bytes(msgpack.packb(msg, use_bin_type=True))

    async def stream(ws: WebSocket) -> None:
        await ws.accept()
        if not tasks:
            tasks.append(asyncio.get_running_loop().create_task(loop.run()))
        session: CaptionSession | None = None
        stream_id = uuid.uuid4().hex
        try:
            tenant = await run_in_threadpool(auth.authenticate, ws.headers, ws.query_params)
            start = msgpack.unpackb(await ws.receive_bytes(), raw=False)
            if not isinstance(start, dict) or start.get("type") != "start" or start.get("sample_rate") != SAMPLE_RATE:
                raise BadRequest("first frame must be start {sample_rate: 16000, encoding, language?}")
            encoding = start.get("encoding", "pcm_s16le")
            language = start.get("language") or "auto"
            session = await CaptionSession.start(store, ledger, hub, tenant, stream_id, language)
            events = loop.queues[stream_id] = asyncio.Queue()
            scheduler.open(stream_id, None if language == "auto" else language)
            await send(ws, {"type": "ready", "session_id": stream_id, "resume_token": ""})

            async def read_frames() -> None:
                while True:
                    frame = msgpack.unpackb(await ws.receive_bytes(), raw=False)
                    if frame.get("type") == "end":
                        scheduler.end(stream_id)
                        return
                    samples = decode_pcm(frame["data"], encoding)
                    await session.on_audio(len(samples) / SAMPLE_RATE)
                    scheduler.feed(stream_id, samples)

            reader = asyncio.get_running_loop().create_task(read_frames())
            # The reader's outcome arrives in the same queue as the engine's events.
            reader.add_done_callback(events.put_nowait)
            all_words: list[dict] = []
            finished, status = False, StreamStatus.ENDED
            try:
                while not finished:
                    item = await events.get()
                    if isinstance(item, asyncio.Task):
                        if item.exception() is not None:
                            raise item.exception()
                        continue
                    for msg in to_messages(item, all_words):
                        await session.on_message(msg)
                        await send(ws, msg)
                        finished = msg["type"] in ("final", "error")
                        status = StreamStatus.INTERRUPTED if msg["type"] == "error" else status
            finally:
                reader.cancel()
            await session.close(status)
            await ws.close()
        except (CaptionsError, EngineError) as exc:
            await send(ws, {"type": "error", "code": exc.code, "message": str(exc)})
            await ws.close(code=1008 if exc.code == "unauthorized" else 1011)
            if session is not None:
                await session.close(StreamStatus.INTERRUPTED)
        except WebSocketDisconnect:
            scheduler.abort(stream_id)
            if session is not None:
                await session.close(StreamStatus.INTERRUPTED)
        finally:
            loop.queues.pop(stream_id, None)

    return Starlette(routes=[WebSocketRoute("/v1/stream", stream), *caption_routes(store, auth, hub)])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerThread:
    """uvicorn serving `app` on 127.0.0.1 in a daemon thread."""

    def __init__(self, app: Starlette) -> None:
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("test server failed to start")
            self.thread.join(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"
